"""The admin API: tenants, teams, keys, budgets, usage and audit events.

Every call is authenticated with a key that has a role. Roles act within the
key's tenant: ``viewer`` reads; ``developer`` also creates and revokes keys
without a role; ``admin`` also manages teams, budgets and keys of any role. A
platform admin (role ``admin``, no tenant) does all of that in any tenant and
manages tenants. Another tenant's objects are reported as not found, never as
forbidden, so their existence does not leak. Every write is audited.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import parse_qs

from pydantic import BaseModel, ConfigDict, Field

from bastion.api.errors import parse
from bastion.api.exchange import Exchange
from bastion.api.http import dumps
from bastion.core.errors import InvalidRequest, NotFound, PermissionDenied
from bastion.gateway.auth import KeyRecord, Principal
from bastion.gateway.tenancy import Budget, GovernanceStore, Team, Tenant
from bastion.telemetry.usage import UsageQuery

if TYPE_CHECKING:
    from bastion.api.app import BastionApp

Need = Literal["read", "keys", "manage", "platform"]
_RANK = {"viewer": 1, "developer": 2, "admin": 3}
_NEED = {"read": 1, "keys": 2, "manage": 3, "platform": 3}


def require(app: BastionApp, ex: Exchange, need: Need) -> Principal:
    """The caller, if its role allows ``need``; else 403."""
    p = app.authenticate(ex)
    if p.role is None:
        raise PermissionDenied("this key has no admin role")
    if _RANK.get(p.role, 0) < _NEED[need] or (need == "platform" and not p.admin):
        raise PermissionDenied(f"the {p.role} role may not do this")
    return p


def tenant_of(p: Principal, requested: str | None) -> str | None:
    """The tenant a call acts on: the caller's own (platform admins: any, or all)."""
    if p.admin:
        return requested
    if requested is not None and requested not in (p.tenant_id, p.tenant_name):
        raise NotFound(f"no tenant {requested!r}")
    return p.tenant_id


def _query(ex: Exchange) -> dict[str, str]:
    return {k: v[-1] for k, v in parse_qs(ex.req.query.decode("latin-1")).items()}


def _store(app: BastionApp) -> GovernanceStore:
    store = app.gateway.keystore
    if store is None:
        raise InvalidRequest("this server has no governance store")
    return store


async def _run(fn: Any, *args: Any, **kwargs: Any) -> Any:
    return await asyncio.to_thread(fn, *args, **kwargs)


async def _changed(app: BastionApp) -> None:
    await _run(app.gateway.refresh_keys, True)


def public_key(rec: KeyRecord) -> dict[str, Any]:
    return {
        "id": rec.id,
        "name": rec.name,
        "prefix": rec.prefix,
        "models": list(rec.models),
        "role": rec.role,
        "admin": rec.admin,
        "tenant_id": rec.tenant_id,
        "team_id": rec.team_id,
        "owner": rec.owner,
        "rpm": rec.rpm,
        "tpm": rec.tpm,
        "created_at": rec.created_at,
        "expires_at": rec.expires_at,
        "revoked_at": rec.revoked_at,
    }


def _tenant(t: Tenant) -> dict[str, Any]:
    return {"id": t.id, "name": t.name, "models": list(t.models), "rpm": t.rpm, "tpm": t.tpm}


def _team(t: Team) -> dict[str, Any]:
    return {"id": t.id, "tenant_id": t.tenant_id, "name": t.name, "rpm": t.rpm, "tpm": t.tpm}


def _budget(b: Budget) -> dict[str, Any]:
    return {
        "id": b.id,
        "scope": b.scope,
        "scope_id": b.scope_id,
        "tenant_id": b.tenant_id,
        "period": b.period,
        "usd": b.usd,
        "tokens": b.tokens,
        "mode": b.mode,
    }


def _list(items: list[dict[str, Any]]) -> bytes:
    return dumps({"object": "list", "data": items})


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


