"""Audit events: a tamper-evident, append-only log (the port and its pure logic).

Every event carries ``seq`` (1-based, gap-free), ``prev_hash`` (the hash of
event ``seq - 1``; 64 zeros for the first) and ``hash``::

    hash = sha256(canonical_json({seq, ts, kind, actor, tenant, request_id, data, prev_hash}))

where canonical JSON is orjson with sorted keys. Changing any field of an
event breaks its own hash; deleting, inserting or reordering events breaks
the ``seq`` run and the ``prev_hash`` links. :func:`verify` reports the first
place the chain breaks.

A chain cannot show that its *newest* events were cut off, nor a tail
rewritten end to end by someone able to rehash it; for that, keep the
``head_hash`` of a :func:`verify` (or of the last exported event) somewhere
else and compare later.

Events hold metadata only (who, what, which request, counts, ids), never
prompt or response content and never secrets. Producers build an
:class:`AuditDraft` (validated when built, so a bad one fails at its source
and never poisons a batch) and hand it to an :class:`AuditSink`, normally
through a :class:`bastion.telemetry.batch.BatchQueue`, off the request path.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import IO, Any, Protocol

import orjson

GENESIS_HASH = "0" * 64
"""The ``prev_hash`` of the first event."""


def _normalise(data: dict[str, Any]) -> dict[str, Any]:
    """``data`` as it reads back from JSON (tuples become lists, and so on)."""
    if not isinstance(data, dict):
        raise TypeError(f"audit data must be a dict, not {type(data).__name__}")
    try:
        out = orjson.loads(orjson.dumps(data))
    except orjson.JSONEncodeError as exc:
        raise ValueError(f"audit data must be JSON-serialisable: {exc}") from None
    assert isinstance(out, dict)
    return out


@dataclass(frozen=True, slots=True)
class AuditDraft:
    """An event before the sink numbers and chains it.

    ``data`` is normalised to what JSON reads back (so a stored event hashes the
    same as the one appended); a draft that cannot be stored raises
    :class:`ValueError` or :class:`TypeError` here, at its source.
    """

    kind: str
    actor: str | None = None
    tenant: str | None = None
    request_id: str | None = None
    data: dict[str, Any] = field(default_factory=dict)
    ts: float = field(default_factory=time.time)

    def __post_init__(self) -> None:
        if not isinstance(self.kind, str) or not self.kind:
            raise ValueError("audit kind must be a non-empty string")
        for name in ("actor", "tenant", "request_id"):
            if not isinstance(getattr(self, name), str | None):
                raise TypeError(f"audit {name} must be a string or None")
        ts = float(self.ts)
        if not math.isfinite(ts):
            raise ValueError("audit ts must be a finite number")
        object.__setattr__(self, "ts", ts)
        object.__setattr__(self, "data", _normalise(self.data))


@dataclass(frozen=True, slots=True)
class AuditEvent:
    """A stored, numbered and chained event. Treat ``data`` as read-only."""

    seq: int
    ts: float
    kind: str
    actor: str | None
    tenant: str | None
    request_id: str | None
    data: dict[str, Any]
    prev_hash: str
    hash: str

    def to_dict(self) -> dict[str, Any]:
        """All fields as a JSON-ready dict (the export format)."""
        return {
            "seq": self.seq,
            "ts": self.ts,
            "kind": self.kind,
            "actor": self.actor,
            "tenant": self.tenant,
            "request_id": self.request_id,
            "data": self.data,
            "prev_hash": self.prev_hash,
            "hash": self.hash,
        }


def event_hash(
    *,
    seq: int,
    ts: float,
    kind: str,
    actor: str | None,
    tenant: str | None,
    request_id: str | None,
    data: dict[str, Any],
    prev_hash: str,
) -> str:
    """The hex SHA-256 of the canonical JSON of an event's fields (all but ``hash``)."""
    body = {
        "seq": seq,
        "ts": ts,
        "kind": kind,
        "actor": actor,
        "tenant": tenant,
        "request_id": request_id,
        "data": data,
        "prev_hash": prev_hash,
    }
    return hashlib.sha256(orjson.dumps(body, option=orjson.OPT_SORT_KEYS)).hexdigest()


def content_hash(event: AuditEvent) -> str:
    """What ``event.hash`` must be, recomputed from its other fields."""
    try:
        return event_hash(
            seq=event.seq,
            ts=event.ts,
            kind=event.kind,
            actor=event.actor,
            tenant=event.tenant,
            request_id=event.request_id,
            data=event.data,
            prev_hash=event.prev_hash,
        )
    except orjson.JSONEncodeError:
        return ""  # unserialisable content can never match a stored hash


