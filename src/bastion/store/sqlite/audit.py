"""SQLite implementation of :class:`bastion.telemetry.audit.AuditSink`.

Events live in the ``audit_events`` table of ``<data_dir>/bastion.db``
(migration 2 of :mod:`bastion.store.sqlite.db`). :meth:`SqliteAuditStore.append`
reads the last ``(seq, hash)`` and inserts the newly chained events inside one
``BEGIN IMMEDIATE`` transaction, which takes SQLite's write lock first, so any
number of connections and processes appending at once still build one chain.
Nothing here runs on the request path: appends come from a
:class:`bastion.telemetry.batch.BatchQueue` flush in a worker thread.

Rows are read back as they are: a row altered by hand (even into values of
the wrong type or invalid JSON) still becomes an :class:`AuditEvent`, so
:func:`bastion.telemetry.audit.verify` reports it instead of crashing.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import orjson

from bastion.store.sqlite.db import open_current
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


class SqliteAuditStore:
    """The audit log in ``<data_dir>/bastion.db`` (table ``audit_events``)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._conn = open_current(path)
        self._lock = threading.Lock()

    def append(self, drafts: Sequence[AuditDraft]) -> list[AuditEvent]:
        """Number, chain and insert ``drafts`` in one transaction; return the events."""
        if not drafts:
            return []
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                row = self._conn.execute(
                    "SELECT seq, hash FROM audit_events ORDER BY seq DESC LIMIT 1"
                ).fetchone()
                seq, prev = (0, GENESIS_HASH) if row is None else (int(row[0]), str(row[1]))
                out: list[AuditEvent] = []
                for d in drafts:
                    seq += 1
                    ev = chain(prev, seq, d)
                    out.append(ev)
                    prev = ev.hash
                self._conn.executemany(
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
                self._conn.execute("COMMIT")
            except BaseException:
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                raise
        return out

    def events(self, since_seq: int = 0) -> Iterator[AuditEvent]:
        """Events with ``seq > since_seq`` in seq order, read a page at a time.

        The lock is held per page only, so a slow reader never blocks appends.
        """
        last = since_seq
        while True:
            with self._lock:
                rows = self._conn.execute(
                    f"SELECT {_COLS} FROM audit_events WHERE seq > ? ORDER BY seq LIMIT ?",
                    (last, _PAGE),
                ).fetchall()
            for r in rows:
                yield _event(r)
            if len(rows) < _PAGE:
                return
            last = int(rows[-1][0])

    def count(self) -> int:
        """How many events are stored."""
        with self._lock:
            return int(self._conn.execute("SELECT count(*) FROM audit_events").fetchone()[0])

    def close(self) -> None:
        """Close the connection."""
        with self._lock:
            self._conn.close()
