"""SqliteAuditStore on real SQLite files: round trip, tampering, concurrent appenders."""

from __future__ import annotations

import io
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from bastion.core.errors import InvalidRequest
from bastion.store.sql.database import SqliteDatabase
from bastion.store.sql.governance import SqlGovernanceStore
from bastion.store.sqlite import db as sqlite_db
from bastion.store.sqlite.audit import SqliteAuditStore
from bastion.store.sqlite.db import SCHEMA_VERSION, upgrade
from bastion.telemetry.audit import (
    GENESIS_HASH,
    AuditDraft,
    AuditSink,
    export_jsonl,
    read_jsonl,
    verify,
)
from bastion.telemetry.batch import BatchQueue


def draft(i: int, kind: str = "request") -> AuditDraft:
    return AuditDraft(
        kind=kind,
        actor="ops",
        tenant="acme",
        request_id=f"req_{i}",
        data={"i": i, "model": "chat-default", "usage": {"in": 12, "out": 3}, "ratio": 0.1 * i},
        ts=1_700_000_000.123456 + i,
    )


@pytest.fixture
def db(tmp_path: Path) -> Path:
    path = tmp_path / "data" / "bastion.db"
    assert upgrade(path) == (0, SCHEMA_VERSION)
    return path


@pytest.fixture
def store(db: Path) -> Iterator[SqliteAuditStore]:
    s = SqliteAuditStore(db)
    yield s
    s.close()


@pytest.fixture
def filled(store: SqliteAuditStore) -> SqliteAuditStore:
    store.append([draft(i) for i in range(3)])
    store.append([draft(i) for i in range(3, 10)])
    return store


def raw(db: Path, sql: str) -> None:
    conn = sqlite3.connect(db, isolation_level=None)
    try:
        conn.executescript(sql)
    finally:
        conn.close()


def test_it_is_an_audit_sink(store: SqliteAuditStore) -> None:
    sink: AuditSink = store
    assert sink.append([]) == []
    assert list(sink.events()) == []


def test_append_then_events_round_trips(store: SqliteAuditStore) -> None:
    first = store.append([draft(0, "admin.key.create"), draft(1)])
    more = store.append([draft(2, "admin.policy.reload")])
    assert [e.seq for e in first + more] == [1, 2, 3]
    assert first[0].prev_hash == GENESIS_HASH
    assert more[0].prev_hash == first[-1].hash
    assert list(store.events()) == first + more  # exactly what append returned
    assert list(store.events(since_seq=2)) == more
    assert store.count() == 3
    r = verify(store.events())
    assert (r.ok, r.checked, r.head_hash) == (True, 3, more[0].hash)


def test_events_pages_through_a_long_log(store: SqliteAuditStore) -> None:
    appended = store.append([draft(i) for i in range(1203)])
    assert list(store.events()) == appended
    assert [e.seq for e in store.events(since_seq=1200)] == [1201, 1202, 1203]
    assert verify(store.events()).ok


def test_update_is_detected(db: Path, filled: SqliteAuditStore) -> None:
    raw(db, """UPDATE audit_events SET data = '{"i": 4, "model": "gpt-4o"}' WHERE seq = 5""")
    r = verify(filled.events())
    assert (r.ok, r.first_bad_seq, r.checked) == (False, 5, 4)
    assert r.reason == "event 5: hash does not match its content"


@pytest.mark.parametrize(
    "assignment",
    ["actor = 'root'", "ts = ts + 1", "kind = 'admin.key.revoke'", "tenant = NULL", "data = 'x'"],
)
def test_any_column_update_is_detected(db: Path, filled: SqliteAuditStore, assignment: str) -> None:
    raw(db, f"UPDATE audit_events SET {assignment} WHERE seq = 7")
    assert verify(filled.events()).first_bad_seq == 7


def test_delete_is_detected(db: Path, filled: SqliteAuditStore) -> None:
    raw(db, "DELETE FROM audit_events WHERE seq = 4")
    r = verify(filled.events())
    assert (r.ok, r.first_bad_seq) == (False, 4)
    assert r.reason == "event 4 missing: seq jumps from 3 to 5"