# ---------------------------------------------------------------------- tenants
class TenantBody(_Body):
    name: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    models: list[str] = Field(default_factory=lambda: ["*"])
    rpm: int | None = Field(default=None, ge=0)
    tpm: int | None = Field(default=None, ge=0)


class TenantPatch(_Body):
    models: list[str] | None = None
    rpm: int | None = Field(default=None, ge=0)
    tpm: int | None = Field(default=None, ge=0)


async def list_tenants(app: BastionApp, ex: Exchange) -> None:
    p = require(app, ex, "read")
    tenants = await _run(_store(app).list_tenants)
    mine = [t for t in tenants if p.admin or t.id == p.tenant_id]
    await ex.respond(200, _list([_tenant(t) for t in mine]))


async def create_tenant(app: BastionApp, ex: Exchange) -> None:
    p = require(app, ex, "platform")
    spec = parse(TenantBody.model_validate, await ex.req.json(app.max_body))
    t = await _run(
        _store(app).create_tenant, spec.name, models=spec.models, rpm=spec.rpm, tpm=spec.tpm
    )
    await _changed(app)
    await app.audit("admin.tenant.create", p.key_id, tenant=t.id, **_tenant(t))
    await ex.respond(201, dumps(_tenant(t)))


async def tenant_item(app: BastionApp, ex: Exchange) -> None:
    """``GET`` or ``PATCH /admin/tenants/{id}``."""
    ident = ex.req.path.rsplit("/", 1)[-1]
    if ex.req.method == "GET":
        p = require(app, ex, "read")
        t = await _run(_store(app).get_tenant, ident)
        if not p.admin and t.id != p.tenant_id:
            raise NotFound(f"no tenant {ident!r}")
        await ex.respond(200, dumps(_tenant(t)))
        return
    p = require(app, ex, "platform")
    spec = parse(TenantPatch.model_validate, await ex.req.json(app.max_body))
    old = await _run(_store(app).get_tenant, ident)
    given = spec.model_fields_set  # a field left out keeps its value; null clears a limit
    t = await _run(
        _store(app).update_tenant,
        old.id,
        models=spec.models,
        rpm=spec.rpm if "rpm" in given else old.rpm,
        tpm=spec.tpm if "tpm" in given else old.tpm,
    )
    await _changed(app)
    await app.audit("admin.tenant.update", p.key_id, tenant=t.id, **_tenant(t))
    await ex.respond(200, dumps(_tenant(t)))


# ---------------------------------------------------------------------- teams
class TeamBody(_Body):
    name: str = Field(min_length=1, max_length=128)
    tenant: str | None = None
    rpm: int | None = Field(default=None, ge=0)
    tpm: int | None = Field(default=None, ge=0)


async def list_teams(app: BastionApp, ex: Exchange) -> None:
    p = require(app, ex, "read")
    tenant = tenant_of(p, _query(ex).get("tenant"))
    if tenant is not None:
        tenant = (await _run(_store(app).get_tenant, tenant)).id
    teams = await _run(_store(app).list_teams, tenant)
    await ex.respond(200, _list([_team(t) for t in teams]))


async def create_team(app: BastionApp, ex: Exchange) -> None:
    p = require(app, ex, "manage")
    spec = parse(TeamBody.model_validate, await ex.req.json(app.max_body))
    tenant = tenant_of(p, spec.tenant)
    if tenant is None:
        raise InvalidRequest("name the team's tenant", param="tenant")
    t = await _run(_store(app).create_team, tenant, spec.name, rpm=spec.rpm, tpm=spec.tpm)
    await _changed(app)
    await app.audit("admin.team.create", p.key_id, tenant=t.tenant_id, **_team(t))
    await ex.respond(201, dumps(_team(t)))


# ---------------------------------------------------------------------- keys
class KeyBody(_Body):
    name: str = Field(min_length=1, max_length=128)
    models: list[str] = Field(default_factory=lambda: ["*"])
    admin: bool = False
    role: Literal["admin", "developer", "viewer"] | None = None
    tenant: str | None = None
    team: str | None = None
    owner: str | None = Field(default=None, max_length=256)
    rpm: int | None = Field(default=None, ge=0)
    tpm: int | None = Field(default=None, ge=0)
    ttl_s: float | None = Field(default=None, gt=0)