def chain(prev_hash: str, seq: int, draft: AuditDraft) -> AuditEvent:
    """Number ``draft`` as ``seq`` and link it to ``prev_hash``."""
    unhashed = AuditEvent(
        seq=seq,
        ts=draft.ts,
        kind=draft.kind,
        actor=draft.actor,
        tenant=draft.tenant,
        request_id=draft.request_id,
        data=draft.data,
        prev_hash=prev_hash,
        hash="",
    )
    return replace(unhashed, hash=content_hash(unhashed))


def chain_all(
    drafts: Iterable[AuditDraft], *, after_seq: int = 0, prev_hash: str = GENESIS_HASH
) -> list[AuditEvent]:
    """Chain ``drafts`` in order after event ``after_seq`` whose hash is ``prev_hash``."""
    out: list[AuditEvent] = []
    for i, d in enumerate(drafts, start=after_seq + 1):
        ev = chain(prev_hash, i, d)
        out.append(ev)
        prev_hash = ev.hash
    return out


@dataclass(frozen=True, slots=True)
class VerifyResult:
    """The outcome of :func:`verify`.

    ``checked`` counts the events found intact before the first break;
    ``first_bad_seq`` is the lowest seq whose event is missing, altered or out
    of place; ``head_hash`` is the hash of the last intact event (keep it
    elsewhere to detect a truncated or rewritten tail later).
    """

    ok: bool
    checked: int
    first_bad_seq: int | None = None
    reason: str | None = None
    head_hash: str = GENESIS_HASH


def _missing(expected: int, last: int, seq: int) -> str:
    which = f"event {expected}" if seq == expected + 1 else f"events {expected}..{seq - 1}"
    if last == 0:
        return f"{which} missing: the log starts at seq {seq}"
    return f"{which} missing: seq jumps from {last} to {seq}"


def verify(
    events: Iterable[AuditEvent], *, after_seq: int = 0, prev_hash: str = GENESIS_HASH
) -> VerifyResult:
    """Check that ``events`` (in the order given) form one intact chain.

    By default the chain must start at seq 1 from :data:`GENESIS_HASH`; pass
    ``after_seq``/``prev_hash`` of a trusted earlier event to check a tail.
    Stops at the first break and names it in ``reason``.
    """
    it = iter(events)
    last, head, checked = after_seq, prev_hash, 0

    def bad(seq: int, reason: str) -> VerifyResult:
        return VerifyResult(False, checked, seq, reason, head)

    for ev in it:
        expected = last + 1
        if ev.seq > expected:
            nxt = next(it, None)
            if nxt is not None and nxt.seq < ev.seq:
                return bad(
                    expected, f"event {expected} out of order: seq {ev.seq} comes before {nxt.seq}"
                )
            return bad(expected, _missing(expected, last, ev.seq))
        if ev.seq < expected:
            return bad(expected, f"event {expected} out of order: seq {ev.seq} comes after {last}")
        if content_hash(ev) != ev.hash:
            return bad(ev.seq, f"event {ev.seq}: hash does not match its content")
        if ev.prev_hash != head:
            link = "the chain start" if last == 0 else f"the hash of event {last}"
            return bad(ev.seq, f"event {ev.seq}: prev_hash does not match {link}")
        last, head, checked = ev.seq, ev.hash, checked + 1
    return VerifyResult(True, checked, None, None, head)


class AuditSink(Protocol):
    """Where audit events are kept (SQLite in embedded mode). Off the hot path only."""

    def append(self, drafts: Sequence[AuditDraft]) -> list[AuditEvent]:
        """Number, chain and persist ``drafts`` atomically and in order; return the events."""
        ...

    def events(self, since_seq: int = 0) -> Iterator[AuditEvent]:
        """Stored events with ``seq > since_seq``, in seq order."""
        ...

    def close(self) -> None:
        """Release the sink's resources."""
        ...


def export_jsonl(events: Iterable[AuditEvent], out: IO[str]) -> int:
    """Write one JSON object per event per line to ``out``; returns the count."""
    n = 0
    for ev in events:
        out.write(orjson.dumps(ev.to_dict()).decode())
        out.write("\n")
        n += 1
    return n


def read_jsonl(inp: IO[str]) -> Iterator[AuditEvent]:
    """Read events written by :func:`export_jsonl` (blank lines skipped), e.g. to verify."""
    for line in inp:
        if line.strip():
            d = orjson.loads(line)
            yield AuditEvent(
                seq=int(d["seq"]),
                ts=float(d["ts"]),
                kind=str(d["kind"]),
                actor=d.get("actor"),
                tenant=d.get("tenant"),
                request_id=d.get("request_id"),
                data=d["data"],
                prev_hash=str(d["prev_hash"]),
                hash=str(d["hash"]),
            )
