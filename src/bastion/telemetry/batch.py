"""A bounded in-process queue flushed in batches, off the request path.

Producers (the request path, admin routes) :meth:`~BatchQueue.put` items;
a background task hands them, at most ``max_batch`` at a time, to a
synchronous ``flush`` (its return value is ignored, so ``store.append`` fits)
run in the queue's own writer thread, when a batch is full or
``interval_s`` after the first item of a batch arrived.

Nothing is dropped silently:

- a full queue applies back-pressure: :meth:`~BatchQueue.put` waits for
  space, and :meth:`~BatchQueue.put_nowait` returns ``False`` (counted in
  ``refused``) for callers that must not wait;
- a failing flush keeps its batch and retries it, first, with exponential
  backoff; the failure is logged on ``bastion.audit`` with counts and the
  error type only, never item content;
- :meth:`~BatchQueue.drain` (shutdown, SIGTERM) flushes everything pending
  before it returns (and logs what it had to leave if cancelled).

Items in the batch being flushed still count toward ``max_size``. One
event loop owns a queue; ``flush`` runs in a worker thread and receives a
list it may keep.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Generic, TypeVar

T = TypeVar("T")

log = logging.getLogger("bastion.audit")

WRITER_NICE = 10
"""How much lower the writer threads' CPU priority is than the event loop's (Linux).

A flush is CPU work (building rows, hashing the audit chain) that competes with
the event loop when they share a core; at a lower priority the kernel lets a
request preempt it at once, so a flush delays requests by microseconds instead
of a scheduler time slice. On an idle core the writer still runs at full speed.
"""


def _lower_priority() -> None:
    # per-thread on Linux; elsewhere (or without permission) keep the default
    with contextlib.suppress(AttributeError, OSError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), WRITER_NICE)


class BatchQueue(Generic[T]):
    """Bounded queue of ``T`` flushed in batches by a background task."""

    def __init__(
        self,
        flush: Callable[[list[T]], object],
        *,
        max_size: int = 10_000,
        max_batch: int = 500,
        interval_s: float = 0.2,
        backoff_s: float = 0.1,
        max_backoff_s: float = 5.0,
        name: str = "audit",
    ) -> None:
        if max_size < 1 or max_batch < 1:
            raise ValueError("max_size and max_batch must be at least 1")
        self._flush = flush
        self.max_size = max_size
        self.max_batch = min(max_batch, max_size)
        self.interval_s = interval_s
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.name = name
        self.refused = 0  # items put_nowait turned away (queue full or closed)
        self.flushed = 0  # items flushed successfully
        self.failures = 0  # flush attempts that raised (each one retried)
        self._buf: deque[T] = deque()
        self._inflight: list[T] = []
        self._wake = asyncio.Event()
        self._space = asyncio.Event()
        self._stopping = False
        self._task: asyncio.Task[None] | None = None
        self._writer: ThreadPoolExecutor | None = None

    @property
    def pending(self) -> int:
        """Items accepted and not yet flushed (the batch being flushed included)."""
        return len(self._buf) + len(self._inflight)

    @property
    def closed(self) -> bool:
        """True once :meth:`drain` was called: no more items are accepted."""
        return self._stopping

    def _full(self) -> bool:
        return self.pending >= self.max_size

    def _accept(self, item: T) -> None:
        self._buf.append(item)
        n = len(self._buf)
        if n == 1 or n >= self.max_batch:
            self._wake.set()

    async def put(self, item: T) -> None:
        """Enqueue ``item``, waiting while the queue is full.

        Raises :class:`RuntimeError` once the queue is draining or drained.
        """
        while True:
            if self._stopping:
                raise RuntimeError(f"{self.name} queue is closed")
            if not self._full():
                self._accept(item)
                return
            self._space.clear()
            await self._space.wait()

    def put_nowait(self, item: T) -> bool:
        """Enqueue ``item`` if there is room now; ``False`` (and counted) otherwise."""
        if self._stopping or self._full():
            self.refused += 1
            return False
        self._accept(item)
        return True

    def start(self) -> None:
        """Start the background flusher on the running loop (idempotent)."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name=f"bastion-{self.name}-flusher"
            )

    async def drain(self) -> int:
        """Flush everything pending, then stop; returns the items left (0).

        This waits until every item is flushed (a failing flush is retried
        meanwhile). To bound it, wrap it in ``asyncio.timeout``: when the
        drain is cancelled the flusher is cancelled too, the count it left is
        logged, and a later :meth:`drain` retries them (a batch whose flush was
        cut off mid-call may then be flushed twice).
        """
        self._stopping = True
        self._space.set()  # wake waiting producers so they see the queue closed
        self.start()
        self._wake.set()
        task = self._task
        assert task is not None
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            self._task = None
            log.error(
                "%s queue drain cancelled",
                self.name,
                extra={"fields": {"queue": self.name, "unflushed": self.pending}},
            )
            raise
        return self.pending

    async def _wait_for_batch(self) -> None:
        """Return when a batch should be flushed (or the queue is stopping)."""
        if self._stopping or self._inflight:
            return
        if not self._buf:
            self._wake.clear()
            await self._wake.wait()
        if len(self._buf) < self.max_batch and not self._stopping:
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.interval_s):
                    await self._wake.wait()

    async def _run(self) -> None:
        attempt = 0
        while True:
            await self._wait_for_batch()
            if not self._inflight:
                n = min(len(self._buf), self.max_batch)
                self._inflight = [self._buf.popleft() for _ in range(n)]
            if not self._inflight:
                if self._stopping:
                    if self._writer is not None:
                        self._writer.shutdown(wait=False)
                        self._writer = None
                    return
                continue
            if self._writer is None:
                self._writer = ThreadPoolExecutor(
                    1, thread_name_prefix=f"bastion-{self.name}", initializer=_lower_priority
                )
            try:
                await asyncio.get_running_loop().run_in_executor(
                    self._writer, self._flush, list(self._inflight)
                )
            except Exception as exc:
                attempt += 1
                self.failures += 1
                delay = min(self.backoff_s * 2 ** (attempt - 1), self.max_backoff_s)
                log.warning(
                    "%s flush failed, will retry",
                    self.name,
                    extra={
                        "fields": {
                            "queue": self.name,
                            "items": len(self._inflight),
                            "attempt": attempt,
                            "retry_in_s": delay,
                            "error.type": type(exc).__name__,
                        }
                    },
                )
                await asyncio.sleep(delay)
                continue
            attempt = 0
            self.flushed += len(self._inflight)
            self._inflight = []
            self._space.set()
