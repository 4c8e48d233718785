"""The prompt registry in SQL (SQLite or PostgreSQL).

Implements :class:`bastion.prompts.ports.PromptStore` over four tables:
``prompts`` (one row per tenant and name, with its latest version number),
``prompt_versions`` (immutable: rows are only ever inserted),
``prompt_labels`` (where each label points now) and ``prompt_label_events``
(every move of every label, numbered per label). Numbering a new version and
moving a label each run in one transaction under a per-prompt lock (SQLite:
the database write lock; PostgreSQL: an advisory lock), so concurrent
writers never hand out one version number twice or lose a label move.
"""

from __future__ import annotations

import time
from typing import Any

import orjson

from bastion.core.errors import Conflict, NotFound
from bastion.prompts.ports import LabelAction, LabelEvent, PromptSummary, PromptVersion
from bastion.store.sql.database import Database, Row

_VERSION_COLS = (
    "tenant_id, name, version, messages, variables, model, params, eval_suites, "
    "redteam_suites, description, content_hash, created_at, created_by"
)
_EVENT_COLS = "tenant_id, name, label, seq, from_version, to_version, action, actor, reason, ts"


def _json(v: Any) -> str:
    return orjson.dumps(v).decode()  # key order kept: messages read back as written


def _version(r: Row) -> PromptVersion:
    (tenant, name, version, messages, variables, model, params, evals, redteam, desc, hsh) = r[:11]
    created_at, created_by = r[11], r[12]
    return PromptVersion(
        tenant_id=str(tenant),
        name=str(name),
        version=int(version),
        messages=tuple(orjson.loads(messages)),
        variables=orjson.loads(variables),
        model=str(model),
        params=orjson.loads(params),
        eval_suites=tuple(orjson.loads(evals)),
        redteam_suites=tuple(orjson.loads(redteam)),
        description=str(desc),
        content_hash=str(hsh),
        created_at=float(created_at),
        created_by=None if created_by is None else str(created_by),
    )


def _event(r: Row) -> LabelEvent:
    tenant, name, label, seq, from_v, to_v, action, actor, reason, ts = r
    return LabelEvent(
        tenant_id=str(tenant),
        name=str(name),
        label=str(label),
        seq=int(seq),
        from_version=None if from_v is None else int(from_v),
        to_version=int(to_v),
        action=action,
        actor=None if actor is None else str(actor),
        reason=None if reason is None else str(reason),
        ts=float(ts),
    )


