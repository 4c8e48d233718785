"""The eval runner, its HTTP client, targets and SQLite results store, with in-process fakes."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest

from bastion.core.errors import (
    AuthenticationError,
    BastionError,
    BudgetExceeded,
    ContentBlocked,
    InvalidRequest,
    RateLimited,
    UpstreamConnectError,
    UpstreamError,
    UpstreamTimeout,
)
from bastion.evals.client import HttpModelClient, error_from_response, is_transient
from bastion.evals.estimate import estimate_cost, policy_prices
from bastion.evals.ports import CaseRow, RunInfo
from bastion.evals.runner import BATCH_ROWS, backoff_s, make_gate, run_suite
from bastion.evals.suite import Suite
from bastion.evals.targets import build_target
from bastion.evals.types import JSON, Case, ChatResult, Score
from bastion.gateway.pricing import Price
from bastion.store.sqlite.evals import SqliteResultStore


# ---------------------------------------------------------------------- fakes
class FakeClient:
    """Answers ``echo: <last user text>``; scripted failures per input text."""

    def __init__(self, delay_s: float = 0.0) -> None:
        self.delay_s = delay_s
        self.calls: list[JSON] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.fail: dict[str, list[BaseException]] = {}  # input text -> errors to raise, in order

    async def chat(self, body: JSON) -> ChatResult:
        self.calls.append(body)
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            await asyncio.sleep(self.delay_s)
            text = next(m["content"] for m in reversed(body["messages"]) if m["role"] == "user")
            queue = self.fail.get(text)
            if queue:
                raise queue.pop(0)
            answer = {
                "choices": [
                    {"message": {"role": "assistant", "content": f"echo: {text}"},
                     "finish_reason": "stop"}
                ],
                "usage": {"prompt_tokens": 3, "completion_tokens": 2},
            }  # fmt: skip
            return ChatResult(body=answer, status=200, latency_s=self.delay_s, cost_usd=0.001)
        finally:
            self.in_flight -= 1

    async def post(self, path: str, body: JSON) -> JSON:
        self.calls.append({"path": path, **body})
        return {"results": [{"document_id": "d1", "chunk_id": "c1", "score": 0.9, "text": "t"}]}


class MemoryStore:
    """A ResultStore in memory that records every add_rows batch."""

    def __init__(self) -> None:
        self.runs: dict[str, RunInfo] = {}
        self.data: dict[tuple[str, str, int], CaseRow] = {}
        self.batches: list[int] = []

    def create_run(self, info: RunInfo) -> None:
        self.runs[info.id] = info

    def add_rows(self, rows: Sequence[CaseRow]) -> None:
        self.batches.append(len(rows))
        for r in rows:
            self.data[(r.run_id, r.case_id, r.repetition)] = r

    def done_keys(self, run_id: str) -> set[tuple[str, int]]:
        return {(c, rep) for (rid, c, rep) in self.data if rid == run_id}

    def finish_run(
        self, run_id: str, status: str, summary: dict[str, Any], finished_at: float
    ) -> None:
        r = self.runs[run_id]
        self.runs[run_id] = RunInfo(
            r.id, r.suite, r.target, r.started_at, finished_at, status, r.config, summary
        )

    def get_run(self, run_id: str) -> RunInfo | None:
        return self.runs.get(run_id)

    def list_runs(self, suite: str | None = None, limit: int = 50) -> list[RunInfo]:
        return list(self.runs.values())[:limit]

    def rows(self, run_id: str) -> Iterator[CaseRow]:
        yield from sorted(
            (r for (rid, _, _), r in self.data.items() if rid == run_id), key=lambda r: r.key
        )

    def close(self) -> None:
        pass


def make_suite(n: int = 10, **over: Any) -> Suite:
    cases = [{"id": f"c{i:03d}", "input": f"q{i}", "expected": f"echo: q{i}"} for i in range(n)]
    data: dict[str, Any] = {
        "name": "unit",
        "target": {"model": "gpt"},
        "dataset": {"cases": cases},
        "scorers": [{"type": "exact", "threshold": 0.9}],
        "concurrency": 4,
        "retries": 2,
    }
    data.update(over)
    return Suite.model_validate(data)


# ---------------------------------------------------------------------- runner
async def test_concurrency_limit_is_respected_and_run_passes() -> None:
    client, store = FakeClient(delay_s=0.01), MemoryStore()
    seen: list[tuple[int, int]] = []
    run = await run_suite(
        make_suite(24, concurrency=5),
        client=client,
        store=store,
        progress=lambda d, t: seen.append((d, t)),
    )
    assert client.max_in_flight == 5
    assert len(client.calls) == 24
    assert run.status == "passed" and run.summary["passed"] is True
    assert run.summary["scorers"]["exact"]["mean"] == 1.0
    assert seen[0] == (0, 24) and seen[-1] == (24, 24)
    assert store.runs[run.id].status == "passed"
    assert run.summary["cost_usd"] == pytest.approx(0.024)


async def test_transient_errors_are_retried_then_succeed() -> None:
    client, store = FakeClient(), MemoryStore()
    client.fail["q1"] = [RateLimited("slow down", retry_after=0.01), UpstreamError("bad gateway")]
    run = await run_suite(make_suite(3), client=client, store=store, backoff_base_s=0.001)
    assert run.status == "passed"
    row = store.data[(run.id, "c001", 0)]
    assert row.error is None and row.output == "echo: q1"
    assert row.metadata["_output"]["attempts"] == 3
    assert len(client.calls) == 5


async def test_retries_exhausted_and_non_transient_errors_become_error_rows() -> None:
    client, store = FakeClient(), MemoryStore()
    client.fail["q1"] = [UpstreamTimeout("slow")] * 5
    client.fail["q2"] = [ContentBlocked("blocked by the injection scanner")]
    client.fail["q3"] = [BudgetExceeded("budget spent", retry_after=0.01)]
    suite = make_suite(6, retries=1, scorers=[{"type": "exact", "max_errors": 5}])
    run = await run_suite(suite, client=client, store=store, backoff_base_s=0.001)
    rows = {r.case_id: r for r in store.rows(run.id)}
    assert rows["c001"].error is not None and rows["c001"].error.startswith("upstream_timeout")
    assert rows["c001"].metadata["_output"]["attempts"] == 2
    assert rows["c002"].error == "content_blocked: blocked by the injection scanner"
    assert rows["c002"].metadata["_output"]["attempts"] == 1  # never retried
    assert rows["c003"].metadata["_output"]["attempts"] == 1
    for cid in ("c001", "c002", "c003"):
        (score,) = rows[cid].scores
        assert score.value is None and score.error and "target error" in score.error
    entry = run.summary["scorers"]["exact"]
    assert entry["errors"] == 3 and entry["scored"] == 3 and entry["mean"] == 1.0
    assert run.summary["target_errors"] == 3 and run.status == "passed"  # max_errors: 5


async def test_a_rejected_key_stops_the_run_as_interrupted() -> None:
    client, store = FakeClient(delay_s=0.01), MemoryStore()
    for i in range(4):  # several workers fail at once: the error itself comes out
        client.fail[f"q{i}"] = [AuthenticationError("invalid API key")]
    with pytest.raises(AuthenticationError):
        await run_suite(make_suite(50, concurrency=4), client=client, store=store)
    (info,) = store.runs.values()
    assert info.status == "interrupted"
    assert len(client.calls) < 50


async def test_interrupted_run_flushes_rows_and_resume_skips_them() -> None:
    client, store = FakeClient(delay_s=0.005), MemoryStore()
    suite = make_suite(30, concurrency=2, repetitions=2)
    rows_seen = 0
    task: asyncio.Task[RunInfo]

    def on_row(_: CaseRow) -> None:
        nonlocal rows_seen
        rows_seen += 1
        if rows_seen == 7:
            task.cancel()

    task = asyncio.create_task(
        run_suite(suite, client=client, store=store, run_id="r1", on_row=on_row)
    )
    with pytest.raises(asyncio.CancelledError):
        await task
    assert store.runs["r1"].status == "interrupted"
    done = store.done_keys("r1")
    assert len(done) >= 7  # every finished row was flushed, none lost
    assert all(b <= BATCH_ROWS for b in store.batches)

    client2 = FakeClient()
    run = await run_suite(suite, client=client2, store=store, resume="r1")
    assert run.id == "r1" and run.status == "passed"
    assert len(client2.calls) == 60 - len(done)
    assert len(store.done_keys("r1")) == 60
    assert run.summary["rows"] == 60 and run.summary["cases"] == 30


async def test_resume_of_another_suite_or_unknown_run_is_refused() -> None:
    store = MemoryStore()
    await run_suite(make_suite(2), client=FakeClient(), store=store, run_id="a")
    with pytest.raises(InvalidRequest, match="suite"):
        await run_suite(make_suite(2, name="other"), client=FakeClient(), store=store, resume="a")
    with pytest.raises(BastionError, match="no run"):
        await run_suite(make_suite(2), client=FakeClient(), store=store, resume="zzz")


async def test_rows_are_written_in_batches_not_kept() -> None:
    client, store = FakeClient(), MemoryStore()
    run = await run_suite(make_suite(120, concurrency=8), client=client, store=store)
    assert sum(store.batches) == 120 and len(store.data) == 120
    assert max(store.batches) == BATCH_ROWS and len(store.batches) >= 3
    assert run.summary["rows"] == 120


async def test_slow_rows_are_flushed_on_a_timer() -> None:
    client, store = FakeClient(delay_s=0.3), MemoryStore()
    flushed_during_run: list[int] = []

    def on_row(_: CaseRow) -> None:
        flushed_during_run.append(len(store.data))

    await run_suite(make_suite(4, concurrency=1), client=client, store=store, on_row=on_row)
    # by the time the third row lands, the first ones went out without waiting for 50
    assert flushed_during_run[2] >= 1
    assert len(store.batches) >= 2


async def test_scorer_failures_and_repetitions_are_recorded() -> None:
    client, store = FakeClient(), MemoryStore()
    suite = make_suite(
        3,
        repetitions=2,
        scorers=[{"type": "exact"}, {"type": "numeric", "name": "num", "max_errors": 10}],
    )
    run = await run_suite(suite, client=client, store=store)
    rows = list(store.rows(run.id))
    assert [r.key for r in rows][:2] == [("c000", 0), ("c000", 1)]
    num = [s for r in rows for s in r.scores if s.scorer == "num"]
    assert len(num) == 6 and all(s.error for s in num)  # "echo: q0" vs "echo: q0": no number
    assert run.summary["scorers"]["num"]["errors"] == 6


async def test_targets_build_the_gateway_requests() -> None:
    client = FakeClient()
    case = Case("c1", "hello", variables={"name": "Ada"})
    spec = make_suite(
        1, target={"model": "gpt", "system": "Be brief.", "params": {"max_tokens": 9}}
    )
    out = await build_target(spec.target, client).run(case)
    assert out.text == "echo: hello" and out.prompt_tokens == 3 and out.cost_usd == 0.001
    assert client.calls[-1] == {
        "max_tokens": 9,
        "model": "gpt",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "hello"},
        ],
    }
    prompt = make_suite(1, target={"prompt": "greet@prod"}).target
    await build_target(prompt, client).run(case)
    assert client.calls[-1]["model"] == "prompt"
    assert client.calls[-1]["bastion"] == {"prompt": "greet@prod", "variables": {"name": "Ada"}}
    rag = make_suite(1, target={"model": "gpt", "collection": "kb", "top_k": 80}).target
    await build_target(rag, client).run(case)
    assert client.calls[-1]["bastion"] == {"collections": ["kb"], "top_k": 50}
    retrieval = make_suite(1, target={"collection": "kb", "top_k": 3}).target
    got = await build_target(retrieval, client).run(case)
    assert client.calls[-1] == {"path": "/v1/rag/query", "collection": "kb", "query": "hello",
                                "top_k": 3}  # fmt: skip
    assert got.retrieved[0]["document_id"] == "d1" and got.text == ""


async def test_gate_runs_the_candidate_prompt(tmp_path: Path) -> None:
    (tmp_path / "cases.jsonl").write_text(
        '{"id": "a", "input": "x", "expected": "echo: x"}\n'
        '{"id": "b", "input": "y", "expected": "echo: nope"}\n'
    )
    suite_file = tmp_path / "suite.yaml"
    suite_file.write_text(
        "name: gate-me\ntarget: {prompt: greet@prod}\ndataset: {path: cases.jsonl}\n"
        "scorers: [{type: exact, threshold: 0.9}]\n"
    )
    client, store = FakeClient(), MemoryStore()
    outcome = await make_gate(client, store)(str(suite_file), prompt="greet@7")
    assert {c["bastion"]["prompt"] for c in client.calls} == {"greet@7"}
    assert outcome.kind == "eval" and outcome.passed is False and outcome.run_id
    assert outcome.reasons and "exact" in outcome.reasons[0]
    assert store.runs[outcome.run_id].config["target"]["prompt"] == "greet@7"


# ---------------------------------------------------------------------- estimates
def test_estimate_cost_math() -> None:
    suite = make_suite(
        0,
        target={"model": "gpt", "system": "abcd", "params": {"max_tokens": 10}},
        dataset={"cases": [{"input": "x" * 8}]},
        repetitions=2,
        scorers=[{"type": "exact"}, {"type": "judge", "model": "judge", "rubric": "r" * 40}],
    )
    cases = [Case("1", "x" * 8, expected="e" * 4), Case("2", "y" * 12)]
    prices = {"gpt": Price(1.0, 2.0), "judge": Price(10.0, 20.0)}
    est = estimate_cost(suite, cases, prices)
    # target: ceil((8+4)/4)=3 and ceil((12+4)/4)=4 prompt tokens, x2 repetitions; 10 out each
    target_p, target_c = 2 * 3 + 2 * 4, 4 * 10
    # judge: ceil((8+40+4)/4)=13 and ceil((12+40)/4)=13, + 10 (answer) + 300 (template)
    judge_p, judge_c = 2 * (13 + 310) + 2 * (13 + 310), 4 * 200
    assert (est.cases, est.repetitions, est.target_calls, est.judge_calls) == (2, 2, 4, 4)
    assert est.prompt_tokens == target_p + judge_p
    assert est.completion_tokens == target_c + judge_c
    expected = (target_p * 1 + target_c * 2 + judge_p * 10 + judge_c * 20) / 1e6
    assert est.cost_usd is not None and math.isclose(est.cost_usd, expected)
    remote = estimate_cost(suite, cases, None)
    assert remote.cost_usd is None and remote.prompt_tokens == est.prompt_tokens
    partial = estimate_cost(suite, cases, {"gpt": Price(1.0, 2.0)})
    assert partial.unpriced == ("judge",)
    assert partial.cost_usd is not None and math.isclose(
        partial.cost_usd, (target_p + 2 * target_c) / 1e6
    )


def test_policy_prices_take_the_dearest_route() -> None:
    from bastion.config.loader import parse_policy

    policy = parse_policy(
        """