async def list_keys(app: BastionApp, ex: Exchange) -> None:
    p = require(app, ex, "read")
    tenant = tenant_of(p, _query(ex).get("tenant"))
    if tenant is not None:
        tenant = (await _run(_store(app).get_tenant, tenant)).id
    records = await _run(_store(app).list, False, tenant)
    await ex.respond(200, _list([public_key(r) for r in records]))


async def create_key(app: BastionApp, ex: Exchange) -> None:
    p = require(app, ex, "keys")
    spec = parse(KeyBody.model_validate, await ex.req.json(app.max_body))
    role = "admin" if spec.admin else spec.role
    if spec.admin and (spec.tenant or spec.team):
        raise InvalidRequest("a platform admin key has no tenant or team", param="admin")
    if role is not None and p.role != "admin":
        raise PermissionDenied("only an admin may create keys with a role")
    if spec.admin and not p.admin:
        raise PermissionDenied("only a platform admin may create platform admin keys")
    tenant = None if spec.admin else tenant_of(p, spec.tenant)
    if tenant is None and not spec.admin:
        tenant = "tnt_default"
    plans = app.gateway.rt.plans
    unknown = [m for m in spec.models if not any(c in m for c in "*?[") and m not in plans]
    if unknown:
        raise InvalidRequest(f"unknown models: {', '.join(unknown)}", param="models")
    expires = time.time() + spec.ttl_s if spec.ttl_s else None
    rec, secret = await _run(
        _store(app).create,
        spec.name,
        spec.models,
        role=role,
        tenant_id=tenant,
        team_id=spec.team,
        owner=spec.owner,
        rpm=spec.rpm,
        tpm=spec.tpm,
        expires_at=expires,
    )
    await _changed(app)
    await app.audit(
        "admin.key.create",
        p.key_id,
        tenant=rec.tenant_id,
        key_id=rec.id,
        name=rec.name,
        models=list(rec.models),
        role=rec.role,
        team=rec.team_id,
    )
    await ex.respond(201, dumps({**public_key(rec), "key": secret}))


async def revoke_key(app: BastionApp, ex: Exchange) -> None:
    p = require(app, ex, "keys")
    ident = ex.req.path.rsplit("/", 1)[-1]
    store = _store(app)
    rec = await _run(store.get_key, ident)
    if not p.admin and rec.tenant_id != p.tenant_id:
        raise NotFound(f"no active key {ident!r}")
    if rec.role is not None and p.role != "admin":
        raise PermissionDenied("only an admin may revoke keys with a role")
    rec = await _run(store.revoke, rec.id)
    await _changed(app)
    await app.audit(
        "admin.key.revoke", p.key_id, tenant=rec.tenant_id, key_id=rec.id, name=rec.name
    )
    await ex.respond(200, dumps(public_key(rec)))


# ---------------------------------------------------------------------- budgets
class BudgetBody(_Body):
    scope: Literal["tenant", "team", "key"]
    id: str = Field(min_length=1, description="Id or name of the tenant, team or key.")
    tenant: str | None = None
    period: Literal["day", "month"] = "month"
    usd: float | None = Field(default=None, ge=0)
    tokens: int | None = Field(default=None, ge=0)
    mode: Literal["hard", "soft"] = "hard"


async def resolve_scope(
    store: GovernanceStore, p: Principal, scope: str, ident: str, tenant: str | None
) -> tuple[str, str]:
    """``(scope_id, tenant_id)`` of a budget target the caller may manage."""
    if scope == "tenant":
        t = await _run(store.get_tenant, ident)
        tenant_of(p, t.id)
        return t.id, t.id
    if scope == "key":
        k = await _run(store.get_key, ident)
        if k.tenant_id is None or (not p.admin and k.tenant_id != p.tenant_id):
            raise NotFound(f"no active key {ident!r}")
        return k.id, k.tenant_id
    own = tenant_of(p, tenant)
    if own is None:
        raise InvalidRequest("name the team's tenant", param="tenant")
    own = (await _run(store.get_tenant, own)).id
    team = await _run(store.get_team, own, ident)
    return team.id, own


