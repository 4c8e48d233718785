"""A bounded, loop-agnostic admission gate for the local provider's worker threads.

:class:`Gate` admits at most ``limit`` holders and queues at most ``max_queue``
waiters; beyond that :meth:`Gate.acquire` raises
:class:`~bastion.core.errors.Overloaded` at once. :meth:`Gate.release` is
thread-safe, so a worker thread frees its slot when its generation really ends.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque

from bastion.core.errors import Overloaded


class Gate:
    """At most ``limit`` holders and ``max_queue`` waiters; loop-agnostic, thread-safe release.

    Beyond the queue, :meth:`acquire` raises :class:`Overloaded` at once. A slot
    is released from the worker thread when its generation really ends.
    """

    def __init__(self, limit: int, max_queue: int, message: str) -> None:
        self._lock = threading.Lock()
        self._limit = limit
        self._free = limit
        self._max_queue = max_queue
        self._message = message
        self._waiters: deque[asyncio.Future[None]] = deque()

    @property
    def running(self) -> int:
        return self._limit - self._free

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    async def acquire(self) -> None:
        with self._lock:
            if self._free > 0 and not self._waiters:
                self._free -= 1
                return
            if len(self._waiters) >= self._max_queue:
                raise Overloaded(self._message, retry_after=1.0)
            fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._waiters.append(fut)
        try:
            await fut
        except asyncio.CancelledError:
            with self._lock:
                if fut in self._waiters:
                    self._waiters.remove(fut)
                elif fut.done() and not fut.cancelled():
                    self._release_locked()  # granted, but the waiter left: pass it on
            raise

    def release(self) -> None:
        with self._lock:
            self._release_locked()

    def _release_locked(self) -> None:
        while self._waiters:
            fut = self._waiters.popleft()
            try:
                fut.get_loop().call_soon_threadsafe(self._grant, fut)
                return
            except RuntimeError:  # that waiter's loop is closed
                continue
        self._free += 1

    def _grant(self, fut: asyncio.Future[None]) -> None:
        if fut.done():  # cancelled before the grant arrived
            self.release()
        else:
            fut.set_result(None)