class SqlPromptStore:
    """The prompt store on a :class:`~bastion.store.sql.database.Database`."""

    def __init__(self, db: Database) -> None:
        self.db = db

    # ------------------------------------------------------------------ versions
    def add_version(self, draft: PromptVersion) -> tuple[PromptVersion, bool]:
        t, n = draft.tenant_id, draft.name
        with self.db.transaction(lock=f"bastion-prompt:{t}:{n}"):
            rows = self.db.query(
                "SELECT latest FROM prompts WHERE tenant_id = ? AND name = ?", (t, n)
            )
            latest = int(rows[0][0]) if rows else 0
            if latest:
                current = self.get_version(t, n, latest)
                if current is not None and current.content_hash == draft.content_hash:
                    return current, False
            number = latest + 1
            self.db.execute(
                "INSERT INTO prompts (tenant_id, name, latest, created_at, updated_at) "
                "VALUES (?,?,?,?,?) ON CONFLICT (tenant_id, name) DO UPDATE "
                "SET latest = excluded.latest, updated_at = excluded.updated_at",
                (t, n, number, draft.created_at, draft.created_at),
            )
            self.db.execute(
                f"INSERT INTO prompt_versions ({_VERSION_COLS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (
                    t,
                    n,
                    number,
                    _json(list(draft.messages)),
                    _json(draft.variables),
                    draft.model,
                    _json(draft.params),
                    _json(list(draft.eval_suites)),
                    _json(list(draft.redteam_suites)),
                    draft.description,
                    draft.content_hash,
                    draft.created_at,
                    draft.created_by,
                ),
            )
        stored = self.get_version(t, n, number)
        assert stored is not None
        return stored, True

    def get_version(self, tenant_id: str, name: str, version: int) -> PromptVersion | None:
        rows = self.db.query(
            f"SELECT {_VERSION_COLS} FROM prompt_versions "
            "WHERE tenant_id = ? AND name = ? AND version = ?",
            (tenant_id, name, version),
        )
        return _version(rows[0]) if rows else None

    def latest_version(self, tenant_id: str, name: str) -> PromptVersion | None:
        rows = self.db.query(
            f"SELECT {_VERSION_COLS} FROM prompt_versions "
            "WHERE tenant_id = ? AND name = ? ORDER BY version DESC LIMIT 1",
            (tenant_id, name),
        )
        return _version(rows[0]) if rows else None

    def list_versions(self, tenant_id: str, name: str) -> list[PromptVersion]:
        rows = self.db.query(
            f"SELECT {_VERSION_COLS} FROM prompt_versions "
            "WHERE tenant_id = ? AND name = ? ORDER BY version",
            (tenant_id, name),
        )
        return [_version(r) for r in rows]

    def list_prompts(self, tenant_id: str) -> list[PromptSummary]:
        rows = self.db.query(
            "SELECT name, latest, created_at, updated_at FROM prompts "
            "WHERE tenant_id = ? ORDER BY name",
            (tenant_id,),
        )
        labels: dict[str, dict[str, int]] = {}
        for name, label, version in self.db.query(
            "SELECT name, label, version FROM prompt_labels WHERE tenant_id = ? "
            "ORDER BY name, label",
            (tenant_id,),
        ):
            labels.setdefault(str(name), {})[str(label)] = int(version)
        return [
            PromptSummary(
                tenant_id=tenant_id,
                name=str(name),
                latest=int(latest),
                created_at=float(created),
                updated_at=float(updated),
                labels=labels.get(str(name), {}),
            )
            for name, latest, created, updated in rows
        ]

    # ------------------------------------------------------------------ labels
    def labels(self, tenant_id: str, name: str) -> dict[str, int]:
        rows = self.db.query(
            "SELECT label, version FROM prompt_labels WHERE tenant_id = ? AND name = ? "
            "ORDER BY label",
            (tenant_id, name),
        )
        return {str(label): int(v) for label, v in rows}

    def label_version(self, tenant_id: str, name: str, label: str) -> int | None:
        rows = self.db.query(
            "SELECT version FROM prompt_labels WHERE tenant_id = ? AND name = ? AND label = ?",
            (tenant_id, name, label),
        )
        return int(rows[0][0]) if rows else None

    def move_label(
        self,
        tenant_id: str,
        name: str,
        label: str,
        version: int,
        *,
        action: LabelAction,
        actor: str | None,
        reason: str | None,
        expect_from: int | None = None,
        ts: float | None = None,
    ) -> LabelEvent:
        now = time.time() if ts is None else ts
        t, n = tenant_id, name
        with self.db.transaction(lock=f"bastion-prompt:{t}:{n}"):
            if self.get_version(t, n, version) is None:
                raise NotFound(f"prompt {name!r} has no version {version}")
            current = self.label_version(t, n, label)
            if expect_from is not None and current != expect_from:
                raise Conflict(
                    f"label {label!r} of prompt {name!r} moved meanwhile "
                    f"(now at {current}, expected {expect_from}): try again"
                )
            rows = self.db.query(
                "SELECT max(seq) FROM prompt_label_events "
                "WHERE tenant_id = ? AND name = ? AND label = ?",
                (t, n, label),
            )
            seq = int(rows[0][0] or 0) + 1
            event = LabelEvent(t, n, label, seq, current, version, action, actor, reason, now)
            self.db.execute(
                f"INSERT INTO prompt_label_events ({_EVENT_COLS}) VALUES (?,?,?,?,?,?,?,?,?,?)",
                (t, n, label, seq, current, version, action, actor, reason, now),
            )
            self.db.execute(
                "INSERT INTO prompt_labels (tenant_id, name, label, version, updated_at, "
                "updated_by) VALUES (?,?,?,?,?,?) ON CONFLICT (tenant_id, name, label) "
                "DO UPDATE SET version = excluded.version, updated_at = excluded.updated_at, "
                "updated_by = excluded.updated_by",
                (t, n, label, version, now, actor),
            )
        return event

    def label_events(self, tenant_id: str, name: str, label: str | None = None) -> list[LabelEvent]:
        if label is None:
            rows = self.db.query(
                f"SELECT {_EVENT_COLS} FROM prompt_label_events "
                "WHERE tenant_id = ? AND name = ? ORDER BY ts, label, seq",
                (tenant_id, name),
            )
        else:
            rows = self.db.query(
                f"SELECT {_EVENT_COLS} FROM prompt_label_events "
                "WHERE tenant_id = ? AND name = ? AND label = ? ORDER BY seq",
                (tenant_id, name, label),
            )
        return [_event(r) for r in rows]

    def close(self) -> None:
        self.db.close()
