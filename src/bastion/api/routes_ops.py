"""Operational and admin endpoints: health, readiness, metrics, keys, reload."""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

from bastion.api.exchange import Exchange
from bastion.api.http import dumps, send_bytes
from bastion.core.errors import InvalidRequest
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


async def reload_policy(app: BastionApp, ex: Exchange) -> None:
    admin = app.authenticate(ex, admin=True)
    if app.policy_path is None:
        raise InvalidRequest("the server runs on embedded defaults; there is no policy file")
    ok, problems = await app.reload_policy(actor=admin.name)
    await ex.respond(200 if ok else 400, dumps({"applied": ok, "problems": problems}))
