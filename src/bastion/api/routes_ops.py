"""Operational and admin endpoints: health, readiness, metrics, keys, reload."""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

from bastion.api.errors import parse
from bastion.api.exchange import Exchange
from bastion.api.http import dumps, send_bytes
from bastion.core.errors import InvalidRequest, NotFound
from bastion.gateway.auth import KeyRecord
from bastion.gateway.breaker import State

if TYPE_CHECKING:
    from bastion.api.app import BastionApp


async def healthz(app: BastionApp, ex: Exchange) -> None:
    await ex.respond(200, b'{"status":"ok"}')


async def readyz(app: BastionApp, ex: Exchange) -> None:
    """Ready when a policy is applied; lists breaker states per deployment."""
    rt = app.gateway.rt
    deployments = {d.id: State(d.breaker.state).name.lower() for d in rt.deployments.values()}
    ready = bool(rt.plans)
    body = {
        "status": "ready" if ready else "no models configured",
        "models": len(rt.plans),
        "deployments": deployments,
        "uptime_s": round(time.time() - app.started_at, 1),
    }
    await ex.respond(200 if ready else 503, dumps(body))


async def metrics(app: BastionApp, ex: Exchange) -> None:
    payload = await asyncio.to_thread(app.metrics.render)
    ex.status = 200
    ex.started = True
    headers = [(b"x-request-id", ex.rid.encode())]
    await send_bytes(ex.send, 200, payload, app.metrics.content_type.encode(), headers)


class KeyCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=128)
    models: list[str] = Field(default_factory=lambda: ["*"])
    admin: bool = False
    ttl_s: float | None = Field(default=None, gt=0)


def _public(rec: KeyRecord) -> dict[str, Any]:
    return {
        "id": rec.id,
        "name": rec.name,
        "prefix": rec.prefix,
        "models": list(rec.models),
        "admin": rec.admin,
        "created_at": rec.created_at,
        "expires_at": rec.expires_at,
        "revoked_at": rec.revoked_at,
    }


def _store(app: BastionApp) -> Any:
    store = app.gateway.keystore
    if store is None:
        raise InvalidRequest("this server has no key store")
    return store


async def list_keys(app: BastionApp, ex: Exchange) -> None:
    app.authenticate(ex, admin=True)
    records = await asyncio.to_thread(_store(app).list)
    await ex.respond(200, dumps({"object": "list", "data": [_public(r) for r in records]}))


async def create_key(app: BastionApp, ex: Exchange) -> None:
    admin = app.authenticate(ex, admin=True)
    spec = parse(KeyCreate.model_validate, await ex.req.json(app.max_body))
    plans = app.gateway.rt.plans
    unknown = [m for m in spec.models if not any(c in m for c in "*?[") and m not in plans]
    if unknown:
        raise InvalidRequest(f"unknown models: {', '.join(unknown)}", param="models")
    expires = time.time() + spec.ttl_s if spec.ttl_s else None
    rec, secret = await asyncio.to_thread(
        _store(app).create, spec.name, spec.models, admin=spec.admin, expires_at=expires
    )
    app.gateway.refresh_keys(force=True)
    await app.audit(
        "admin.key.create",
        admin.name,
        key_id=rec.id,
        name=rec.name,
        models=list(rec.models),
        admin=rec.admin,
    )
    await ex.respond(201, dumps({**_public(rec), "key": secret}))


async def revoke_key(app: BastionApp, ex: Exchange) -> None:
    admin = app.authenticate(ex, admin=True)
    key_id = ex.req.path.rsplit("/", 1)[-1]
    if not key_id:
        raise NotFound("no key id given")
    rec = await asyncio.to_thread(_store(app).revoke, key_id)
    app.gateway.refresh_keys(force=True)
    await app.audit("admin.key.revoke", admin.name, key_id=rec.id, name=rec.name)
    await ex.respond(200, dumps(_public(rec)))


async def reload_policy(app: BastionApp, ex: Exchange) -> None:
    admin = app.authenticate(ex, admin=True)
    if app.policy_path is None:
        raise InvalidRequest("the server runs on embedded defaults; there is no policy file")
    ok, problems = await app.reload_policy(actor=admin.name)
    await ex.respond(200 if ok else 400, dumps({"applied": ok, "problems": problems}))
