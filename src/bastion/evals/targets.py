"""Targets (Inspect AI's solvers): what turns a :class:`Case` into an :class:`Output`.

One call per case, no retries here (the runner retries transient errors).
Every kind goes through a :class:`ModelClient`, normally a Bastion gateway:

* ``model``: a chat completion of the model alias (optional system prompt,
  the case's input as the user turn, the suite's ``params``);
* ``prompt``: a prompt-registry version rendered by the gateway with the
  case's ``variables`` (``"bastion": {"prompt", "variables"}``; the
  version's own model alias answers when ``model`` is ``"prompt"``);
* ``retrieval``: ``POST /v1/rag/query``; the ranked chunks become
  ``Output.retrieved``;
* ``rag_chat``: a chat grounded in a collection (``"bastion":
  {"collections", "top_k"}``), with citations and the grounding report;
* ``http``: any OpenAI-compatible server, called directly (its own client).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any

from bastion.core.errors import InvalidRequest
from bastion.evals.client import HttpModelClient
from bastion.evals.suite import TargetSpec
from bastion.evals.types import JSON, Case, ModelClient, Output, Target

RAG_CHAT_MAX_TOP_K = 50  # the gateway's limit for grounded chat


def messages_of(case: Case, system: str | None) -> list[JSON]:
    """The chat messages of a case: an optional system message, then its input."""
    msgs: list[JSON] = [{"role": "system", "content": system}] if system else []
    if isinstance(case.input, str):
        msgs.append({"role": "user", "content": case.input})
    else:
        msgs.extend(dict(m) for m in case.input)
    return msgs


def _choice(body: JSON) -> JSON:
    choices = body.get("choices") or []
    return choices[0] if choices and isinstance(choices[0], dict) else {}


def completion_text(body: JSON) -> str:
    """The first choice's message text of a chat completion ("" when there is none)."""
    content = (_choice(body).get("message") or {}).get("content")
    if isinstance(content, list):  # content parts
        content = "".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return content if isinstance(content, str) else ""


def output_of_chat(body: JSON, *, latency_s: float, cost_usd: float | None, status: int) -> Output:
    """An :class:`Output` from an OpenAI chat completion body."""
    choice = _choice(body)
    message: JSON = choice.get("message") or {}
    usage: JSON = body.get("usage") or {}
    raw_ext = body.get("bastion")
    ext: JSON = raw_ext if isinstance(raw_ext, dict) else {}
    citations = [c for c in body.get("citations") or [] if isinstance(c, dict)]
    return Output(
        text=completion_text(body),
        tool_calls=[t for t in message.get("tool_calls") or [] if isinstance(t, dict)],
        citations=citations,
        retrieved=_retrieved_of(citations),
        grounding=ext.get("grounding") if isinstance(ext.get("grounding"), dict) else None,
        latency_s=latency_s,
        cost_usd=cost_usd,
        prompt_tokens=int(usage.get("prompt_tokens") or 0),
        completion_tokens=int(usage.get("completion_tokens") or 0),
        finish_reason=choice.get("finish_reason"),
        status=status,
        raw=body,
    )


def _retrieved_of(citations: list[JSON]) -> list[JSON]:
    """The distinct cited chunks of a grounded answer, in citation order."""
    seen: set[tuple[Any, Any]] = set()
    out: list[JSON] = []
    for c in citations:
        key = (c.get("document_id"), c.get("chunk_id"))
        if c.get("document_id") is None or key in seen:
            continue
        seen.add(key)
        out.append(
            {
                "document_id": c.get("document_id"),
                "chunk_id": c.get("chunk_id"),
                "collection": c.get("collection"),
                "source": c.get("source"),
                "text": c.get("quote") or "",
            }
        )
    return out


