"""Chat completions that reference a registry prompt (``extra_body={"bastion": {...}}``).

``{"bastion": {"prompt": "support-answer@production", "variables": {...}}}``
on a chat request: the prompt version the reference names (``NAME@LABEL``,
``NAME@3``, ``NAME@latest``, or a bare ``NAME`` for ``NAME@production``) is
rendered with the caller's tenant and variables, and its messages are put
before the request's own (which may be none, or extra turns). The request's
model stands unless it is ``""`` or ``"prompt"``; then the version's alias is
used. The version's ``params`` fill the fields the request did not set.

The rewritten body then takes the normal chat path (guards, limits, budgets,
cache, RAG when ``bastion.collections`` is also given), so nothing here
bypasses governance. The answer carries ``x-bastion-prompt: NAME@VERSION``,
and the usage row the tag ``prompt:NAME@VERSION``.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from bastion.api.exchange import Exchange
from bastion.api.routes_prompts import service, tenant_of
from bastion.core.errors import InvalidRequest
from bastion.core.types import JSON
from bastion.gateway.auth import Principal
from bastion.prompts.model import split_ref

if TYPE_CHECKING:
    from bastion.api.app import BastionApp

PROMPT_MODELS = ("", "prompt")
"""Request models that mean "the prompt version's model"."""


async def apply_prompt(app: BastionApp, ex: Exchange, principal: Principal, body: JSON) -> JSON:
    """``body`` with its ``bastion.prompt`` rendered in, or ``body`` unchanged."""
    ext = body.get("bastion")
    if not isinstance(ext, dict) or ("prompt" not in ext and "variables" not in ext):
        return body
    ref, variables = ext.get("prompt"), ext.get("variables", {})
    if not isinstance(ref, str) or not ref.strip():
        raise InvalidRequest(
            "bastion.prompt must be NAME, NAME@LABEL or NAME@VERSION", param="bastion.prompt"
        )
    if not isinstance(variables, dict):
        raise InvalidRequest("bastion.variables must be an object", param="bastion.variables")
    name, which = split_ref(ref)
    svc = service(app)
    rendered = await asyncio.to_thread(svc.render, tenant_of(principal), name, which, variables)
    out = dict(body)
    own = body.get("messages") or []
    if not isinstance(own, list):
        raise InvalidRequest("messages must be a list", param="messages")
    out["messages"] = [*rendered.messages, *own]
    if body.get("model") in (*PROMPT_MODELS, None):
        out["model"] = rendered.model
    for key, value in rendered.params.items():
        if out.get(key) is None:
            out[key] = value
    rest = {k: v for k, v in ext.items() if k not in ("prompt", "variables")}
    if rest:
        out["bastion"] = rest
    else:
        del out["bastion"]
    tag = f"prompt:{rendered.version.ref}"
    _tag_request(ex, tag)
    ex.extra_headers.append((b"x-bastion-prompt", rendered.version.ref.encode()))
    ex.request_attrs["bastion.prompt"] = rendered.version.ref
    return out


def _tag_request(ex: Exchange, tag: str) -> None:
    """Add ``tag`` as if the caller had sent it in ``x-bastion-tags`` (first, so it is kept)."""
    sent = ex.req.headers.get("x-bastion-tags")
    ex.req.headers["x-bastion-tags"] = f"{tag},{sent}" if sent else tag
