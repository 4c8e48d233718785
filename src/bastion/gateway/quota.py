"""Atomic counters for rate limits and budgets (the port and the in-process one).

Every limit Bastion enforces is a counter in a window: requests or tokens per
minute for a key, team, tenant or deployment, and micro-dollars or tokens per
day or month for a budget. One :meth:`Counters.acquire` call checks a request
against *all* of its counters and, only if every hard check passes, adds its
amounts to all of them, atomically. So two requests can never both take the
last unit, whichever replica they reach: the in-process implementation here
serves one process (embedded mode); :mod:`bastion.store.redis.counters` runs
the same operation as one Lua script in Redis (scale-out).

Windows are fixed and aligned to the clock (a minute, a UTC day, a UTC month):
a counter's key names its window (``...:m:29433120``), and it expires after
the window ends. A limit of R per minute therefore admits exactly R requests
in each calendar minute, across every replica.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class Check:
    """One counter a request must pass.

    ``amount`` is added when the request is admitted. A hard check with a
    ``limit`` refuses the request when ``value + amount > limit``; a soft one
    (or one without a limit) only counts. ``ttl_s`` is set when the counter is
    created, so it disappears after its window.
    """

    key: str
    amount: int
    limit: int | None
    ttl_s: int
    hard: bool = True


@dataclass(frozen=True, slots=True)
class Outcome:
    """The result of :meth:`Counters.acquire`.

    ``values`` holds each counter's value after the call (including this
    request's amounts when admitted); ``failed`` is the index of the first
    hard check that refused, or -1.
    """

    admitted: bool
    values: tuple[int, ...]
    failed: int = -1


class Counters(Protocol):
    """Windowed counters shared by everything that enforces a limit."""

    async def acquire(self, checks: Sequence[Check]) -> Outcome:
        """Check all ``checks`` and, if none refuses, add every amount; atomically."""
        ...

    async def adjust(self, deltas: Sequence[tuple[str, int, int]]) -> None:
        """Add ``(key, delta, ttl_s)`` to counters without checking limits.

        Used to reconcile a reservation with the real usage (a negative delta
        gives back what was not used). A missing counter is created with ``ttl_s``.
        """
        ...

    async def seed(self, key: str, value: int, ttl_s: int) -> bool:
        """Set ``key`` to ``value`` unless it exists; returns whether it was set."""
        ...

    async def get(self, keys: Sequence[str]) -> list[int]:
        """Current values (0 for a missing or expired counter)."""
        ...

    async def aclose(self) -> None: ...


class MemoryCounters:
    """Counters in this process's memory (embedded mode, a single replica).

    Each operation runs without awaiting, so on one event loop it is atomic.
    """

    def __init__(self, clock: object = time.monotonic, sweep_every: int = 4096) -> None:
        self._clock = clock
        self._values: dict[str, list[float]] = {}  # key -> [value, expires_at]
        self._ops = 0
        self._sweep_every = sweep_every

    def _now(self) -> float:
        return self._clock()  # type: ignore[operator,no-any-return]

    def _live(self, key: str, now: float) -> list[float] | None:
        slot = self._values.get(key)
        if slot is not None and slot[1] <= now:
            del self._values[key]
            return None
        return slot

    def _sweep(self, now: float) -> None:
        self._ops += 1
        if self._ops % self._sweep_every == 0:
            for k in [k for k, s in self._values.items() if s[1] <= now]:
                del self._values[k]

    async def acquire(self, checks: Sequence[Check]) -> Outcome:
        now = self._now()
        self._sweep(now)
        current = []
        for c in checks:
            slot = self._live(c.key, now)
            current.append(0 if slot is None else int(slot[0]))
        for i, c in enumerate(checks):
            if c.hard and c.limit is not None and current[i] + c.amount > c.limit:
                return Outcome(False, tuple(current), i)
        out = []
        for c in checks:
            slot = self._values.get(c.key)
            if slot is None:
                slot = self._values[c.key] = [0, now + c.ttl_s]
            slot[0] += c.amount
            out.append(int(slot[0]))
        return Outcome(True, tuple(out))

    async def adjust(self, deltas: Sequence[tuple[str, int, int]]) -> None:
        now = self._now()
        for key, delta, ttl in deltas:
            slot = self._live(key, now)
            if slot is None:
                slot = self._values[key] = [0, now + ttl]
            slot[0] += delta

    async def seed(self, key: str, value: int, ttl_s: int) -> bool:
        now = self._now()
        if self._live(key, now) is not None:
            return False
        self._values[key] = [value, now + ttl_s]
        return True

    async def get(self, keys: Sequence[str]) -> list[int]:
        now = self._now()
        out = []
        for k in keys:
            slot = self._live(k, now)
            out.append(0 if slot is None else int(slot[0]))
        return out

    async def aclose(self) -> None:
        self._values.clear()
