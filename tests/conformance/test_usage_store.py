"""SqlUsageStore and SqlPayloadStore conformance: identical answers on SQLite and PostgreSQL.

Every expectation is computed here from the input rows (never by comparing
the two engines), so both must give exactly the same groups, order and sums.
"""

from __future__ import annotations

import calendar
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import replace
from fractions import Fraction
from typing import Any

import pytest

from bastion.store.sql.database import Database
from bastion.store.sql.usage import SqlPayloadStore, SqlUsageStore
from bastion.telemetry.payloads import PayloadRecord, PayloadStore
from bastion.telemetry.usage import TOTALS, UsageQuery, UsageRecord, UsageStore

DAY = 86400.0
T0 = float(calendar.timegm((2024, 1, 30, 0, 0, 0)))  # Tue 30 Jan 2024, 00:00 UTC


def _rows() -> list[UsageRecord]:
    """Three tenants, two teams, four keys, three models, five days across two months."""
    spec: list[tuple[Any, ...]] = [
        # tenant, team, key, model, deployment, status, cache, tags, day, cost
        ("tnt_a", "team_r", "key_1", "gpt-4o", "azure-east", 200, None, ("prod", "web"), 0, 0.1),
        ("tnt_a", "team_r", "key_1", "gpt-4o", "azure-west", 200, "hit", ("prod",), 0, 0.2),
        ("tnt_a", "team_b", "key_2", "claude", "anthropic", 429, None, (), 0, 0.0),
        ("tnt_a", None, "key_3", "gpt-4o", "azure-east", 200, "miss", ("web",), 1, 0.3),
        ("tnt_a", "team_r", "key_1", "local", None, 500, None, ("prod", "batch"), 1, 0.000001),
        ("tnt_b", None, "key_4", "claude", "anthropic", 200, None, ("prod",), 2, 1.000000001),
        ("tnt_b", None, "key_4", "claude", "anthropic", 400, "hit", (), 2, 0.123456789),
        ("tnt_b", None, "key_4", "gpt-4o", "azure-east", 200, None, ("batch",), 3, 7.7),
        (None, None, None, "local", None, 200, None, ("web", "web"), 4, 0.0),
        ("tnt_a", "team_b", "key_2", "claude", "anthropic", 200, "hit", ("web",), 4, 0.3),
    ]
    out = []
    for i, (tenant, team, key, model, dep, status, cache, tags, day, cost) in enumerate(spec):
        out.append(
            UsageRecord(
                request_id=f"req_{i}",
                tenant_id=tenant,
                team_id=team,
                key_id=key,
                model=model,
                endpoint="/v1/chat/completions",
                status=status,
                deployment=dep,
                provider=None if dep is None else dep.split("-")[0],
                error_code=None if status < 400 else f"e{status}",
                prompt_tokens=100 + i,
                completion_tokens=10 * i,
                cached_tokens=i % 3,
                cost_usd=cost,
                cache=cache,
                stream=i % 2 == 0,
                estimated=i == 4,
                tags=tags,
                latency_ms=12.5 * i,
                ts=T0 + day * DAY + 3600.0 * i + 0.25,
            )
        )
    feb = T0 + 2 * DAY  # 1 Feb 2024, 00:00 UTC: these two still count on 31 Jan, in January
    for i, (ts, cost) in enumerate([(feb - 0.0002, 0.05), (feb - 0.0000002, 0.000000002)]):
        out.append(
            UsageRecord(
                request_id=f"edge_{i}",
                tenant_id="tnt_b",
                team_id=None,
                key_id="key_4",
                model="claude",
                endpoint="/v1/messages",
                status=200,
                prompt_tokens=7,
                completion_tokens=1,
                cost_usd=cost,
                ts=ts,
            )
        )
    return out


ROWS = _rows()


def _day(ts: float) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(ts))


def _month(ts: float) -> str:
    return time.strftime("%Y-%m", time.gmtime(ts))


