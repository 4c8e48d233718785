"""Usage rows: who used what, and what it cost (the port and its pure logic).

One :class:`UsageRecord` per data-plane request that reached a model or the
cache, attributed to tenant, team, key, model alias, deployment and the
caller's tags. Rows pass through a bounded
:class:`~bastion.telemetry.batch.BatchQueue` and are written in batches by a
:class:`UsageStore` (SQLite or PostgreSQL), never on the request path.

:class:`UsageQuery` filters and groups them (``GET /admin/usage``,
``bastion usage``); every store answers it with the same columns.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

GROUPS: tuple[str, ...] = ("day", "month", "tenant", "team", "key", "model", "deployment", "tag")
"""What usage can be grouped by."""

TOTALS: tuple[str, ...] = (
    "requests",
    "errors",
    "cache_hits",
    "prompt_tokens",
    "completion_tokens",
    "cached_tokens",
    "cost_usd",
)
"""The aggregate columns of every usage query row."""


@dataclass(frozen=True, slots=True)
class UsageRecord:
    request_id: str
    tenant_id: str | None
    team_id: str | None
    key_id: str | None
    model: str
    endpoint: str
    status: int
    deployment: str | None = None
    provider: str | None = None
    error_code: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    cost_usd: float = 0.0
    cache: str | None = None
    stream: bool = False
    estimated: bool = False
    tags: tuple[str, ...] = ()
    latency_ms: float = 0.0
    ts: float = field(default_factory=time.time)
    # time-ordered, so inserts append to the primary-key index instead of splitting its pages
    id: str = field(default_factory=lambda: f"{time.time_ns():016x}{os.urandom(4).hex()}")


@dataclass(frozen=True, slots=True)
class UsageQuery:
    """Filters (all optional, combined with AND) and grouping."""

    start: float | None = None
    end: float | None = None
    tenant_id: str | None = None
    team_id: str | None = None
    key_id: str | None = None
    model: str | None = None
    tag: str | None = None
    group_by: tuple[str, ...] = ()
    limit: int = 1000

    def __post_init__(self) -> None:
        bad = [g for g in self.group_by if g not in GROUPS]
        if bad:
            raise ValueError(f"cannot group usage by {', '.join(bad)}; choose from {GROUPS}")
        if len(set(self.group_by)) != len(self.group_by):
            raise ValueError("group_by names a column twice")


class UsageStore(Protocol):
    def append(self, rows: Sequence[UsageRecord]) -> None:
        """Insert ``rows`` (and their tags) in one transaction."""
        ...

    def query(self, q: UsageQuery) -> list[dict[str, Any]]:
        """One dict per group: the ``group_by`` columns, then :data:`TOTALS`.

        Groups are ordered by their columns; ``day`` is ``YYYY-MM-DD`` and
        ``month`` ``YYYY-MM`` (UTC). Grouping by ``tag`` counts a request once
        per tag it carries, and leaves untagged requests out.
        """
        ...

    def spent(self, scope: str, scope_id: str, since: float) -> tuple[float, int]:
        """Cost (USD) and total tokens of ``scope`` (tenant, team, key) since ``since``."""
        ...

    def count(self) -> int:
        """How many rows are stored."""
        ...

    def close(self) -> None: ...


def day_start(ts: float) -> float:
    """The UTC midnight at or before ``ts``."""
    return ts - ts % 86400


def month_start(ts: float) -> float:
    """The first instant (UTC) of the month holding ``ts``."""
    t = time.gmtime(ts)
    import calendar

    return float(calendar.timegm((t.tm_year, t.tm_mon, 1, 0, 0, 0)))


def month_end(ts: float) -> float:
    """The first instant (UTC) of the month after the one holding ``ts``."""
    t = time.gmtime(ts)
    import calendar

    year, month = (t.tm_year + 1, 1) if t.tm_mon == 12 else (t.tm_year, t.tm_mon + 1)
    return float(calendar.timegm((year, month, 1, 0, 0, 0)))