@dataclass(slots=True)
class ChatTarget:
    """``model``, ``prompt``, ``rag_chat`` and ``http`` targets: one chat completion."""

    name: str
    spec: TargetSpec
    client: ModelClient
    model: str
    extension: str | None = None  # "prompt" | "rag" | None

    def body(self, case: Case) -> JSON:
        spec = self.spec
        body: JSON = {**spec.params, "model": self.model}
        if self.extension == "prompt":
            # the registry version carries its own system prompt and messages
            msgs = [] if case.input in ("", []) else messages_of(case, spec.system)
            body["messages"] = msgs
            body["bastion"] = {"prompt": spec.prompt, "variables": dict(case.variables)}
        else:
            body["messages"] = messages_of(case, spec.system)
        if self.extension == "rag":
            body["bastion"] = {
                "collections": [spec.collection],
                "top_k": min(spec.top_k, RAG_CHAT_MAX_TOP_K),
            }
        body.pop("stream", None)
        return body

    async def run(self, case: Case) -> Output:
        res = await self.client.chat(self.body(case))
        return output_of_chat(
            res.body, latency_s=res.latency_s, cost_usd=res.cost_usd, status=res.status
        )


@dataclass(slots=True)
class RetrievalTarget:
    """``retrieval`` target: the case's question against a collection."""

    name: str
    spec: TargetSpec
    client: ModelClient

    async def run(self, case: Case) -> Output:
        query = case.prompt_text()
        if not query.strip():
            raise InvalidRequest(f"case {case.id}: a retrieval case needs a question")
        body: JSON = {"collection": self.spec.collection, "query": query, "top_k": self.spec.top_k}
        t0 = time.perf_counter()
        data = await self.client.post("/v1/rag/query", body)
        latency = time.perf_counter() - t0
        results = [r for r in data.get("results") or [] if isinstance(r, dict)]
        retrieved = [
            {
                "document_id": r.get("document_id"),
                "chunk_id": r.get("chunk_id"),
                "score": r.get("score"),
                "text": r.get("text") or "",
                "source": r.get("source"),
                "title": r.get("title"),
            }
            for r in results
        ]
        return Output(text="", retrieved=retrieved, latency_s=latency, status=200, cost_usd=None)


def target_name(spec: TargetSpec) -> str:
    """A short description of a target (``model:gpt``, ``prompt:support@prod``, ...)."""
    kind = spec.kind
    if kind == "http":
        assert spec.http is not None
        return f"http:{spec.http.model}@{spec.http.url}"
    if kind == "prompt":
        return f"prompt:{spec.prompt}" + (f" ({spec.model})" if spec.model else "")
    if kind == "retrieval":
        return f"retrieval:{spec.collection}"
    if kind == "rag_chat":
        return f"rag_chat:{spec.model}+{spec.collection}"
    return f"model:{spec.model}"


def http_client(spec: TargetSpec) -> HttpModelClient:
    """The client of an ``http`` target (its key from ``api_key_env``)."""
    assert spec.http is not None
    h = spec.http
    key = None
    if h.api_key_env:
        key = os.environ.get(h.api_key_env)
        if not key:
            raise InvalidRequest(f"target.http.api_key_env: {h.api_key_env} is not set")
    return HttpModelClient(
        h.url, key, headers=h.headers, timeout_s=spec.timeout_s, openai_base=True
    )


def build_target(spec: TargetSpec, client: ModelClient) -> Target:
    """The target of a suite's ``target`` section, calling through ``client``.

    An ``http`` target gets its own :class:`HttpModelClient` (close it with
    :func:`close_target`); every other kind uses ``client``.
    """
    name = target_name(spec)
    kind = spec.kind
    if kind == "retrieval":
        return RetrievalTarget(name, spec, client)
    if kind == "http":
        assert spec.http is not None
        return ChatTarget(name, spec, http_client(spec), spec.http.model)
    if kind == "prompt":
        return ChatTarget(name, spec, client, spec.model or "prompt", "prompt")
    assert spec.model is not None
    if kind == "rag_chat":
        return ChatTarget(name, spec, client, spec.model, "rag")
    return ChatTarget(name, spec, client, spec.model)


async def close_target(target: Target) -> None:
    """Close what :func:`build_target` opened for ``target`` (the ``http`` kind's client)."""
    if (
        isinstance(target, ChatTarget)
        and isinstance(target.client, HttpModelClient)
        and target.spec.kind == "http"
    ):
        await target.client.aclose()
