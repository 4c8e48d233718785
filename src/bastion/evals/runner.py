"""Run a suite: stream its cases through the target and scorers, store every row as it lands.

:func:`run_suite` never holds the dataset or the results in memory. A producer
walks :func:`bastion.evals.datasets.iter_cases` and feeds (case, repetition)
pairs into a bounded queue; ``suite.concurrency`` workers take them, call the
target (retrying transient errors with exponential backoff and jitter, or as
long as the server's ``Retry-After`` says, capped at 30 s), score the output
and hand the row to a sink that writes to the :class:`ResultStore` in batches
(every 50 rows or half a second). A case that fails for good becomes a row
with ``error`` set, which the scorers record as errors (latency and cost
still measure it): counted, never averaged, and never stopping the run. Only errors that would fail
every case alike (a rejected key, an unknown model or collection) stop it.

The summary is computed at the end by streaming the stored rows into
:func:`bastion.evals.aggregate.summarize`. A run stopped half-way (Ctrl-C, a
cancelled task, a crash) flushes the rows it has and is marked
``interrupted``; ``run_suite(..., resume=RUN_ID)`` continues it, skipping the
(case, repetition) keys already stored.

:func:`make_gate` turns the runner into a release gate for the prompt
registry; the ``--dry-run`` arithmetic is in :mod:`bastion.evals.estimate`.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, cast

import orjson

from bastion.core.errors import (
    AuthenticationError,
    BastionError,
    InvalidRequest,
    NotFound,
    PermissionDenied,
)
from bastion.evals.aggregate import summarize
from bastion.evals.client import is_transient
from bastion.evals.datasets import count_cases, iter_cases
from bastion.evals.ports import CaseRow, Gate, GateOutcome, JudgeCache, ResultStore, RunInfo
from bastion.evals.scorers import build_scorer
from bastion.evals.suite import Suite, load_suite
from bastion.evals.targets import build_target, close_target
from bastion.evals.types import Case, ModelClient, Output, Score, Scorer, Target

BATCH_ROWS = 50  # rows per store write
FLUSH_S = 0.5  # ... or this often, whichever comes first
BACKOFF_BASE_S = 0.5
BACKOFF_CAP_S = 30.0
TEXT_CAP = 8_000  # characters of input/output kept per row (scorers saw everything)

Progress = Callable[[int, int], None]
# errors that say the run itself is misconfigured (bad key, unknown model or collection)
FATAL = (AuthenticationError, PermissionDenied, NotFound)


def new_run_id() -> str:
    """A fresh run id (12 hex characters; any unique prefix names it)."""
    return uuid.uuid4().hex[:12]


def with_prompt(suite: Suite, prompt: str | None) -> Suite:
    """``suite`` with its target's prompt replaced by ``prompt`` (a release candidate)."""
    if prompt is None:
        return suite
    if suite.target.kind != "prompt":
        raise InvalidRequest(f"suite {suite.name!r} does not target a prompt; cannot gate {prompt}")
    return suite.model_copy(update={"target": suite.target.model_copy(update={"prompt": prompt})})


def describe(exc: BaseException) -> str:
    """A one-line description of a failure for a row's ``error``."""
    if isinstance(exc, BastionError):
        return f"{exc.code}: {exc.message}"
    return f"{type(exc).__name__}: {exc}"


def backoff_s(attempt: int, retry_after: float | None, base_s: float = BACKOFF_BASE_S) -> float:
    """Seconds before retry ``attempt`` (0-based): the server's word, else equal jitter."""
    if retry_after is not None:
        return min(BACKOFF_CAP_S, max(0.0, retry_after))
    d = min(BACKOFF_CAP_S, base_s * float(2**attempt))
    return d / 2 + random.uniform(0, d / 2)


def _clip(text: str) -> str:
    return text if len(text) <= TEXT_CAP else text[:TEXT_CAP] + "…"


def _input_text(case: Case) -> str:
    if isinstance(case.input, str):
        return _clip(case.input)
    return _clip(orjson.dumps(case.input).decode())


def _output_text(out: Output) -> str:
    if out.text:
        return _clip(out.text)
    if out.tool_calls:
        return _clip(orjson.dumps(out.tool_calls).decode())
    if out.retrieved:
        return _clip(", ".join(str(r.get("document_id")) for r in out.retrieved))
    return ""


