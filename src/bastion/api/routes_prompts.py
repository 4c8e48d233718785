"""Prompt registry endpoints.

* ``POST /v1/prompts`` ``{"name", "messages" | "text", "variables", "model",
  "params", "eval_suites", "redteam_suites", "description"}``: a new version
  (201), or the latest one when nothing changed (200).
* ``GET /v1/prompts``: the tenant's prompts with their labels.
* ``GET /v1/prompts/{name}``: its versions, labels and label history.
* ``GET /v1/prompts/{name}/versions/{n}``: one version.
* ``POST /v1/prompts/{name}/render`` ``{"ref": "production" | 3 | "latest",
  "variables": {...}}``: ``{"messages", "model", "params", "version"}``.
* ``POST /v1/prompts/{name}/labels`` ``{"label", "version", "reason"}``:
  point a label at a version (admins; audited as ``prompt.label``). This is
  a plain move: the gated promotion is ``bastion prompts promote``.

Any key of a tenant reads its prompts; creating versions and rendering need
role ``developer`` or ``admin``; moving labels needs ``admin``. Another
tenant's prompts do not exist (404).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

from pydantic import BaseModel, ConfigDict, Field

from bastion.api.errors import parse
from bastion.api.exchange import Exchange
from bastion.api.http import dumps
from bastion.core.errors import NotFound, PermissionDenied, Unsupported
from bastion.gateway.auth import Principal
from bastion.gateway.tenancy import DEFAULT_TENANT
from bastion.prompts.model import LABEL_PATTERN, LATEST, NewPrompt
from bastion.prompts.service import PromptService

if TYPE_CHECKING:
    from bastion.api.app import BastionApp

WRITE_ROLES = ("admin", "developer")
PREFIX = "/v1/prompts/"


class RenderBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    ref: str | int = LATEST
    variables: dict[str, Any] = {}


class LabelBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    label: str = Field(pattern=LABEL_PATTERN)
    version: int = Field(ge=1)
    reason: str | None = Field(default=None, max_length=2000)


def tenant_of(principal: Principal) -> str:
    return principal.tenant_id or DEFAULT_TENANT


def service(app: BastionApp) -> PromptService:
    if app.prompts is None:
        raise Unsupported("the prompt registry is not configured on this server")
    return app.prompts


def require_role(principal: Principal, roles: tuple[str, ...], what: str) -> None:
    if principal.role not in roles:
        raise PermissionDenied(f"{what} needs a key with role {' or '.join(roles)}")


async def prompts(app: BastionApp, ex: Exchange) -> None:
    """``GET|POST /v1/prompts``."""
    principal = app.authenticate(ex)
    svc, tenant = service(app), tenant_of(principal)
    if ex.req.method == "GET":
        found = await asyncio.to_thread(svc.list, tenant)
        await ex.respond(200, dumps({"object": "list", "data": [p.to_json() for p in found]}))
        return
    require_role(principal, WRITE_ROLES, "creating prompt versions")
    body = parse(NewPrompt.model_validate, await ex.req.json(app.max_body))
    # the version must name a chat alias this key may use (the policy as it is now)
    app.gateway.plan(principal, body.model, "chat")
    version, created = await asyncio.to_thread(
        svc.create_version, tenant, body.name, body, actor=principal.key_id
    )
    if created:
        await app.audit(
            "prompt.create",
            principal.key_id,
            tenant,
            prompt=version.name,
            version=version.version,
            content_hash=version.content_hash,
        )
    await ex.respond(201 if created else 200, dumps({**version.to_json(), "created": created}))


async def prompt_item(app: BastionApp, ex: Exchange) -> None:
    """Everything under ``/v1/prompts/{name}``."""
    principal = app.authenticate(ex)
    svc, tenant = service(app), tenant_of(principal)
    parts = [unquote(p) for p in ex.req.path[len(PREFIX) :].split("/")]
    name, rest, method = parts[0], parts[1:], ex.req.method
    if method == "GET" and not rest:
        await ex.respond(200, dumps(await asyncio.to_thread(_detail, svc, tenant, name)))
        return
    if method == "GET" and len(rest) == 2 and rest[0] == "versions" and rest[1].isdigit():
        v = await asyncio.to_thread(svc.get, tenant, name, int(rest[1]))
        await ex.respond(200, dumps(v.to_json()))
        return
    if method == "POST" and rest == ["render"]:
        require_role(principal, WRITE_ROLES, "rendering prompts")
        body = parse(RenderBody.model_validate, await ex.req.json(app.max_body))
        rendered = await asyncio.to_thread(svc.render, tenant, name, body.ref, body.variables)
        await ex.respond(200, dumps(rendered.to_json()))
        return
    if method == "POST" and rest == ["labels"]:
        require_role(principal, ("admin",), "moving prompt labels")
        lb = parse(LabelBody.model_validate, await ex.req.json(app.max_body))
        event = await asyncio.to_thread(
            svc.set_label,
            tenant,
            name,
            lb.label,
            lb.version,
            actor=principal.key_id,
            reason=lb.reason,
        )
        data = {"prompt": name, "label": lb.label, "from": event.from_version, "to": lb.version}
        await app.audit("prompt.label", principal.key_id, tenant, **data, reason=lb.reason)
        labels = await asyncio.to_thread(svc.labels, tenant, name)
        await ex.respond(
            200, dumps({"object": "prompt.label", **event.to_json(), "labels": labels})
        )
        return
    raise NotFound(f"no route {method} {ex.req.path}")


def _detail(svc: PromptService, tenant: str, name: str) -> dict[str, Any]:
    versions = svc.versions(tenant, name)
    return {
        "object": "prompt",
        "name": name,
        "latest_version": versions[-1].version,
        "labels": svc.labels(tenant, name),
        "versions": [v.to_json() for v in versions],
        "label_events": [e.to_json() for e in svc.history(tenant, name)],
    }