def test_delete_of_the_first_event_is_detected(db: Path, filled: SqliteAuditStore) -> None:
    raw(db, "DELETE FROM audit_events WHERE seq = 1")
    r = verify(filled.events())
    assert (r.ok, r.first_bad_seq) == (False, 1)


def test_swapping_two_rows_seq_is_detected(db: Path, filled: SqliteAuditStore) -> None:
    raw(
        db,
        """
        UPDATE audit_events SET seq = -1 WHERE seq = 3;
        UPDATE audit_events SET seq = 3 WHERE seq = 6;
        UPDATE audit_events SET seq = 6 WHERE seq = -1;
        """,
    )
    r = verify(filled.events())
    assert (r.ok, r.first_bad_seq) == (False, 3)
    assert r.reason == "event 3: hash does not match its content"


def test_two_stores_appending_alternately_form_one_chain(db: Path) -> None:
    a, b = SqliteAuditStore(db), SqliteAuditStore(db)
    try:
        for i in range(10):
            (a if i % 2 == 0 else b).append([draft(2 * i), draft(2 * i + 1)])
        seen_by_a, seen_by_b = list(a.events()), list(b.events())
    finally:
        a.close()
        b.close()
    assert seen_by_a == seen_by_b
    assert [e.seq for e in seen_by_a] == list(range(1, 21))
    assert verify(seen_by_a).ok


def test_concurrent_appenders_on_separate_connections_form_one_chain(db: Path) -> None:
    stores = [SqliteAuditStore(db) for _ in range(4)]
    errors: list[BaseException] = []

    def work(s: SqliteAuditStore, n: int) -> None:
        try:
            for i in range(25):
                s.append([draft(1000 * n + i), draft(1000 * n + i + 500)])
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(s, n)) for n, s in enumerate(stores)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        assert errors == []
        r = verify(stores[0].events())
        assert (r.ok, r.checked) == (True, 4 * 25 * 2)
    finally:
        for s in stores:
            s.close()


def test_export_jsonl_writes_one_json_line_per_event(filled: SqliteAuditStore) -> None:
    out = io.StringIO()
    assert export_jsonl(filled.events(), out) == 10
    lines = out.getvalue().splitlines()
    assert len(lines) == 10
    rows = [orjson.loads(line) for line in lines]
    assert [r["seq"] for r in rows] == list(range(1, 11))
    assert set(rows[0]) == {
        "seq",
        "ts",
        "kind",
        "actor",
        "tenant",
        "request_id",
        "data",
        "prev_hash",
        "hash",
    }
    assert verify(read_jsonl(io.StringIO(out.getvalue()))).ok


async def test_batch_queue_feeds_the_store(store: SqliteAuditStore) -> None:
    q: BatchQueue[AuditDraft] = BatchQueue(store.append, max_batch=7, interval_s=3600)
    q.start()
    for i in range(30):
        await q.put(draft(i))
    assert await q.drain() == 0
    events = list(store.events())
    assert [e.request_id for e in events] == [f"req_{i}" for i in range(30)]
    assert verify(events).ok


def test_an_old_schema_is_refused_until_upgraded(tmp_path: Path) -> None:
    path = tmp_path / "bastion.db"
    conn = sqlite_db.connect(path)
    conn.executescript(f"{sqlite_db.MIGRATIONS[1]};PRAGMA user_version=1;")
    conn.close()
    with pytest.raises(InvalidRequest, match="bastion db upgrade"):
        SqliteAuditStore(path)
    with pytest.raises(InvalidRequest, match="bastion db upgrade"):
        SqlGovernanceStore(SqliteDatabase(path))
    assert upgrade(path) == (1, SCHEMA_VERSION)
    s = SqliteAuditStore(path)
    try:
        assert s.append([draft(0)])[0].seq == 1
    finally:
        s.close()
    keys = SqlGovernanceStore(SqliteDatabase(path))
    try:
        assert keys.create("after-upgrade")[0].tenant_id == "tnt_default"
    finally:
        keys.close()
