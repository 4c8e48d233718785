"""Usage rows and request payloads in SQL (SQLite or PostgreSQL).

Implements :class:`bastion.telemetry.usage.UsageStore` and
:class:`bastion.telemetry.payloads.PayloadStore`. Rows arrive in batches from
the in-process queues; each batch is one transaction. A batch appended again
(a flush retried after its commit went through) adds nothing: rows are keyed
by their id.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from bastion.store.sql.database import Database
from bastion.telemetry.payloads import PayloadRecord
from bastion.telemetry.usage import TOTALS, UsageQuery, UsageRecord

_COLS = (
    "id, ts, request_id, tenant_id, team_id, key_id, model, deployment, provider, endpoint, "
    "status, error_code, prompt_tokens, completion_tokens, cached_tokens, cost_usd, cache, "
    "stream, estimated, latency_ms"
)
_MARKS = ",".join("?" * 20)


def _group_expr(db: Database, name: str) -> str:
    if name in ("day", "month"):
        # Whole seconds first: SQLite rounds to milliseconds and PostgreSQL to
        # microseconds, so a row just before midnight could land on either day.
        if db.dialect == "sqlite":
            fmt = "%Y-%m-%d" if name == "day" else "%Y-%m"
            return f"strftime('{fmt}', CAST(u.ts AS INTEGER), 'unixepoch')"
        fmt = "YYYY-MM-DD" if name == "day" else "YYYY-MM"
        return f"to_char(to_timestamp(floor(u.ts)) AT TIME ZONE 'UTC', '{fmt}')"
    if name == "tag":
        return "t.tag"
    column = {"tenant": "tenant_id", "team": "team_id", "key": "key_id"}.get(name, name)
    return f"u.{column}"


def _order(db: Database, groups: list[str]) -> str:
    """Groups in byte order of their (text) values, NULL first, as SQLite sorts them.

    PostgreSQL would sort NULL last and by the database's collation.
    """
    if db.dialect == "sqlite":
        return ", ".join(str(i + 1) for i in range(len(groups)))
    return ", ".join(f'{g} COLLATE "C" NULLS FIRST' for g in groups)


def _nano_usd(db: Database, column: str) -> str:
    """``column`` (USD) in whole nano-dollars, rounded half away from zero alike on both.

    Summing integers keeps totals exact and identical on both engines, whatever
    order rows are added in (float sums are not).
    """
    v = f"({column} * 1000000000)"
    if db.dialect == "sqlite":
        return f"CAST(round({v}) AS INTEGER)"  # round(): trunc(|v| + 0.5) with v's sign
    return f"CAST(sign({v}) * trunc(abs({v}) + 0.5) AS BIGINT)"


def _usd(nanos: Any) -> float:
    return int(nanos or 0) / 1_000_000_000


class SqlUsageStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    def append(self, rows: Sequence[UsageRecord]) -> None:
        if not rows:
            return
        with self.db.transaction():
            self.db.executemany(
                f"INSERT INTO usage ({_COLS}) VALUES ({_MARKS}) ON CONFLICT (id) DO NOTHING",
                [
                    (
                        r.id,
                        r.ts,
                        r.request_id,
                        r.tenant_id,
                        r.team_id,
                        r.key_id,
                        r.model,
                        r.deployment,
                        r.provider,
                        r.endpoint,
                        r.status,
                        r.error_code,
                        r.prompt_tokens,
                        r.completion_tokens,
                        r.cached_tokens,
                        r.cost_usd,
                        r.cache,
                        int(r.stream),
                        int(r.estimated),
                        r.latency_ms,
                    )
                    for r in rows
                ],
            )
            tags = [(r.id, t) for r in rows for t in dict.fromkeys(r.tags)]
            if tags:
                self.db.executemany(
                    "INSERT INTO usage_tags (usage_id, tag) VALUES (?,?) ON CONFLICT DO NOTHING",
                    tags,
                )

    def query(self, q: UsageQuery) -> list[dict[str, Any]]:
        where: list[str] = []
        params: list[Any] = []
        for column, value in (
            ("u.tenant_id", q.tenant_id),
            ("u.team_id", q.team_id),
            ("u.key_id", q.key_id),
            ("u.model", q.model),
        ):
            if value is not None:
                where.append(f"{column} = ?")
                params.append(value)
        if q.start is not None:
            where.append("u.ts >= ?")
            params.append(q.start)
        if q.end is not None:
            where.append("u.ts < ?")
            params.append(q.end)
        joins = ""
        if "tag" in q.group_by:
            joins = " JOIN usage_tags t ON t.usage_id = u.id"
            if q.tag is not None:
                where.append("t.tag = ?")
                params.append(q.tag)
        elif q.tag is not None:
            where.append(
                "EXISTS (SELECT 1 FROM usage_tags t WHERE t.usage_id = u.id AND t.tag = ?)"
            )
            params.append(q.tag)
        groups = [_group_expr(self.db, g) for g in q.group_by]
        totals = (
            "count(*), "
            "sum(CASE WHEN u.status >= 400 THEN 1 ELSE 0 END), "
            "sum(CASE WHEN u.cache = 'hit' THEN 1 ELSE 0 END), "
            "sum(u.prompt_tokens), sum(u.completion_tokens), sum(u.cached_tokens), "
            f"sum({_nano_usd(self.db, 'u.cost_usd')})"
        )
        select = ", ".join([*groups, totals])
        sql = f"SELECT {select} FROM usage u{joins}"
        if where:
            sql += " WHERE " + " AND ".join(where)
        if groups:
            positions = ", ".join(str(i + 1) for i in range(len(groups)))
            sql += f" GROUP BY {positions} ORDER BY {_order(self.db, groups)}"
        sql += " LIMIT ?"
        params.append(int(q.limit))
        out = []
        for row in self.db.query(sql, params):
            item: dict[str, Any] = dict(zip(q.group_by, row[: len(groups)], strict=True))
            values = row[len(groups) :]
            if not values[0]:
                continue  # an aggregate over no rows
            for name, v in zip(TOTALS, values, strict=True):
                item[name] = _usd(v) if name == "cost_usd" else int(v or 0)
            out.append(item)
        return out

    def spent(self, scope: str, scope_id: str, since: float) -> tuple[float, int]:
        column = {"tenant": "tenant_id", "team": "team_id", "key": "key_id"}[scope]
        rows = self.db.query(
            f"SELECT sum({_nano_usd(self.db, 'cost_usd')}), "
            f"sum(prompt_tokens + completion_tokens) FROM usage WHERE {column} = ? AND ts >= ?",
            (scope_id, since),
        )
        nanos, tokens = rows[0] if rows else (0, 0)
        return _usd(nanos), int(tokens or 0)

    def count(self) -> int:
        return int(self.db.query("SELECT count(*) FROM usage")[0][0])

    def close(self) -> None:
        self.db.close()


class SqlPayloadStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    def append(self, rows: Sequence[PayloadRecord]) -> None:
        if not rows:
            return
        with self.db.transaction():
            self.db.executemany(
                "INSERT INTO payloads (request_id, ts, tenant_id, model, mode, prompt, completion) "
                "VALUES (?,?,?,?,?,?,?)",
                [
                    (r.request_id, r.ts, r.tenant_id, r.model, r.mode, r.prompt, r.completion)
                    for r in rows
                ],
            )

    def get(self, request_id: str) -> list[PayloadRecord]:
        rows = self.db.query(
            "SELECT request_id, tenant_id, model, mode, prompt, completion, ts FROM payloads "
            "WHERE request_id = ? ORDER BY ts",
            (request_id,),
        )
        return [
            PayloadRecord(
                request_id=str(r[0]),
                tenant_id=r[1],
                model=str(r[2]),
                mode=r[3],
                prompt=str(r[4]),
                completion=str(r[5]),
                ts=float(r[6]),
            )
            for r in rows
        ]

    def purge(self, older_than: float) -> int:
        with self.db.transaction():
            return self.db.execute("DELETE FROM payloads WHERE ts < ?", (older_than,))

    def close(self) -> None:
        self.db.close()