class _Sink:
    """Rows on their way to the store: written every ``batch`` rows or ``interval_s``."""

    def __init__(self, store: ResultStore, batch: int = BATCH_ROWS) -> None:
        self.store = store
        self.batch = batch
        self.buf: list[CaseRow] = []
        self.last = time.monotonic()

    def add(self, row: CaseRow) -> None:
        self.buf.append(row)
        if len(self.buf) >= self.batch:
            self.flush()

    def flush(self) -> None:
        self.last = time.monotonic()
        if self.buf:
            rows, self.buf = self.buf, []
            self.store.add_rows(rows)

    async def tick(self, interval_s: float) -> None:
        while True:
            await asyncio.sleep(interval_s / 2)
            if time.monotonic() - self.last >= interval_s:
                self.flush()


@dataclass(slots=True)
class _Run:
    """One execution of a suite (a fresh run, or the rest of an interrupted one)."""

    suite: Suite
    target: Target
    scorers: list[tuple[str, Scorer]]
    sink: _Sink
    run_id: str
    total: int
    done: int
    skip: set[tuple[str, int]]
    progress: Progress | None
    on_row: Callable[[CaseRow], None] | None
    backoff_base_s: float

    async def produce(self, queue: asyncio.Queue[tuple[Case, int] | None], workers: int) -> None:
        seen = 0
        for case in iter_cases(self.suite):
            for rep in range(self.suite.repetitions):
                seen += 1
                if seen % 1000 == 0:
                    await asyncio.sleep(0)  # skipping many resumed keys: let workers run
                if (case.id, rep) in self.skip:
                    continue
                await queue.put((case, rep))
        for _ in range(workers):
            await queue.put(None)

    async def work(self, queue: asyncio.Queue[tuple[Case, int] | None]) -> None:
        while (item := await queue.get()) is not None:
            row = await self.one(*item)
            self.sink.add(row)
            self.done += 1
            if self.on_row is not None:
                self.on_row(row)
            if self.progress is not None:
                self.progress(self.done, self.total)

    async def call(self, case: Case) -> tuple[Output, int]:
        """The target's output for ``case`` (retrying transient errors) and the attempts made."""
        attempt = 0
        while True:
            try:
                return await self.target.run(case), attempt + 1
            except FATAL:
                raise  # every case would fail alike: stop the run (resumable once fixed)
            except Exception as exc:
                if is_transient(exc) and attempt < self.suite.retries:
                    ra = exc.retry_after if isinstance(exc, BastionError) else None
                    await asyncio.sleep(backoff_s(attempt, ra, self.backoff_base_s))
                    attempt += 1
                    continue
                status = exc.status if isinstance(exc, BastionError) else None
                return Output(error=describe(exc), status=status), attempt + 1

    async def one(self, case: Case, rep: int) -> CaseRow:
        out, attempts = await self.call(case)
        scores: list[Score] = []
        # one scorer at a time (judge calls count against the concurrency); a failed
        # output goes to the scorers too: most record an error, latency and cost measure it
        for label, scorer in self.scorers:
            try:
                s = await scorer.score(case, out)
                scores.append(s if s.scorer == label else replace(s, scorer=label))
            except Exception as exc:  # a scorer bug must not stop the run
                scores.append(Score.failed(label, describe(exc)))
        meta = dict(case.metadata)
        meta["_output"] = {
            "attempts": attempts,
            "status": out.status,
            "prompt_tokens": out.prompt_tokens,
            "completion_tokens": out.completion_tokens,
            "finish_reason": out.finish_reason,
        }
        return CaseRow(
            run_id=self.run_id,
            case_id=case.id,
            repetition=rep,
            input=_input_text(case),
            expected=case.expected,
            output=_output_text(out),
            scores=tuple(scores),
            latency_s=out.latency_s if math.isfinite(out.latency_s) else 0.0,
            cost_usd=out.cost_usd,
            error=out.error,
            metadata=meta,
        )

    async def execute(self) -> None:
        workers = max(1, min(self.suite.concurrency, self.total - self.done or 1))
        queue: asyncio.Queue[tuple[Case, int] | None] = asyncio.Queue(maxsize=2 * workers)
        ticker = asyncio.create_task(self.sink.tick(FLUSH_S))
        try:
            async with asyncio.TaskGroup() as tg:
                for _ in range(workers):
                    tg.create_task(self.work(queue))
                await self.produce(queue, workers)
        except BaseExceptionGroup as group:  # workers stopped the run: surface the error itself
            first = group.exceptions[0]
            while isinstance(first, BaseExceptionGroup):
                first = first.exceptions[0]
            raise first from None
        finally:
            ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await ticker


