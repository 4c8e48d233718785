"""Tenants, teams, keys and budgets in SQL (SQLite or PostgreSQL).

Implements :class:`bastion.gateway.tenancy.GovernanceStore`. Every write bumps
``meta.governance_version`` in the same transaction, so :meth:`version` (one
indexed read, polled about once a second by each replica) tells every
process, on any host, that its in-memory snapshot is stale.
"""

from __future__ import annotations

import builtins
import json
import time
import uuid
from collections.abc import Iterable
from dataclasses import replace
from typing import Any

from bastion.core.errors import InvalidRequest, NotFound
from bastion.core.secrets import hash_key, new_key
from bastion.gateway.auth import KeyRecord
from bastion.gateway.tenancy import (
    DEFAULT_TENANT,
    PERIODS,
    ROLES,
    SCOPES,
    Budget,
    Snapshot,
    Team,
    Tenant,
)
from bastion.store.sql.database import Database, Row, integrity_errors

_KEY_COLS = (
    "id, name, hash, prefix, models, role, tenant_id, team_id, owner, rpm, tpm, "
    "created_at, expires_at, revoked_at"
)
_TENANT_COLS = "id, name, models, rpm, tpm, created_at"
_TEAM_COLS = "id, tenant_id, name, rpm, tpm, created_at"
_BUDGET_COLS = "id, scope, scope_id, tenant_id, period, usd, tokens, mode, created_at"
# An id or a name may match two rows (one's name is the other's id): the id wins.
_ID_FIRST = "ORDER BY CASE WHEN id = ? THEN 0 ELSE 1 END LIMIT 1"


def _opt_int(v: Any) -> int | None:
    return None if v is None else int(v)


def _opt_float(v: Any) -> float | None:
    return None if v is None else float(v)


def _key(r: Row) -> KeyRecord:
    (id_, name, hsh, prefix, models, role, tenant, team, owner, rpm, tpm, created, exp, rev) = r
    return KeyRecord(
        id=str(id_),
        name=str(name),
        hash=str(hsh),
        prefix=str(prefix),
        models=tuple(json.loads(str(models))),
        role=role,
        tenant_id=tenant,
        team_id=team,
        owner=owner,
        rpm=_opt_int(rpm),
        tpm=_opt_int(tpm),
        created_at=float(created),
        expires_at=_opt_float(exp),
        revoked_at=_opt_float(rev),
    )


def _tenant(r: Row) -> Tenant:
    id_, name, models, rpm, tpm, created = r
    return Tenant(
        id=str(id_),
        name=str(name),
        models=tuple(json.loads(str(models))),
        rpm=_opt_int(rpm),
        tpm=_opt_int(tpm),
        created_at=float(created),
    )


def _team(r: Row) -> Team:
    id_, tenant, name, rpm, tpm, created = r
    return Team(str(id_), str(tenant), str(name), _opt_int(rpm), _opt_int(tpm), float(created))


def _budget(r: Row) -> Budget:
    id_, scope, scope_id, tenant, period, usd, tokens, mode, created = r
    return Budget(
        id=str(id_),
        scope=scope,
        scope_id=str(scope_id),
        tenant_id=str(tenant),
        period=period,
        usd=_opt_float(usd),
        tokens=_opt_int(tokens),
        mode=mode,
        created_at=float(created),
    )


def _check_limit(name: str, v: int | None) -> None:
    if v is not None and v < 0:
        raise InvalidRequest(f"{name} must not be negative", param=name)


