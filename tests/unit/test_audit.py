"""The audit hash chain and its verifier, on in-memory events."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import itertools
from typing import Any

import orjson
import pytest

from bastion.telemetry.audit import (
    GENESIS_HASH,
    AuditDraft,
    AuditEvent,
    chain,
    chain_all,
    export_jsonl,
    read_jsonl,
    verify,
)

N = 8


def drafts(n: int = N) -> list[AuditDraft]:
    kinds = ["admin.key.create", "request", "admin.policy.reload", "admin.key.revoke"]
    return [
        AuditDraft(
            kind=kinds[i % len(kinds)],
            actor=f"key-{i % 3}",
            tenant="acme" if i % 2 else None,
            request_id=f"req_{i}",
            data={"i": i, "tokens": {"in": 10 * i, "out": i}, "model": "chat-default"},
            ts=1_700_000_000.0 + i,
        )
        for i in range(n)
    ]


@pytest.fixture
def events() -> list[AuditEvent]:
    return chain_all(drafts())


def test_chain_links_and_numbers_from_one(events: list[AuditEvent]) -> None:
    assert [e.seq for e in events] == list(range(1, N + 1))
    assert events[0].prev_hash == GENESIS_HASH == "0" * 64
    for a, b in itertools.pairwise(events):
        assert b.prev_hash == a.hash


def test_hash_is_sha256_of_sorted_canonical_json(events: list[AuditEvent]) -> None:
    e = events[2]
    body = {k: v for k, v in e.to_dict().items() if k != "hash"}
    want = hashlib.sha256(orjson.dumps(body, option=orjson.OPT_SORT_KEYS)).hexdigest()
    assert e.hash == want
    assert chain(e.prev_hash, e.seq, drafts()[2]) == e


def test_untouched_chain_verifies(events: list[AuditEvent]) -> None:
    r = verify(events)
    assert (r.ok, r.checked, r.first_bad_seq, r.reason) == (True, N, None, None)
    assert r.head_hash == events[-1].hash


def test_empty_log_verifies() -> None:
    r = verify([])
    assert r.ok and r.checked == 0 and r.head_hash == GENESIS_HASH


def _other(value: Any) -> Any:
    """A different value of the same kind, for tampering."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, int | float):
        return value + 1000
    if isinstance(value, dict):
        return {**value, "i": -1}
    if value is None:
        return "someone"
    return value[:-1] + ("0" if value[-1] != "0" else "1")


FIELDS = [f.name for f in dataclasses.fields(AuditEvent)]


@pytest.mark.parametrize("field", FIELDS)
@pytest.mark.parametrize("index", [0, 3, N - 1])
def test_modifying_any_field_is_detected(events: list[AuditEvent], field: str, index: int) -> None:
    bad = list(events)
    bad[index] = dataclasses.replace(bad[index], **{field: _other(getattr(bad[index], field))})
    r = verify(bad)
    assert not r.ok
    assert r.first_bad_seq == index + 1
    assert r.checked == index
    assert r.reason is not None and str(index + 1) in r.reason


def test_modified_content_names_the_hash(events: list[AuditEvent]) -> None:
    bad = list(events)
    bad[6] = dataclasses.replace(bad[6], data={**bad[6].data, "tokens": 0})
    assert verify(bad).reason == "event 7: hash does not match its content"


def test_rehashed_forgery_breaks_the_next_link(events: list[AuditEvent]) -> None:
    forged = chain(events[3].prev_hash, 4, dataclasses.replace(drafts()[3], kind="request"))
    bad = [*events[:3], forged, *events[4:]]
    r = verify(bad)
    assert (r.ok, r.first_bad_seq) == (False, 5)
    assert r.reason == "event 5: prev_hash does not match the hash of event 4"


@pytest.mark.parametrize(
    ("deleted", "reason"),
    [
        (0, "event 1 missing: the log starts at seq 2"),
        (4, "event 5 missing: seq jumps from 4 to 6"),
        (N - 2, f"event {N - 1} missing: seq jumps from {N - 2} to {N}"),
    ],
)
def test_deleting_an_event_is_detected(events: list[AuditEvent], deleted: int, reason: str) -> None:
    r = verify(events[:deleted] + events[deleted + 1 :])
    assert (r.ok, r.first_bad_seq, r.reason, r.checked) == (False, deleted + 1, reason, deleted)


def test_deleting_several_events_names_the_range(events: list[AuditEvent]) -> None:
    r = verify(events[:2] + events[5:])
    assert (r.first_bad_seq, r.reason) == (3, "events 3..5 missing: seq jumps from 2 to 6")


def test_deleting_and_renumbering_is_detected(events: list[AuditEvent]) -> None:
    tail = [dataclasses.replace(e, seq=e.seq - 1) for e in events[4:]]
    r = verify(events[:3] + tail)
    assert (r.ok, r.first_bad_seq) == (False, 4)


@pytest.mark.parametrize(("a", "b"), [(0, 1), (2, 3), (2, 6), (N - 2, N - 1)])
def test_swapping_two_events_is_detected(events: list[AuditEvent], a: int, b: int) -> None:
    bad = list(events)
    bad[a], bad[b] = bad[b], bad[a]
    r = verify(bad)
    assert (r.ok, r.first_bad_seq) == (False, a + 1)
    after = bad[a + 1].seq  # the event that follows the misplaced one
    assert r.reason == f"event {a + 1} out of order: seq {b + 1} comes before {after}"


def test_duplicated_event_is_detected(events: list[AuditEvent]) -> None:
    r = verify([*events[:4], events[3], *events[4:]])
    assert (r.ok, r.first_bad_seq) == (False, 5)
    assert r.reason == "event 5 out of order: seq 4 comes after 4"


def test_a_tail_verifies_from_a_trusted_anchor(events: list[AuditEvent]) -> None:
    assert verify(events[3:], after_seq=3, prev_hash=events[2].hash).ok
    r = verify(events[3:], after_seq=3, prev_hash=GENESIS_HASH)
    assert (r.ok, r.first_bad_seq) == (False, 4)


def test_draft_normalises_data_to_its_json_form() -> None:
    d = AuditDraft(kind="request", data={"models": ("a", "b")}, ts=5)
    assert d.data == {"models": ["a", "b"]}
    assert isinstance(d.ts, float)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"kind": ""},
        {"kind": "request", "data": {"s": {1, 2}}},
        {"kind": "request", "data": {1: "non-str key"}},
        {"kind": "request", "ts": float("nan")},
        {"kind": "request", "actor": 7},
    ],
)
def test_draft_that_cannot_be_stored_fails_at_its_source(kwargs: dict[str, Any]) -> None:
    with pytest.raises((ValueError, TypeError)):
        AuditDraft(**kwargs)


def test_export_jsonl_round_trips(events: list[AuditEvent]) -> None:
    out = io.StringIO()
    assert export_jsonl(events, out) == N
    lines = out.getvalue().splitlines()
    assert len(lines) == N
    assert orjson.loads(lines[0])["hash"] == events[0].hash
    back = list(read_jsonl(io.StringIO(out.getvalue())))
    assert back == events
    assert verify(back).ok
