"""Chat completions grounded in collections (``extra_body={"bastion": {...}}``).

``{"bastion": {"collections": ["handbook"], "top_k": 8, "filters": {...},
"query": "..."}}`` on a chat request: the last user message (or ``query``) is
searched in the collections with the caller's ACL; retrieved text passes the
model's guard ``retrieved`` pipeline (a blocked chunk is dropped, a redacted
one is used redacted); the surviving chunks are assembled as numbered,
spotlighted sources in a system message; the answer comes back with a
``citations`` list and a ``bastion.grounding`` report (each claim checked
against the sources it cites). When nothing relevant is found the model is
not called: the answer says so.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

from bastion.api.errors import parse
from bastion.api.exchange import Exchange
from bastion.api.rag import access_of
from bastion.api.routes_rag import FiltersBody
from bastion.core.errors import InvalidRequest
from bastion.core.types import JSON, ChatRequest
from bastion.gateway.auth import Principal
from bastion.guard.base import ScanContext
from bastion.guard.pipeline import guard_for
from bastion.rag.answer import NO_ANSWER, Context, assemble, cite, relevant, system_prompt
from bastion.rag.retrieve import Result

if TYPE_CHECKING:
    from bastion.api.app import BastionApp


class RagExtension(BaseModel):
    model_config = ConfigDict(extra="forbid")

    collections: list[str] = Field(min_length=1, max_length=8)
    top_k: int = Field(default=8, ge=1, le=50)
    filters: FiltersBody = FiltersBody()
    query: str | None = Field(default=None, min_length=1, max_length=20_000)


@dataclass(slots=True)
class RagTurn:
    context: Context
    collections: list[str]
    retrieved: int
    dropped: int
    min_support: float

    def annotate(self, body: JSON, answer: str) -> JSON:
        """``body`` with ``citations`` and the grounding report added."""
        grounding = cite(answer, self.context, min_support=self.min_support)
        return {
            **body,
            "citations": [c.to_json() for c in grounding.citations],
            "bastion": {
                "retrieval": self.meta(),
                "grounding": grounding.to_json(),
            },
        }

    def meta(self) -> dict[str, Any]:
        return {
            "collections": self.collections,
            "retrieved": self.retrieved,
            "sources": len(self.context.sources),
            "dropped_by_guardrails": self.dropped,
        }


def _last_user_text(req: ChatRequest) -> str:
    for m in reversed(req.messages):
        if m.role == "user":
            content: Any = m.content
            if isinstance(content, str):
                return content
            if isinstance(content, list):
                return " ".join(
                    p.get("text", "") for p in content if isinstance(p, dict) and "text" in p
                )
    raise InvalidRequest("a grounded chat needs a user message or bastion.query")


def _guard_results(
    app: BastionApp, principal: Principal, model: str, results: list[Result]
) -> tuple[list[Result], int]:
    """Results through the model's ``retrieved`` guard pipeline."""
    pipeline = guard_for(app.gateway.rt.policy).for_model(model)
    if pipeline is None or not pipeline.has("retrieved"):
        return results, 0
    ctx = ScanContext("retrieved", principal.tenant_name, model)
    kept: list[Result] = []
    dropped = 0
    for r in results:
        verdict = pipeline.scan(r.chunk.text, "retrieved", ctx)
        for f, action in verdict.findings:
            app.metrics.guard("retrieved", f.scanner, f.category, action)
        if verdict.action == "block":
            dropped += 1
            continue
        if verdict.text != r.chunk.text:
            r = replace(r, chunk=replace(r.chunk, text=verdict.text))
        kept.append(r)
    return kept, dropped


async def prepare_rag(
    app: BastionApp, ex: Exchange, principal: Principal, req: ChatRequest
) -> tuple[ChatRequest, RagTurn | None, JSON | None]:
    """The request with its sources, the turn to annotate the answer, or a no-answer reply."""
    raw_ext = (req.model_extra or {}).get("bastion")
    if raw_ext is None:
        return req, None, None
    if not isinstance(raw_ext, dict):
        raise InvalidRequest("bastion must be an object", param="bastion")
    ext = parse(RagExtension.model_validate, raw_ext)
    rag = app.rag
    cfg = app.gateway.rt.policy.rag.answering
    query = ext.query or _last_user_text(req)
    colls = [rag.collection(principal, name) for name in ext.collections]
    retriever = rag.retriever(app, principal, ex.rid)
    found = await retriever.search_many(
        colls,
        query,
        access_of(principal),
        top_k=ext.top_k,
        filters=ext.filters.filters(time.time()),
    )
    useful = relevant(found, min_similarity=cfg.min_similarity, query=query)
    useful, dropped = _guard_results(app, principal, req.model, useful)
    context = assemble(useful, budget_tokens=cfg.context_tokens)
    turn = RagTurn(context, ext.collections, len(found), dropped, cfg.min_support)
    body = {k: v for k, v in (req.upstream_body(req.model)).items() if k != "bastion"}
    if not context.sources:
        reply: JSON = {
            "id": "chatcmpl-" + uuid.uuid4().hex[:24],
            "object": "chat.completion",
            "created": int(time.time()),
            "model": req.model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": NO_ANSWER},
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0},
        }
        return req, turn, turn.annotate(reply, NO_ANSWER)
    messages = list(body.get("messages") or [])
    base = None
    if (
        messages
        and messages[0].get("role") in ("system", "developer")
        and isinstance(messages[0].get("content"), str)
    ):
        base = messages.pop(0)["content"]
    messages.insert(0, {"role": "system", "content": system_prompt(context, base=base)})
    body["messages"] = messages
    return parse(ChatRequest.from_body, body), turn, None


def completion_text(body: JSON) -> str:
    choices = body.get("choices") or []
    if not choices:
        return ""
    content = (choices[0].get("message") or {}).get("content")
    return content if isinstance(content, str) else ""


async def annotate_stream(turn: RagTurn, chunks: AsyncIterator[JSON]) -> AsyncIterator[JSON]:
    """Relay ``chunks``, then one more chunk carrying the citations."""
    text: list[str] = []
    last: JSON = {}
    async for chunk in chunks:
        for choice in chunk.get("choices") or []:
            piece = (choice.get("delta") or {}).get("content")
            if isinstance(piece, str):
                text.append(piece)
        last = chunk
        yield chunk
    tail = turn.annotate(
        {
            "id": last.get("id", "chatcmpl-rag"),
            "object": "chat.completion.chunk",
            "created": last.get("created", int(time.time())),
            "model": last.get("model", ""),
            "choices": [],
        },
        "".join(text),
    )
    yield tail