async def run_suite(
    suite: Suite,
    *,
    client: ModelClient,
    store: ResultStore,
    run_id: str | None = None,
    resume: str | None = None,
    progress: Progress | None = None,
    prompt_override: str | None = None,
    judge_cache: JudgeCache | None = None,
    on_row: Callable[[CaseRow], None] | None = None,
    backoff_base_s: float = BACKOFF_BASE_S,
    cases: int | None = None,
) -> RunInfo:
    """Run ``suite`` through ``client``, storing rows in ``store``; returns the finished run.

    ``resume`` (a run id, prefix or ``SUITE@latest``) continues an earlier run
    of the same suite. ``progress(done, total)`` and ``on_row(row)`` are
    called after each row; ``cases`` is the dataset's size when the caller
    has counted it already. Raises what aborted the run (the run is then
    stored as ``interrupted``); errors of single cases never abort it.
    """
    suite = with_prompt(suite, prompt_override)
    total = (count_cases(suite) if cases is None else cases) * suite.repetitions
    scorers = [
        (s.label, build_scorer(s, judge_client=client, judge_cache=judge_cache))
        for s in suite.scorers
    ]
    skip: set[tuple[str, int]] = set()
    if resume is not None:
        prev = store.get_run(resume)
        if prev is None:
            raise NotFound(f"no run {resume!r} to resume")
        if prev.suite != suite.name:
            raise InvalidRequest(f"run {prev.id} is of suite {prev.suite!r}, not {suite.name!r}")
        skip = store.done_keys(prev.id)
        info = replace(prev, status="running", finished_at=None, summary={})
    else:
        info = RunInfo(
            id=run_id or new_run_id(),
            suite=suite.name,
            target="",
            started_at=time.time(),
            config=suite.model_dump(mode="json", by_alias=True),
        )
    target = build_target(suite.target, client)
    info = replace(info, target=getattr(target, "name", "") or info.target)
    store.create_run(info)
    sink = _Sink(store)
    run = _Run(
        suite, target, scorers, sink, info.id, total, min(len(skip), total), skip,
        progress, on_row, backoff_base_s,
    )  # fmt: skip
    if progress is not None:
        progress(run.done, total)
    t0 = time.monotonic()
    try:
        await run.execute()
    except BaseException:
        sink.flush()
        with contextlib.suppress(Exception):
            store.finish_run(
                info.id, "interrupted", _summary(suite, store, info.id, t0), time.time()
            )
        raise
    finally:
        await close_target(target)
    sink.flush()
    summary = _summary(suite, store, info.id, t0)
    status = "passed" if summary.get("passed") else "failed"
    finished = time.time()
    store.finish_run(info.id, status, summary, finished)
    return replace(info, status=status, summary=summary, finished_at=finished)


def _summary(suite: Suite, store: ResultStore, run_id: str, t0: float) -> dict[str, Any]:
    summary = summarize(suite, store.rows(run_id))
    summary["duration_s"] = round(time.monotonic() - t0, 3)
    return summary


def make_gate(
    client: ModelClient, store: ResultStore, *, judge_cache: JudgeCache | None = None
) -> Gate:
    """A release :class:`Gate`: run a suite file with the candidate prompt, pass or not.

    Judge verdicts are cached in ``judge_cache``, else in ``store`` when it is
    a judge cache too (the SQLite results store is).
    """
    if (
        judge_cache is None
        and callable(getattr(store, "get", None))
        and callable(getattr(store, "put", None))
    ):
        judge_cache = cast(JudgeCache, store)

    async def gate(suite_path: str, *, prompt: str | None = None) -> GateOutcome:
        suite = load_suite(suite_path)
        run = await run_suite(
            suite, client=client, store=store, prompt_override=prompt, judge_cache=judge_cache
        )
        failures = run.summary.get("failures") or []
        return GateOutcome(
            suite=suite.name,
            kind="eval",
            passed=run.status == "passed",
            run_id=run.id,
            reasons=tuple(str(f) for f in failures),
        )

    return gate