async def list_budgets(app: BastionApp, ex: Exchange) -> None:
    p = require(app, ex, "read")
    tenant = tenant_of(p, _query(ex).get("tenant"))
    budgets = await _run(_store(app).list_budgets, tenant)
    await ex.respond(200, _list([_budget(b) for b in budgets]))


async def set_budget(app: BastionApp, ex: Exchange) -> None:
    p = require(app, ex, "manage")
    spec = parse(BudgetBody.model_validate, await ex.req.json(app.max_body))
    store = _store(app)
    scope_id, tenant = await resolve_scope(store, p, spec.scope, spec.id, spec.tenant)
    b = await _run(
        store.set_budget,
        spec.scope,
        scope_id,
        tenant,
        spec.period,
        usd=spec.usd,
        tokens=spec.tokens,
        mode=spec.mode,
    )
    await _changed(app)
    await app.seed_budgets()
    await app.audit("admin.budget.set", p.key_id, tenant=tenant, **_budget(b))
    await ex.respond(201, dumps(_budget(b)))


async def delete_budget(app: BastionApp, ex: Exchange) -> None:
    p = require(app, ex, "manage")
    ident = ex.req.path.rsplit("/", 1)[-1]
    store = _store(app)
    owned = [b for b in await _run(store.list_budgets, tenant_of(p, None)) if b.id == ident]
    if not owned:
        raise NotFound(f"no budget {ident!r}")
    b = await _run(store.delete_budget, ident)
    await _changed(app)
    await app.audit("admin.budget.delete", p.key_id, tenant=b.tenant_id, **_budget(b))
    await ex.respond(200, dumps(_budget(b)))


# ---------------------------------------------------------------------- usage and audit
def _float(q: dict[str, str], name: str) -> float | None:
    if name not in q:
        return None
    try:
        return float(q[name])
    except ValueError:
        raise InvalidRequest(f"{name} must be a number (epoch seconds)", param=name) from None


async def usage(app: BastionApp, ex: Exchange) -> None:
    p = require(app, ex, "read")
    if app.stores.usage is None:
        raise InvalidRequest("this server keeps no usage rows")
    q = _query(ex)
    tenant = tenant_of(p, q.get("tenant"))
    if tenant is not None:
        tenant = (await _run(_store(app).get_tenant, tenant)).id
    groups = tuple(g for g in q.get("group_by", "").split(",") if g)
    try:
        query = UsageQuery(
            start=_float(q, "start"),
            end=_float(q, "end"),
            tenant_id=tenant,
            team_id=q.get("team"),
            key_id=q.get("key"),
            model=q.get("model"),
            tag=q.get("tag"),
            group_by=groups,
            limit=min(int(q.get("limit", "1000")), 10_000),
        )
    except ValueError as exc:
        raise InvalidRequest(str(exc), param="group_by") from None
    rows = await _run(app.stores.usage.query, query)
    await ex.respond(200, dumps({"object": "list", "group_by": list(groups), "data": rows}))


async def audit_events(app: BastionApp, ex: Exchange) -> None:
    p = require(app, ex, "read")
    if app.stores.audit is None:
        raise InvalidRequest("this server keeps no audit log")
    q = _query(ex)
    tenant = tenant_of(p, q.get("tenant"))
    since = int(q.get("since", "0") or 0)
    limit = min(int(q.get("limit", "100") or 100), 1000)

    def read() -> list[dict[str, Any]]:
        out = []
        for ev in app.stores.audit.events(since, tenant=tenant):
            out.append(ev.to_dict())
            if len(out) >= limit:
                break
        return out

    events = await _run(read)
    await ex.respond(200, _list(events))
