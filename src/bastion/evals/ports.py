"""Where eval runs are kept, and what a gate decides.

A run is written as it goes: the runner appends a :class:`CaseRow` per
(case, repetition) as soon as it is scored, so memory stays flat however big
the suite, and an interrupted run resumes from the rows already stored
(:meth:`ResultStore.done_keys`). The summary is written at the end.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from bastion.evals.types import Score


@dataclass(frozen=True, slots=True)
class RunInfo:
    """A run's header: which suite, against what, when, and (once finished) its summary."""

    id: str
    suite: str
    target: str
    started_at: float
    finished_at: float | None = None
    status: str = "running"  # running | passed | failed | interrupted
    config: dict[str, Any] = field(default_factory=dict)  # the suite as run (JSON)
    summary: dict[str, Any] = field(default_factory=dict)  # per-scorer aggregates, cost, counts


@dataclass(frozen=True, slots=True)
class CaseRow:
    """One scored (case, repetition): the output kept short, every score kept whole."""

    run_id: str
    case_id: str
    repetition: int
    input: str
    expected: Any
    output: str
    scores: tuple[Score, ...]
    latency_s: float
    cost_usd: float | None
    error: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> tuple[str, int]:
        return (self.case_id, self.repetition)


class ResultStore(Protocol):
    def create_run(self, info: RunInfo) -> None: ...

    def add_rows(self, rows: Sequence[CaseRow]) -> None: ...

    def done_keys(self, run_id: str) -> set[tuple[str, int]]: ...

    def finish_run(
        self, run_id: str, status: str, summary: dict[str, Any], finished_at: float
    ) -> None: ...

    def get_run(self, run_id: str) -> RunInfo | None:
        """A run by id, or by unique id prefix, or ``suite-name@latest``."""
        ...

    def list_runs(self, suite: str | None = None, limit: int = 50) -> list[RunInfo]: ...

    def rows(self, run_id: str) -> Iterator[CaseRow]:
        """The run's rows in (case id, repetition) order, streamed."""
        ...

    def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class GateOutcome:
    """Whether a suite (eval or red-team) let a change through, and why not."""

    suite: str
    kind: str  # "eval" | "redteam"
    passed: bool
    run_id: str | None
    reasons: tuple[str, ...] = ()
    report: str | None = None  # path of the report written, if any


class JudgeCache(Protocol):
    """LLM-judge verdicts keyed by a hash of everything that went into them
    (judge alias, rubric, prompt template version, case input, output, expected)."""

    def get(self, key: str) -> dict[str, Any] | None: ...

    def put(self, key: str, verdict: dict[str, Any]) -> None: ...


class Gate(Protocol):
    """Runs one suite file as a release gate against a prompt reference.

    ``prompt`` (``NAME@VERSION``) replaces the suite's own target prompt, so
    the version about to be promoted is the one tested.
    """

    async def __call__(self, suite_path: str, *, prompt: str | None = None) -> GateOutcome: ...
