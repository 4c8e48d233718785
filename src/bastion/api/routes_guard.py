"""``POST /v1/guard/scan``: Bastion's guardrails as a service.

Body: ``{"text": ..., "kind": "input"|"retrieved"|"tool_output"|"output",
"policy": <pipeline name, optional>}``. Without a policy name the policy's
``guardrails.default`` pipeline applies, else the built-in full pipeline
(injection detection blocks; PII and secrets are redacted). Answers
``{"flagged", "action", "findings": [{"scanner", "category", "score",
"start", "end"}], "redacted_text"}``; ``redacted_text`` is the text with
redactions applied (``null`` when the action is ``block``).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field

from bastion.api.errors import parse
from bastion.api.exchange import Exchange
from bastion.api.http import dumps
from bastion.core.errors import NotFound
from bastion.guard.base import ScanContext
from bastion.guard.pipeline import Pipeline, guard_for
from bastion.guard.presets import full_pipeline

if TYPE_CHECKING:
    from bastion.api.app import BastionApp


class ScanBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    text: str = Field(max_length=1_000_000)
    kind: Literal["input", "retrieved", "tool_output", "output"] = "input"
    policy: str | None = None


def pick(app: BastionApp, name: str | None) -> Pipeline:
    guard = guard_for(app.gateway.rt.policy)
    if name is not None:
        pipeline = guard.pipelines.get(name)
        if pipeline is None:
            raise NotFound(f"no guardrails pipeline {name!r}", param="policy")
        return pipeline
    return guard.default or full_pipeline()


async def scan(app: BastionApp, ex: Exchange) -> None:
    principal = app.authenticate(ex)
    body = parse(ScanBody.model_validate, await ex.req.json(app.max_body))
    pipeline = pick(app, body.policy)
    ctx = ScanContext(body.kind, principal.tenant_name, None)
    if len(body.text) > 4000:
        verdict = await asyncio.to_thread(pipeline.scan, body.text, body.kind, ctx)
    else:
        verdict = pipeline.scan(body.text, body.kind, ctx)
    for f, action in verdict.findings:
        app.metrics.guard(body.kind, f.scanner, f.category, action)
    result = {
        "flagged": verdict.flagged,
        "action": verdict.action,
        "pipeline": pipeline.name,
        "findings": [{**f.to_dict(), "action": a} for f, a in verdict.findings],
        "redacted_text": None if verdict.action == "block" else verdict.text,
    }
    await ex.respond(200, dumps(result))
