"""A per-deployment circuit breaker: closed, open, half-open.

* **closed**: traffic flows. The breaker opens after ``consecutive_failures``
  failures in a row, or when the failure rate over the last ``window_s``
  seconds exceeds ``error_rate`` with at least ``min_requests`` outcomes.
* **open**: the deployment is skipped until ``cooldown_s`` has passed.
* **half-open**: exactly one probe request is let through (other callers keep
  skipping the deployment); its success closes the breaker, its failure opens
  it again for another cooldown.

Every *attempt* (a retry included) records an outcome, so retries cannot keep
a failing deployment in rotation, and a retry on an open breaker is refused.
Only failures that say something about the deployment's health count
(connect errors, timeouts, 5xx, 429); a caller's bad request does not.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from enum import IntEnum

from bastion.config.schema import BreakerConfig


class State(IntEnum):
    CLOSED = 0
    OPEN = 1
    HALF_OPEN = 2


class CircuitBreaker:
    """Thread-unsafe by design: it is used from one event loop."""

    __slots__ = (
        "_clock",
        "_events",
        "_fails_in_window",
        "_opened_at",
        "_probe_in_flight",
        "cfg",
        "consecutive",
        "on_change",
        "state",
    )

    def __init__(
        self,
        cfg: BreakerConfig,
        *,
        clock: Callable[[], float] = time.monotonic,
        on_change: Callable[[State], None] | None = None,
    ) -> None:
        self.cfg = cfg
        self._clock = clock
        self.state = State.CLOSED
        self.consecutive = 0
        self._events: deque[tuple[float, bool]] = deque()
        self._fails_in_window = 0
        self._opened_at = 0.0
        self._probe_in_flight = False
        self.on_change = on_change

    def _set(self, state: State) -> None:
        if state is not self.state:
            self.state = state
            if self.on_change is not None:
                self.on_change(state)

    def allow(self) -> bool:
        """May a request go to this deployment now? Claims the probe when half-open."""
        if self.state is State.CLOSED:
            return True
        if self.state is State.OPEN:
            if self._clock() - self._opened_at < self.cfg.cooldown_s:
                return False
            self._set(State.HALF_OPEN)
            self._probe_in_flight = False
        if self._probe_in_flight:
            return False
        self._probe_in_flight = True
        return True

    def available(self) -> bool:
        """Like :meth:`allow` but without claiming anything (for planning and /readyz)."""
        if self.state is State.CLOSED:
            return True
        if self.state is State.OPEN:
            return self._clock() - self._opened_at >= self.cfg.cooldown_s
        return not self._probe_in_flight

    def record(self, ok: bool) -> None:
        """Record one attempt's outcome."""
        now = self._clock()
        if self.state is State.HALF_OPEN:
            self._probe_in_flight = False
            if ok:
                self._reset_window()
                self.consecutive = 0
                self._set(State.CLOSED)
            else:
                self._open(now)
            return
        if self.state is State.OPEN:
            return  # a straggler from before the breaker opened
        self._events.append((now, ok))
        if not ok:
            self._fails_in_window += 1
        self._trim(now)
        self.consecutive = 0 if ok else self.consecutive + 1
        if self.consecutive >= self.cfg.consecutive_failures:
            self._open(now)
            return
        n = len(self._events)
        if n >= self.cfg.min_requests and self._fails_in_window / n > self.cfg.error_rate:
            self._open(now)

    def release(self) -> None:
        """A claimed probe ended without an outcome about health (e.g. client went away)."""
        if self.state is State.HALF_OPEN:
            self._probe_in_flight = False

    def _open(self, now: float) -> None:
        self._opened_at = now
        self._probe_in_flight = False
        self._reset_window()
        self._set(State.OPEN)

    def _reset_window(self) -> None:
        self._events.clear()
        self._fails_in_window = 0

    def _trim(self, now: float) -> None:
        horizon = now - self.cfg.window_s
        events = self._events
        while events and events[0][0] < horizon:
            _, ok = events.popleft()
            if not ok:
                self._fails_in_window -= 1