def _values(r: UsageRecord, name: str) -> list[str | None]:
    if name == "tag":
        return list(dict.fromkeys(r.tags))
    return [
        {
            "day": _day(r.ts),
            "month": _month(r.ts),
            "tenant": r.tenant_id,
            "team": r.team_id,
            "key": r.key_id,
            "model": r.model,
            "deployment": r.deployment,
        }[name]
    ]


def _keys(r: UsageRecord, group_by: tuple[str, ...]) -> list[tuple[str | None, ...]]:
    keys: list[tuple[str | None, ...]] = [()]
    for g in group_by:
        keys = [(*k, v) for k in keys for v in _values(r, g)]
    return keys


def expected(rows: Iterable[UsageRecord], group_by: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """The query answer computed in Python: groups sorted with None first, exact cost sums."""
    acc: dict[tuple[str | None, ...], list[Any]] = defaultdict(lambda: [0] * 6 + [Fraction(0)])
    for r in rows:
        for k in _keys(r, group_by):
            a = acc[k]
            a[0] += 1
            a[1] += r.status >= 400
            a[2] += r.cache == "hit"
            a[3] += r.prompt_tokens
            a[4] += r.completion_tokens
            a[5] += r.cached_tokens
            a[6] += Fraction(repr(r.cost_usd))

    def order(k: tuple[str | None, ...]) -> tuple[tuple[bool, str], ...]:
        return tuple((v is not None, v or "") for v in k)

    out = []
    for k in sorted(acc, key=order):
        item: dict[str, Any] = dict(zip(group_by, k, strict=True))
        for name, v in zip(TOTALS, acc[k], strict=True):
            item[name] = float(v) if name == "cost_usd" else int(v)
        out.append(item)
    return out


@pytest.fixture
def store(db: Database) -> SqlUsageStore:
    return SqlUsageStore(db)


@pytest.fixture
def filled(store: SqlUsageStore) -> SqlUsageStore:
    store.append(ROWS[:4])
    store.append(ROWS[4:9])
    store.append([])
    store.append(ROWS[9:])
    assert len(ROWS) == 12
    return store


def assert_same(got: list[dict[str, Any]], want: list[dict[str, Any]]) -> None:
    assert [{k: v for k, v in g.items() if k != "cost_usd"} for g in got] == [
        {k: v for k, v in w.items() if k != "cost_usd"} for w in want
    ]
    for g, w in zip(got, want, strict=True):
        assert type(g["cost_usd"]) is float
        assert g["cost_usd"] == pytest.approx(w["cost_usd"], abs=1e-9, rel=0)


def test_it_is_a_usage_store(store: SqlUsageStore) -> None:
    port: UsageStore = store
    assert port.count() == 0
    assert port.query(UsageQuery()) == []


def test_count(filled: SqlUsageStore) -> None:
    assert filled.count() == len(ROWS)


def test_the_input_spans_what_the_queries_need() -> None:
    assert len({_day(r.ts) for r in ROWS}) == 5
    assert {_month(r.ts) for r in ROWS} == {"2024-01", "2024-02"}


def test_totals(filled: SqlUsageStore) -> None:
    got = filled.query(UsageQuery())
    want = expected(ROWS)
    assert_same(got, want)
    assert (got[0]["requests"], got[0]["errors"], got[0]["cache_hits"]) == (12, 3, 3)
    assert got[0]["cost_usd"] == pytest.approx(9.773457792, abs=1e-9, rel=0)


@pytest.mark.parametrize(
    "group_by",
    [
        ("day",),
        ("month",),
        ("tenant",),
        ("team",),
        ("key",),
        ("model",),
        ("deployment",),
        ("tag",),
        ("day", "model"),
        ("month", "tenant"),
        ("tenant", "team"),
        ("model", "tag"),
        ("tag", "day"),
        ("tenant", "team", "key", "model"),
    ],
)
def test_group_by(filled: SqlUsageStore, group_by: tuple[str, ...]) -> None:
    assert_same(filled.query(UsageQuery(group_by=group_by)), expected(ROWS, group_by))


def test_group_by_day_and_month_use_utc_calendar_dates(filled: SqlUsageStore) -> None:
    days = [g["day"] for g in filled.query(UsageQuery(group_by=("day",)))]
    assert days == ["2024-01-30", "2024-01-31", "2024-02-01", "2024-02-02", "2024-02-03"]
    months = filled.query(UsageQuery(group_by=("month",)))
    assert [(g["month"], g["requests"]) for g in months] == [("2024-01", 7), ("2024-02", 5)]
    near_midnight = filled.query(UsageQuery(start=T0 + DAY, end=T0 + 2 * DAY, group_by=("day",)))
    assert [(g["day"], g["requests"]) for g in near_midnight] == [("2024-01-31", 4)]


def test_group_by_tag_counts_each_tag_once_and_leaves_untagged_out(
    filled: SqlUsageStore,
) -> None:
    got = filled.query(UsageQuery(group_by=("tag",)))
    assert [(g["tag"], g["requests"]) for g in got] == [
        ("batch", 2),
        ("prod", 4),
        ("web", 4),  # row 8 carries "web" twice: counted once
    ]
    assert sum(g["requests"] for g in got) == 10  # 5 untagged rows left out, 3 counted twice


@pytest.mark.parametrize(
    ("q", "keep"),
    [
        (UsageQuery(tenant_id="tnt_a"), lambda r: r.tenant_id == "tnt_a"),
        (UsageQuery(team_id="team_r"), lambda r: r.team_id == "team_r"),
        (UsageQuery(key_id="key_4"), lambda r: r.key_id == "key_4"),
        (UsageQuery(model="claude"), lambda r: r.model == "claude"),
        (UsageQuery(tag="prod"), lambda r: "prod" in r.tags),
        (UsageQuery(tag="nope"), lambda r: False),
        (UsageQuery(start=T0 + DAY), lambda r: r.ts >= T0 + DAY),
        (UsageQuery(end=T0 + DAY), lambda r: r.ts < T0 + DAY),
        (UsageQuery(start=ROWS[3].ts, end=ROWS[7].ts), lambda r: ROWS[3].ts <= r.ts < ROWS[7].ts),
        (
            UsageQuery(tenant_id="tnt_a", model="gpt-4o", tag="web"),
            lambda r: r.tenant_id == "tnt_a" and r.model == "gpt-4o" and "web" in r.tags,
        ),
    ],
)
def test_filters(filled: SqlUsageStore, q: UsageQuery, keep: Callable[[UsageRecord], bool]) -> None:
    kept = [r for r in ROWS if keep(r)]
    for group_by in [(), ("model",), ("tag",), ("day", "tenant")]:
        query = replace(q, group_by=group_by)
        want = expected(kept, group_by)
        if q.tag is not None and "tag" in group_by:
            want = [w for w in want if w["tag"] == q.tag]  # the tag filter picks its group
        assert_same(filled.query(query), want)


def test_limit(filled: SqlUsageStore) -> None:
    got = filled.query(UsageQuery(group_by=("key",), limit=2))
    assert_same(got, expected(ROWS, ("key",))[:2])
    assert got[0]["key"] is None  # the unattributed row sorts first


def test_cost_sums_are_exact(store: SqlUsageStore) -> None:
    costs = [0.1] * 10 + [0.000000001] * 7 + [1e-9, 123.456789012, 0.3, 0.2]
    store.append(
        [
            UsageRecord(
                request_id=f"r{i}",
                tenant_id="t",
                team_id=None,
                key_id="k",
                model="m",
                endpoint="/v1/x",
                status=200,
                cost_usd=c,
                ts=T0 + i,
            )
            for i, c in enumerate(costs)
        ]
    )
    exact = float(sum(Fraction(repr(c)) for c in costs))
    (row,) = store.query(UsageQuery())
    assert row["cost_usd"] == pytest.approx(exact, abs=1e-9, rel=0)
    assert row["cost_usd"] == round(exact, 9)
    usd, _ = store.spent("tenant", "t", 0.0)
    assert usd == pytest.approx(exact, abs=1e-9, rel=0)


@pytest.mark.parametrize(
    ("scope", "scope_id", "attr"),
    [
        ("tenant", "tnt_a", "tenant_id"),
        ("tenant", "tnt_b", "tenant_id"),
        ("team", "team_r", "team_id"),
        ("team", "team_b", "team_id"),
        ("key", "key_1", "key_id"),
        ("key", "key_4", "key_id"),
        ("key", "key_none", "key_id"),
    ],
)
def test_spent(filled: SqlUsageStore, scope: str, scope_id: str, attr: str) -> None:
    for since in (0.0, T0 + DAY, ROWS[6].ts, T0 + 10 * DAY):
        rows = [r for r in ROWS if getattr(r, attr) == scope_id and r.ts >= since]
        usd, tokens = filled.spent(scope, scope_id, since)
        assert type(usd) is float and type(tokens) is int
        assert usd == pytest.approx(
            float(sum(Fraction(repr(r.cost_usd)) for r in rows)), abs=1e-9, rel=0
        )
        assert tokens == sum(r.prompt_tokens + r.completion_tokens for r in rows)


def test_a_second_instance_sees_appended_rows(
    store: SqlUsageStore, open_db: Callable[[], Database]
) -> None:
    other = SqlUsageStore(open_db())
    store.append(ROWS[:3])
    other.append(ROWS[3:])
    assert store.count() == other.count() == len(ROWS)
    assert_same(store.query(UsageQuery(group_by=("tag",))), expected(ROWS, ("tag",)))


def test_a_failed_batch_writes_nothing(store: SqlUsageStore) -> None:
    store.append(ROWS[:2])
    bad = replace(ROWS[3], model=None)  # type: ignore[arg-type]  # violates NOT NULL
    with pytest.raises(Exception):  # noqa: B017 - either driver's IntegrityError
        store.append([ROWS[2], bad])
    assert store.count() == 2
    assert_same(store.query(UsageQuery(group_by=("tag",))), expected(ROWS[:2], ("tag",)))


def test_appending_a_batch_again_adds_nothing(store: SqlUsageStore) -> None:
    """A flush retried after its commit went through must not count rows twice."""
    store.append(ROWS[:5])
    store.append(ROWS[3:])
    assert store.count() == len(ROWS)
    for group_by in [(), ("tag",)]:
        assert_same(store.query(UsageQuery(group_by=group_by)), expected(ROWS, group_by))


# ---------------------------------------------------------------------------- payloads
def payload(i: int, request_id: str, ts: float) -> PayloadRecord:
    return PayloadRecord(
        request_id=request_id,
        tenant_id=None if i % 2 else "tnt_a",
        model="gpt-4o",
        mode="redacted" if i % 2 else "full",
        prompt=f"prompt {i}: 100% of '?' and \"quotes\" \u00e9\u2603",
        completion=f"completion {i}" * (i + 1),
        ts=ts,
    )


def test_payloads_append_get_and_purge(db: Database) -> None:
    store = SqlPayloadStore(db)
    port: PayloadStore = store
    first = [payload(i, "req_1", T0 + i) for i in range(3)]
    second = [payload(i, "req_2", T0 + 10 + i) for i in range(3, 5)]
    port.append(first)
    port.append(second)
    port.append([])
    assert port.get("req_1") == first
    assert port.get("req_2") == second
    assert port.get("nope") == []
    assert port.purge(T0) == 0
    assert port.purge(T0 + 2) == 2  # strictly older than
    assert port.get("req_1") == first[2:]
    assert port.purge(T0 + 100) == 3
    assert port.purge(T0 + 100) == 0
    assert port.get("req_2") == []