class SqlGovernanceStore:
    """The governance store on a :class:`~bastion.store.sql.database.Database`."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self._dupe = integrity_errors()

    def _bump(self) -> None:
        self.db.execute("UPDATE meta SET value = value + 1 WHERE key = 'governance_version'")

    # ------------------------------------------------------------------ tenants
    def create_tenant(
        self,
        name: str,
        *,
        models: Iterable[str] = ("*",),
        rpm: int | None = None,
        tpm: int | None = None,
    ) -> Tenant:
        _check_limit("rpm", rpm)
        _check_limit("tpm", tpm)
        t = Tenant(
            id="tnt_" + uuid.uuid4().hex[:12],
            name=name,
            models=tuple(models) or ("*",),
            rpm=rpm,
            tpm=tpm,
            created_at=time.time(),
        )
        try:
            with self.db.transaction():
                self.db.execute(
                    f"INSERT INTO tenants ({_TENANT_COLS}) VALUES (?,?,?,?,?,?)",
                    (t.id, t.name, json.dumps(list(t.models)), t.rpm, t.tpm, t.created_at),
                )
                self._bump()
        except self._dupe:
            raise InvalidRequest(f"a tenant named {name!r} exists", param="name") from None
        return t

    def update_tenant(
        self,
        id_or_name: str,
        *,
        models: Iterable[str] | None = None,
        rpm: int | None = None,
        tpm: int | None = None,
    ) -> Tenant:
        _check_limit("rpm", rpm)
        _check_limit("tpm", tpm)
        with self.db.transaction():
            t = self.get_tenant(id_or_name)
            new_models = t.models if models is None else (tuple(models) or ("*",))
            self.db.execute(
                "UPDATE tenants SET models = ?, rpm = ?, tpm = ? WHERE id = ?",
                (json.dumps(list(new_models)), rpm, tpm, t.id),
            )
            self._bump()
        return Tenant(t.id, t.name, new_models, rpm, tpm, t.created_at)

    def get_tenant(self, id_or_name: str) -> Tenant:
        rows = self.db.query(
            f"SELECT {_TENANT_COLS} FROM tenants WHERE id = ? OR name = ? {_ID_FIRST}",
            (id_or_name, id_or_name, id_or_name),
        )
        if not rows:
            raise NotFound(f"no tenant {id_or_name!r}")
        return _tenant(rows[0])

    def list_tenants(self) -> list[Tenant]:
        rows = self.db.query(f"SELECT {_TENANT_COLS} FROM tenants ORDER BY created_at, name")
        return [_tenant(r) for r in rows]

    # ------------------------------------------------------------------ teams
    def create_team(
        self, tenant_id: str, name: str, *, rpm: int | None = None, tpm: int | None = None
    ) -> Team:
        _check_limit("rpm", rpm)
        _check_limit("tpm", tpm)
        tenant = self.get_tenant(tenant_id)
        team = Team("team_" + uuid.uuid4().hex[:12], tenant.id, name, rpm, tpm, time.time())
        try:
            with self.db.transaction():
                self.db.execute(
                    f"INSERT INTO teams ({_TEAM_COLS}) VALUES (?,?,?,?,?,?)",
                    (team.id, team.tenant_id, team.name, rpm, tpm, team.created_at),
                )
                self._bump()
        except self._dupe:
            raise InvalidRequest(
                f"tenant {tenant.name!r} has a team named {name!r}", param="name"
            ) from None
        return team

    def get_team(self, tenant_id: str, id_or_name: str) -> Team:
        rows = self.db.query(
            f"SELECT {_TEAM_COLS} FROM teams WHERE tenant_id = ? AND (id = ? OR name = ?) "
            f"{_ID_FIRST}",
            (tenant_id, id_or_name, id_or_name, id_or_name),
        )
        if not rows:
            raise NotFound(f"no team {id_or_name!r} in this tenant")
        return _team(rows[0])

    def list_teams(self, tenant_id: str | None = None) -> list[Team]:
        if tenant_id is None:
            rows = self.db.query(f"SELECT {_TEAM_COLS} FROM teams ORDER BY created_at, id")
        else:
            rows = self.db.query(
                f"SELECT {_TEAM_COLS} FROM teams WHERE tenant_id = ? ORDER BY created_at, id",
                (tenant_id,),
            )
        return [_team(r) for r in rows]

    # ------------------------------------------------------------------ keys
    def create(
        self,
        name: str,
        models: Iterable[str] = ("*",),
        *,
        role: str | None = None,
        tenant_id: str | None = DEFAULT_TENANT,
        team_id: str | None = None,
        owner: str | None = None,
        rpm: int | None = None,
        tpm: int | None = None,
        expires_at: float | None = None,
    ) -> tuple[KeyRecord, str]:
        if role is not None and role not in ROLES:
            raise InvalidRequest(f"role must be one of {', '.join(ROLES)}", param="role")
        if tenant_id is None and role != "admin":
            raise InvalidRequest("only a platform admin key may have no tenant", param="tenant")
        _check_limit("rpm", rpm)
        _check_limit("tpm", tpm)
        if tenant_id is not None:
            tenant_id = self.get_tenant(tenant_id).id
            if team_id is not None:
                team_id = self.get_team(tenant_id, team_id).id
        elif team_id is not None:
            raise InvalidRequest("a key without a tenant cannot have a team", param="team")
        secret = new_key()
        rec = KeyRecord(
            id="key_" + uuid.uuid4().hex[:16],
            name=name,
            hash=hash_key(secret),
            prefix=secret[:8],
            models=tuple(models) or ("*",),
            role=role,
            tenant_id=tenant_id,
            team_id=team_id,
            owner=owner,
            rpm=rpm,
            tpm=tpm,
            created_at=time.time(),
            expires_at=expires_at,
        )
        try:
            with self.db.transaction():
                self.db.execute(
                    f"INSERT INTO keys ({_KEY_COLS}, admin) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                    (
                        rec.id,
                        rec.name,
                        rec.hash,
                        rec.prefix,
                        json.dumps(list(rec.models)),
                        rec.role,
                        rec.tenant_id,
                        rec.team_id,
                        rec.owner,
                        rec.rpm,
                        rec.tpm,
                        rec.created_at,
                        rec.expires_at,
                        None,
                        int(rec.admin),
                    ),
                )
                self._bump()
        except self._dupe:
            raise InvalidRequest(f"an active key named {name!r} exists", param="name") from None
        return rec, secret

    def get_key(self, id_or_name: str) -> KeyRecord:
        rows = self.db.query(
            f"SELECT {_KEY_COLS} FROM keys WHERE (id = ? OR name = ?) AND revoked_at IS NULL "
            f"{_ID_FIRST}",
            (id_or_name, id_or_name, id_or_name),
        )
        if not rows:
            raise NotFound(f"no active key {id_or_name!r}")
        return _key(rows[0])

    def list(self, include_revoked: bool = False, tenant_id: str | None = None) -> list[KeyRecord]:
        where, params = [], []
        if not include_revoked:
            where.append("revoked_at IS NULL")
        if tenant_id is not None:
            where.append("tenant_id = ?")
            params.append(tenant_id)
        clause = f" WHERE {' AND '.join(where)}" if where else ""
        rows = self.db.query(
            f"SELECT {_KEY_COLS} FROM keys{clause} ORDER BY created_at, id", params
        )
        return [_key(r) for r in rows]

    def revoke(self, id_or_name: str) -> KeyRecord:
        with self.db.transaction():
            rec = self.get_key(id_or_name)
            now = time.time()
            self.db.execute("UPDATE keys SET revoked_at = ? WHERE id = ?", (now, rec.id))
            self._bump()
        return replace(rec, revoked_at=now)

    # ------------------------------------------------------------------ budgets
    def set_budget(
        self,
        scope: str,
        scope_id: str,
        tenant_id: str,
        period: str,
        *,
        usd: float | None = None,
        tokens: int | None = None,
        mode: str = "hard",
    ) -> Budget:
        if scope not in SCOPES:
            raise InvalidRequest(f"scope must be one of {', '.join(SCOPES)}", param="scope")
        if period not in PERIODS:
            raise InvalidRequest(f"period must be one of {', '.join(PERIODS)}", param="period")
        if mode not in ("hard", "soft"):
            raise InvalidRequest("mode must be hard or soft", param="mode")
        if usd is None and tokens is None:
            raise InvalidRequest("a budget needs usd, tokens or both", param="usd")
        if (usd is not None and usd < 0) or (tokens is not None and tokens < 0):
            raise InvalidRequest("a budget must not be negative", param="usd")
        b = Budget(
            id="bud_" + uuid.uuid4().hex[:12],
            scope=scope,  # type: ignore[arg-type]
            scope_id=scope_id,
            tenant_id=tenant_id,
            period=period,  # type: ignore[arg-type]
            usd=usd,
            tokens=tokens,
            mode=mode,  # type: ignore[arg-type]
            created_at=time.time(),
        )
        with self.db.transaction():
            self.db.execute(
                "DELETE FROM budgets WHERE scope = ? AND scope_id = ? AND period = ?",
                (scope, scope_id, period),
            )
            self.db.execute(
                f"INSERT INTO budgets ({_BUDGET_COLS}) VALUES (?,?,?,?,?,?,?,?,?)",
                (b.id, scope, scope_id, tenant_id, period, usd, tokens, mode, b.created_at),
            )
            self._bump()
        return b

    def list_budgets(self, tenant_id: str | None = None) -> builtins.list[Budget]:
        if tenant_id is None:
            rows = self.db.query(f"SELECT {_BUDGET_COLS} FROM budgets ORDER BY created_at, id")
        else:
            rows = self.db.query(
                f"SELECT {_BUDGET_COLS} FROM budgets WHERE tenant_id = ? ORDER BY created_at, id",
                (tenant_id,),
            )
        return [_budget(r) for r in rows]

    def delete_budget(self, budget_id: str) -> Budget:
        with self.db.transaction():
            rows = self.db.query(f"SELECT {_BUDGET_COLS} FROM budgets WHERE id = ?", (budget_id,))
            if not rows:
                raise NotFound(f"no budget {budget_id!r}")
            self.db.execute("DELETE FROM budgets WHERE id = ?", (budget_id,))
            self._bump()
        return _budget(rows[0])

    # ------------------------------------------------------------------ change tracking
    def version(self) -> int:
        rows = self.db.query("SELECT value FROM meta WHERE key = 'governance_version'")
        return int(rows[0][0]) if rows else 0

    def snapshot(self) -> Snapshot:
        with self.db.transaction():
            version = self.version()
            tenants = tuple(self.list_tenants())
            teams = tuple(self.list_teams())
            keys = tuple(self.list())
            budgets = tuple(self.list_budgets())
        return Snapshot(version, tenants, teams, keys, budgets)

    def close(self) -> None:
        self.db.close()
