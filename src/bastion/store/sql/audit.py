"""SQL implementation of :class:`bastion.telemetry.audit.AuditSink` (SQLite or PostgreSQL).

Events live in the ``audit_events`` table. :meth:`SqlAuditStore.append`
reads the last ``(seq, hash)`` and inserts the newly chained events inside one
write transaction that first takes the chain's lock (SQLite: ``BEGIN
IMMEDIATE``, the database write lock; PostgreSQL: an advisory transaction
lock), so any number of connections, processes and replicas appending at once
still build one chain.
Nothing here runs on the request path: appends come from a
:class:`bastion.telemetry.batch.BatchQueue` flush in a worker thread.

Rows are read back as they are: a row altered by hand (even into values of
the wrong type or invalid JSON) still becomes an :class:`AuditEvent`, so
:func:`bastion.telemetry.audit.verify` reports it instead of crashing.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any

import orjson

from bastion.store.sql.database import Database
from bastion.telemetry.audit import GENESIS_HASH, AuditDraft, AuditEvent, chain

_COLS = "seq, ts, kind, actor, tenant, request_id, data, prev_hash, hash"
_PAGE = 500


def _text(v: object) -> str | None:
    return None if v is None else str(v)


def _ts(v: object) -> float:
    try:
        return float(v)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return math.nan  # never hashes like a real timestamp


def _data(v: object) -> dict[str, Any]:
    try:
        d = orjson.loads(v)  # type: ignore[arg-type]
    except (TypeError, orjson.JSONDecodeError):
        d = None
    if isinstance(d, dict):
        return d
    return {"_unreadable": str(v)}  # a stand-in that cannot match the stored hash


def _event(r: tuple[object, ...]) -> AuditEvent:
    seq, ts, kind, actor, tenant, request_id, data, prev_hash, hsh = r
    return AuditEvent(
        seq=int(seq),  # type: ignore[call-overload]
        ts=_ts(ts),
        kind=str(kind),
        actor=_text(actor),
        tenant=_text(tenant),
        request_id=_text(request_id),
        data=_data(data),
        prev_hash=str(prev_hash),
        hash=str(hsh),
    )


class SqlAuditStore:
    """The audit log in table ``audit_events``."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def append(self, drafts: Sequence[AuditDraft]) -> list[AuditEvent]:
        """Number, chain and insert ``drafts`` in one transaction; return the events."""
        if not drafts:
            return []
        with self.db.transaction(lock="bastion-audit-chain"):
            rows = self.db.query("SELECT seq, hash FROM audit_events ORDER BY seq DESC LIMIT 1")
            seq, prev = (0, GENESIS_HASH) if not rows else (int(rows[0][0]), str(rows[0][1]))
            out: list[AuditEvent] = []
            for d in drafts:
                seq += 1
                ev = chain(prev, seq, d)
                out.append(ev)
                prev = ev.hash
            self.db.executemany(
                f"INSERT INTO audit_events ({_COLS}) VALUES (?,?,?,?,?,?,?,?,?)",
                [
                    (
                        e.seq,
                        e.ts,
                        e.kind,
                        e.actor,
                        e.tenant,
                        e.request_id,
                        orjson.dumps(e.data).decode(),
                        e.prev_hash,
                        e.hash,
                    )
                    for e in out
                ],
            )
        return out

    def events(self, since_seq: int = 0, tenant: str | None = None) -> Iterator[AuditEvent]:
        """Events with ``seq > since_seq`` in seq order, read a page at a time.

        ``tenant`` keeps only that tenant's events. Each page is one query, so
        a slow reader never blocks appends.
        """
        last = since_seq
        where = "seq > ?" + ("" if tenant is None else " AND tenant = ?")
        while True:
            params: list[object] = [last, _PAGE] if tenant is None else [last, tenant, _PAGE]
            rows = self.db.query(
                f"SELECT {_COLS} FROM audit_events WHERE {where} ORDER BY seq LIMIT ?", params
            )
            for r in rows:
                yield _event(r)
            if len(rows) < _PAGE:
                return
            last = int(rows[-1][0])

    def count(self) -> int:
        """How many events are stored."""
        return int(self.db.query("SELECT count(*) FROM audit_events")[0][0])

    def close(self) -> None:
        """Close the connection."""
        self.db.close()
