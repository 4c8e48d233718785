"""SqlAuditStore conformance: one hash chain on SQLite and PostgreSQL, even under contention."""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest

from bastion.store.sql.audit import SqlAuditStore
from bastion.store.sql.database import Database
from bastion.telemetry.audit import GENESIS_HASH, AuditDraft, AuditSink, verify


def draft(i: int, kind: str = "request", tenant: str | None = "acme") -> AuditDraft:
    return AuditDraft(
        kind=kind,
        actor="ops",
        tenant=tenant,
        request_id=f"req_{i}",
        data={
            "i": i,
            "model": "chat-default",
            "usage": {"in": 12, "out": 3},
            "ratio": 0.1 * i,
            "note": "100% sure? 'quoted' \u00e9\u2603",
            "big": 2**53 + i,
            "none": None,
        },
        ts=1_700_000_000.123456 + i / 7,
    )


@pytest.fixture
def store(db: Database) -> SqlAuditStore:
    return SqlAuditStore(db)


@pytest.fixture
def filled(store: SqlAuditStore) -> SqlAuditStore:
    store.append([draft(i) for i in range(3)])
    store.append([draft(i, tenant=None if i % 2 else "globex") for i in range(3, 10)])
    return store


def test_it_is_an_audit_sink(store: SqlAuditStore) -> None:
    sink: AuditSink = store
    assert sink.append([]) == []
    assert list(sink.events()) == []
    assert store.count() == 0


def test_append_chains_events(store: SqlAuditStore) -> None:
    first = store.append([draft(0, "admin.key.create"), draft(1)])
    more = store.append([draft(2, "admin.policy.reload")])
    events = first + more
    assert [e.seq for e in events] == [1, 2, 3]
    assert first[0].prev_hash == GENESIS_HASH
    assert [e.prev_hash for e in events[1:]] == [e.hash for e in events[:-1]]
    assert list(store.events()) == events  # exactly what append returned, ts and data included
    assert list(store.events(since_seq=2)) == more
    assert store.count() == 3
    r = verify(store.events())
    assert (r.ok, r.checked, r.head_hash) == (True, 3, more[0].hash)


def test_events_pages_through_a_long_log(store: SqlAuditStore) -> None:
    appended = store.append([draft(i) for i in range(1203)])
    assert list(store.events()) == appended
    assert [e.seq for e in store.events(since_seq=1200)] == [1201, 1202, 1203]
    assert verify(store.events()).ok


def test_events_filter_by_tenant(filled: SqlAuditStore) -> None:
    every = list(filled.events())
    acme = list(filled.events(tenant="acme"))
    globex = list(filled.events(tenant="globex"))
    assert [e.seq for e in acme] == [1, 2, 3]
    assert [e.seq for e in globex] == [5, 7, 9]
    assert acme + globex == [e for e in every if e.tenant is not None]
    assert [e.seq for e in filled.events(since_seq=5, tenant="globex")] == [7, 9]
    assert list(filled.events(tenant="nobody")) == []


def test_an_update_is_detected(db: Database, filled: SqlAuditStore) -> None:
    changed = db.execute(
        'UPDATE audit_events SET data = \'{"i": 4, "model": "gpt-4o?"}\' WHERE seq = ?', (5,)
    )
    assert changed == 1
    r = verify(filled.events())
    assert (r.ok, r.first_bad_seq, r.checked) == (False, 5, 4)
    assert r.reason == "event 5: hash does not match its content"


@pytest.mark.parametrize(
    "assignment",
    [
        "actor = 'root'",
        "ts = ts + 1",
        "kind = 'admin.key.revoke'",
        "tenant = NULL",
        "request_id = 'req_x'",
        "data = 'x'",
        "data = '[1, 2]'",
        "prev_hash = hash",
        "hash = prev_hash",
    ],
)
def test_any_column_update_is_detected(
    db: Database, filled: SqlAuditStore, assignment: str
) -> None:
    assert db.execute(f"UPDATE audit_events SET {assignment} WHERE seq = 7") == 1
    r = verify(filled.events())
    assert (r.ok, r.first_bad_seq) == (False, 7)


def test_a_deletion_is_detected(db: Database, filled: SqlAuditStore) -> None:
    assert db.execute("DELETE FROM audit_events WHERE seq = ?", (4,)) == 1
    r = verify(filled.events())
    assert (r.ok, r.first_bad_seq) == (False, 4)
    assert r.reason == "event 4 missing: seq jumps from 3 to 5"


def test_deleting_the_first_event_is_detected(db: Database, filled: SqlAuditStore) -> None:
    db.execute("DELETE FROM audit_events WHERE seq = 1")
    r = verify(filled.events())
    assert (r.ok, r.first_bad_seq) == (False, 1)


def test_two_instances_appending_alternately_form_one_chain(
    store: SqlAuditStore, open_db: Callable[[], Database]
) -> None:
    other = SqlAuditStore(open_db())
    for i in range(10):
        (store if i % 2 == 0 else other).append([draft(2 * i), draft(2 * i + 1)])
    seen = list(store.events())
    assert seen == list(other.events())
    assert [e.seq for e in seen] == list(range(1, 21))
    assert [e.request_id for e in seen] == [f"req_{i}" for i in range(20)]
    assert verify(seen).ok


def test_concurrent_appends_from_two_connections_form_one_chain(
    store: SqlAuditStore, open_db: Callable[[], Database]
) -> None:
    stores = [SqlAuditStore(open_db()), SqlAuditStore(open_db())]
    errors: list[BaseException] = []
    returned: list[list[int]] = [[], []]
    start = threading.Barrier(2)

    def work(n: int) -> None:
        try:
            start.wait()
            for b in range(50):
                batch = [draft(10_000 * n + 10 * b + j, tenant=f"t{n}") for j in range(3)]
                events = stores[n].append(batch)
                returned[n].extend(e.seq for e in events)
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    events = list(store.events())
    r = verify(events)
    assert (r.ok, r.checked) == (True, 300)
    assert [e.seq for e in events] == list(range(1, 301))
    assert sorted(returned[0] + returned[1]) == list(range(1, 301))
    for n in range(2):
        mine = [e for e in events if e.tenant == f"t{n}"]
        assert [e.seq for e in mine] == returned[n]
        assert [e.request_id for e in mine] == [
            f"req_{10_000 * n + 10 * b + j}" for b in range(50) for j in range(3)
        ]
        for i in range(0, 150, 3):  # each batch is contiguous
            assert mine[i + 2].seq - mine[i].seq == 2