providers:
  up: {type: openai, base_url: "http://127.0.0.1:1/v1", api_key: "env:NOT_SET_IN_TESTS"}
  loc: {type: fake}
models:
  gpt:
    routes: [{provider: up, model: gpt-4o-mini}, {provider: up, model: gpt-4o}]
  cheap: {routes: [{provider: loc, model: anything}]}
  mine: {routes: [{provider: up, model: custom-model}]}
pricing:
  custom-model: {input: 3, output: 4}
"""
    )
    prices = policy_prices(policy)
    assert prices["gpt"] == Price(2.5, 10.0)
    assert prices["cheap"] == Price(0.0, 0.0)
    assert prices["mine"] == Price(3.0, 4.0)


def test_backoff_honours_retry_after_and_caps() -> None:
    assert backoff_s(0, 2.0) == 2.0
    assert backoff_s(3, 100.0) == 30.0
    for attempt in range(8):
        d = min(30.0, 0.5 * 2**attempt)
        assert d / 2 <= backoff_s(attempt, None) <= d


# ---------------------------------------------------------------------- client
def _answer(status: int, body: JSON, headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.Response(status, json=body, headers=headers or {})


async def test_http_client_maps_answers_and_errors() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        text = request.content.decode()
        if "limit" in text:
            err = {"message": "slow down", "type": "rate_limit_error", "code": "rate_limited"}
            return _answer(429, {"error": err}, {"retry-after": "3"})
        if "budget" in text:
            return _answer(429, {"error": {"message": "spent", "code": "budget_exceeded"}})
        if "blocked" in text:
            return _answer(400, {"error": {"message": "no", "code": "content_blocked"}})
        if "boom" in text:
            return _answer(502, {"error": {"message": "upstream", "code": "upstream_error"}})
        if "weird" in text:
            return httpx.Response(500, text="<html>oops</html>")
        if "future" in text:
            return _answer(409, {"error": {"message": "m", "code": "some_new_code"}})
        if "down" in text:
            raise httpx.ConnectError("refused")
        if "slow" in text:
            raise httpx.ReadTimeout("slow")
        body = {"choices": [{"message": {"content": "hi"}}]}
        return _answer(200, body, {"x-bastion-cost-usd": "0.000123", "x-bastion-cache": "miss"})

    client = HttpModelClient(
        "http://gw.test/v1/", "sk-k", transport=httpx.MockTransport(handler), headers={"x-a": "b"}
    )
    ok = await client.chat({"model": "m", "messages": [{"role": "user", "content": "hello"}]})
    assert ok.status == 200 and ok.cost_usd == 0.000123 and ok.cache == "miss"
    assert ok.body["choices"][0]["message"]["content"] == "hi"
    assert str(seen[-1].url) == "http://gw.test/v1/chat/completions"
    assert seen[-1].headers["authorization"] == "Bearer sk-k" and seen[-1].headers["x-a"] == "b"

    async def fails(word: str) -> BastionError:
        with pytest.raises(BastionError) as info:
            await client.chat({"model": "m", "messages": [{"role": "user", "content": word}]})
        return info.value

    e = await fails("limit")
    assert isinstance(e, RateLimited) and e.retry_after == 3.0 and e.message == "slow down"
    assert is_transient(e)
    e = await fails("budget")
    assert isinstance(e, BudgetExceeded) and not is_transient(e)
    e = await fails("blocked")
    assert isinstance(e, ContentBlocked) and not is_transient(e)
    e = await fails("boom")
    assert isinstance(e, UpstreamError) and is_transient(e)
    e = await fails("weird")
    assert e.status == 500 and is_transient(e) and "oops" in e.message
    e = await fails("future")
    assert e.code == "some_new_code" and e.status == 409 and not is_transient(e)
    e = await fails("down")
    assert isinstance(e, UpstreamConnectError) and is_transient(e)
    e = await fails("slow")
    assert isinstance(e, UpstreamTimeout) and is_transient(e)

    await client.post("/v1/rag/query", {"query": "hello"})
    assert str(seen[-1].url) == "http://gw.test/v1/rag/query"
    sibling = client.with_key("sk-other")  # same gateway and transport, another key
    await sibling.chat({"model": "m", "messages": [{"role": "user", "content": "hi"}]})
    assert seen[-1].headers["authorization"] == "Bearer sk-other"
    assert seen[-1].headers["x-a"] == "b" and str(seen[-1].url).startswith("http://gw.test/v1/")
    await sibling.aclose()
    await client.chat({"model": "m", "messages": [{"role": "user", "content": "again"}]})
    assert seen[-1].headers["authorization"] == "Bearer sk-k"
    await client.aclose()
    assert not is_transient(ValueError("not a gateway error"))


def test_error_mapping_by_status_when_the_code_is_unknown() -> None:
    e = error_from_response(401, {"error": {"message": "who?"}}, httpx.Headers())
    assert isinstance(e, AuthenticationError) and e.message == "who?"
    e = error_from_response(418, None, httpx.Headers())
    assert isinstance(e, InvalidRequest) and e.status == 418


# ---------------------------------------------------------------------- store
def test_sqlite_store_round_trip(tmp_path: Path) -> None:
    store = SqliteResultStore(tmp_path / "r" / "evals.db")
    t = time.time()
    store.create_run(RunInfo("abc123", "s1", "model:gpt", t, config={"name": "s1"}))
    store.create_run(RunInfo("abd999", "s1", "model:gpt", t + 1))
    store.create_run(RunInfo("zzz000", "s2", "model:gpt", t + 2))
    scores = (
        Score("exact", 1.0, passed=True, explanation="same", details={"k": [1, 2]}),
        Score.failed("judge", "judge timed out", attempt=2),
    )
    rows = [
        CaseRow("abc123", f"c{i}", rep, "in", {"a": i}, "out", scores, 0.5, None, None, {"m": 1})
        for i in range(3)
        for rep in range(2)
    ]
    store.add_rows(rows[:4])
    store.add_rows(rows[4:])
    assert store.done_keys("abc123") == {(f"c{i}", r) for i in range(3) for r in range(2)}
    back = list(store.rows("abc123"))
    assert [r.key for r in back] == [r.key for r in rows]
    assert back[1] == rows[1]  # every field, scores with error and details included
    store.finish_run("abc123", "passed", {"passed": True}, t + 5)
    got = store.get_run("abc")
    assert got is not None and got.status == "passed" and got.summary == {"passed": True}
    assert got.config == {"name": "s1"} and got.finished_at == t + 5
    with pytest.raises(InvalidRequest, match="several"):
        store.get_run("ab")
    latest = store.get_run("s1@latest")
    assert latest is not None and latest.id == "abd999"
    assert store.get_run("nope") is None and store.get_run("s9@latest") is None
    assert [r.id for r in store.list_runs()] == ["zzz000", "abd999", "abc123"]
    assert [r.id for r in store.list_runs("s1", limit=1)] == ["abd999"]
    # resuming puts the run back to running, keeping its start
    store.create_run(RunInfo("abc123", "s1", "model:gpt", t + 100, status="running"))
    again = store.get_run("abc123")
    assert again is not None and again.status == "running" and again.started_at == t
    # the judge cache
    assert store.get("k1") is None
    store.put("k1", {"score": 0.5, "reason": "ok"})
    assert store.get("k1") == {"score": 0.5, "reason": "ok"}
    store.close()
    reopened = SqliteResultStore(tmp_path / "r" / "evals.db")
    assert reopened.get("k1") == {"score": 0.5, "reason": "ok"}
    reopened.close()


async def test_runner_with_the_sqlite_store(tmp_path: Path) -> None:
    store = SqliteResultStore(tmp_path / "evals.db")
    run = await run_suite(make_suite(60), client=FakeClient(), store=store, judge_cache=store)
    stored = store.get_run(run.id)
    assert stored is not None and stored.status == "passed"
    assert stored.summary["rows"] == 60
    assert stored.config["name"] == "unit" and Suite.model_validate(stored.config)
    store.close()


async def test_default_transport_maps_network_failures() -> None:
    async def stall(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1)
        await asyncio.sleep(5)
        writer.close()

    server = await asyncio.start_server(stall, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    body: JSON = {"model": "m", "messages": []}
    slow = HttpModelClient(f"http://127.0.0.1:{port}", "k", timeout_s=0.2)
    with pytest.raises(UpstreamTimeout):
        await slow.chat(body)
    await slow.aclose()
    server.close()
    await server.wait_closed()
    closed = HttpModelClient(f"http://127.0.0.1:{port}", "k", timeout_s=2)
    with pytest.raises(UpstreamConnectError):
        await closed.chat(body)
    await closed.aclose()
