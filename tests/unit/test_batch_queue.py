"""BatchQueue: batching, back-pressure, drain and retry (no timing assertions)."""

from __future__ import annotations

import asyncio
import logging
import threading

import pytest

from bastion.telemetry.batch import BatchQueue

LONG = 3600.0  # an interval that never elapses during a test: only full batches or drain flush


class Recorder:
    """A flush that records its batches; optionally fails or waits for a gate."""

    def __init__(self, fail_first: int = 0, gate: threading.Event | None = None) -> None:
        self.batches: list[list[str]] = []
        self.calls = 0
        self.fail_first = fail_first
        self.gate = gate
        self.loop = asyncio.get_running_loop()
        self.flushed = asyncio.Event()
        self.called = asyncio.Event()

    def __call__(self, batch: list[str]) -> None:
        self.calls += 1
        fail = self.calls <= self.fail_first  # decided before anyone is told of the call
        self.loop.call_soon_threadsafe(self.called.set)
        if self.gate is not None:
            assert self.gate.wait(10), "test gate never opened"
        if fail:
            raise OSError("disk unavailable")
        self.batches.append(batch)
        self.loop.call_soon_threadsafe(self.flushed.set)

    @property
    def items(self) -> list[str]:
        return [x for b in self.batches for x in b]


async def settle() -> None:
    """Let every ready task run up to its next real wait."""
    for _ in range(20):
        await asyncio.sleep(0)


async def test_batches_respect_max_batch_and_keep_order() -> None:
    rec = Recorder()
    q: BatchQueue[str] = BatchQueue(rec, max_batch=3, interval_s=LONG)
    items = [f"e{i}" for i in range(10)]
    for it in items:
        assert q.put_nowait(it)
    assert q.pending == 10
    assert await q.drain() == 0
    assert [len(b) for b in rec.batches] == [3, 3, 3, 1]
    assert rec.items == items
    assert q.pending == 0 and q.flushed == 10


async def test_a_full_batch_flushes_without_waiting_for_the_interval() -> None:
    rec = Recorder()
    q: BatchQueue[str] = BatchQueue(rec, max_batch=4, interval_s=LONG)
    q.start()
    for i in range(4):
        await q.put(f"e{i}")
    await asyncio.wait_for(rec.flushed.wait(), 10)
    assert rec.batches == [["e0", "e1", "e2", "e3"]]
    await q.drain()


async def test_a_partial_batch_flushes_after_the_interval() -> None:
    rec = Recorder()
    q: BatchQueue[str] = BatchQueue(rec, max_batch=100, interval_s=0.01)
    q.start()
    await q.put("only")
    await asyncio.wait_for(rec.flushed.wait(), 10)
    assert rec.batches == [["only"]]
    assert await q.drain() == 0


async def test_put_waits_when_full_and_resumes_after_a_flush() -> None:
    gate = threading.Event()
    rec = Recorder(gate=gate)
    q: BatchQueue[str] = BatchQueue(rec, max_size=2, max_batch=2, interval_s=LONG)
    q.start()
    await q.put("a")
    await q.put("b")
    blocked = asyncio.create_task(q.put("c"))
    await settle()
    assert not blocked.done()  # the batch being flushed still holds the space
    assert q.pending == 2
    assert not q.put_nowait("d")
    gate.set()
    await asyncio.wait_for(blocked, 10)
    await q.drain()
    assert rec.batches == [["a", "b"], ["c"]]
    assert q.refused == 1


async def test_drain_flushes_everything_then_closes() -> None:
    rec = Recorder()
    q: BatchQueue[str] = BatchQueue(rec, max_size=5000, max_batch=500, interval_s=LONG)
    q.start()
    items = [f"e{i}" for i in range(1234)]
    for it in items:
        await q.put(it)
    assert await q.drain() == 0
    assert rec.items == items
    assert max(len(b) for b in rec.batches) <= 500
    assert q.closed
    with pytest.raises(RuntimeError):
        await q.put("late")
    assert not q.put_nowait("late")
    assert rec.items == items


async def test_drain_without_start_still_flushes() -> None:
    rec = Recorder()
    q: BatchQueue[str] = BatchQueue(rec)
    q.put_nowait("x")
    await q.drain()
    assert rec.batches == [["x"]]


async def test_failing_flush_keeps_items_and_succeeds_on_retry(
    caplog: pytest.LogCaptureFixture,
) -> None:
    rec = Recorder(fail_first=2)
    q: BatchQueue[str] = BatchQueue(rec, max_batch=2, interval_s=LONG, backoff_s=0.001)
    items = ["secret-payload-1", "secret-payload-2", "secret-payload-3"]
    for it in items:
        q.put_nowait(it)
    with caplog.at_level(logging.WARNING, logger="bastion.audit"):
        await q.drain()
    assert rec.items == items  # nothing lost, nothing duplicated, order kept
    assert rec.calls == 4  # two failures of the first batch, then two batches
    assert q.failures == 2 and q.flushed == 3
    warnings = [r for r in caplog.records if r.name == "bastion.audit"]
    assert len(warnings) == 2
    assert all(r.levelno == logging.WARNING for r in warnings)
    assert [r.fields["attempt"] for r in warnings] == [1, 2]  # type: ignore[attr-defined]
    assert warnings[0].fields["error.type"] == "OSError"  # type: ignore[attr-defined]
    assert "secret-payload" not in caplog.text
    assert all("secret-payload" not in str(r.__dict__) for r in warnings)


async def test_put_nowait_refusals_are_counted() -> None:
    rec = Recorder()
    q: BatchQueue[str] = BatchQueue(rec, max_size=3, max_batch=10, interval_s=LONG)
    accepted = [q.put_nowait(f"e{i}") for i in range(5)]
    assert accepted == [True, True, True, False, False]
    assert q.refused == 2
    await q.drain()
    assert rec.items == ["e0", "e1", "e2"]


async def test_cancelled_drain_keeps_the_items_for_a_later_drain() -> None:
    rec = Recorder(fail_first=1_000_000)
    q: BatchQueue[str] = BatchQueue(rec, interval_s=LONG, backoff_s=LONG)
    q.put_nowait("x")
    drain = asyncio.create_task(q.drain())
    await asyncio.wait_for(rec.called.wait(), 10)  # the first attempt ran (and fails)
    drain.cancel()
    with pytest.raises(asyncio.CancelledError):
        await drain
    assert q.pending == 1
    rec.fail_first = 0
    q.backoff_s = 0.001
    assert await q.drain() == 0
    assert rec.items == ["x"]


def test_sizes_must_be_positive() -> None:
    with pytest.raises(ValueError):
        BatchQueue[str](print, max_size=0)
