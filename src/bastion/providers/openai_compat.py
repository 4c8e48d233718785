"""The ``openai`` provider: any OpenAI-compatible upstream.

OpenAI, Azure OpenAI, vLLM, Ollama, the llama.cpp server or another Bastion. One
pooled keep-alive aiohttp session per provider instance; bodies are (de)serialised
with orjson and returned as plain dicts (no pydantic on the response path).

Streams always ask the upstream for usage (``stream_options.include_usage``), so the
gateway learns token counts whatever the caller asked; the gateway decides what to
forward. Failures are mapped per the table in :mod:`bastion.providers.base`.

Azure OpenAI: give ``base_url`` as
``https://RESOURCE.openai.azure.com/openai/deployments/DEPLOYMENT`` and
``azure_api_version``; the key then goes in the ``api-key`` header.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import orjson
from yarl import URL

from bastion.core.errors import UpstreamConnectError, UpstreamError
from bastion.core.types import JSON, ChatRequest, EmbeddingRequest, RerankRequest
from bastion.providers._http import (
    PooledSession,
    error_message,
    loads_object,
    open_sse,
    post_bytes,
    post_json,
)
from bastion.providers.base import CallContext

_STREAM_HEADERS = {"Accept": "text/event-stream"}
_DONE = b"[DONE]"


class OpenAICompatProvider:
    """A :class:`~bastion.providers.base.Provider` for OpenAI-compatible HTTP APIs."""

    type = "openai"

    def __init__(
        self,
        name: str,
        *,
        base_url: str,
        api_key: str | None = None,
        headers: dict[str, str] | None = None,
        max_connections: int = 256,
        azure_api_version: str | None = None,
        rerank_api: str = "cohere",
    ) -> None:
        self.name = name
        self.base_url = base_url.rstrip("/")
        default_headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if api_key:
            if azure_api_version:
                default_headers["api-key"] = api_key
            else:
                default_headers["Authorization"] = f"Bearer {api_key}"
        default_headers.update(headers or {})
        self._secrets: tuple[str, ...] = (api_key,) if api_key else ()
        query = f"?api-version={azure_api_version}" if azure_api_version else ""
        self._chat_url = URL(f"{self.base_url}/chat/completions{query}")
        self._embed_url = URL(f"{self.base_url}/embeddings{query}")
        self._rerank_url = URL(f"{self.base_url}/rerank")
        self.rerank_api = rerank_api
        self._pool = PooledSession(max_connections=max_connections, headers=default_headers)

    def __repr__(self) -> str:
        return f"OpenAICompatProvider(name={self.name!r}, base_url={self.base_url!r})"

    async def chat(self, request: ChatRequest, model: str, ctx: CallContext) -> JSON:
        """A non-streaming chat completion, as the upstream's JSON object."""
        body = request.upstream_body(model)
        body["stream"] = False
        body.pop("stream_options", None)
        reply = await post_json(
            self._pool.get(), self._chat_url, orjson.dumps(body), ctx, secrets=self._secrets
        )
        if "error" in reply and "choices" not in reply:
            raise UpstreamError(self._error_text(reply))
        return reply

    async def chat_stream(
        self, request: ChatRequest, model: str, ctx: CallContext
    ) -> AsyncIterator[JSON]:
        """Stream ``chat.completion.chunk`` dicts; the last one carries ``usage``."""
        body = request.upstream_body(model)
        body["stream"] = True
        body["stream_options"] = {**(body.get("stream_options") or {}), "include_usage": True}
        stream = await open_sse(
            self._pool.get(),
            self._chat_url,
            orjson.dumps(body),
            ctx,
            headers=_STREAM_HEADERS,
            secrets=self._secrets,
        )
        finished = False
        try:
            async for _event, data in stream.events():
                if data == _DONE:
                    await stream.finish()
                    return
                chunk = loads_object(data, "stream event")
                choices = chunk.get("choices")
                if not choices and ("error" in chunk or chunk.get("object") == "error"):
                    raise UpstreamError(self._error_text(chunk))
                if choices and choices[0].get("finish_reason"):
                    finished = True
                yield chunk
            if not finished:
                raise UpstreamConnectError("upstream stream ended before completion")
        finally:
            stream.close()

    async def embed(self, request: EmbeddingRequest, model: str, ctx: CallContext) -> JSON:
        """Embeddings (an OpenAI ``list`` with ``usage``) from ``/embeddings``."""
        body = orjson.dumps(request.upstream_body(model))
        reply = await post_json(self._pool.get(), self._embed_url, body, ctx, secrets=self._secrets)
        if "error" in reply and "data" not in reply:
            raise UpstreamError(self._error_text(reply))
        return reply

    async def rerank(self, request: RerankRequest, model: str, ctx: CallContext) -> JSON:
        """Relevance scores from ``/rerank`` (Cohere/Jina format, or TEI's).

        The answer is always Cohere-shaped: ``results`` best first with
        ``index`` and ``relevance_score``, and ``usage.total_tokens`` when the
        upstream reports it.
        """
        texts = request.texts()
        if self.rerank_api == "tei":
            payload: JSON = {"query": request.query, "texts": texts, "raw_scores": False}
        else:
            payload = {"model": model, "query": request.query, "documents": texts}
            if request.top_n is not None:
                payload["top_n"] = request.top_n
        raw = await post_bytes(
            self._pool.get(), self._rerank_url, orjson.dumps(payload), ctx, secrets=self._secrets
        )
        try:
            reply: Any = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise UpstreamError("malformed JSON in upstream rerank response") from None
        rows = reply if isinstance(reply, list) else reply.get("results")
        if not isinstance(rows, list):
            raise UpstreamError(self._error_text(reply if isinstance(reply, dict) else {}))
        results = []
        for r in rows:
            score = r.get("relevance_score", r.get("score"))
            if not isinstance(r.get("index"), int) or not isinstance(score, int | float):
                raise UpstreamError("upstream rerank result without index and score")
            results.append({"index": r["index"], "relevance_score": float(score)})
        results.sort(key=lambda r: -r["relevance_score"])
        if request.top_n is not None:
            results = results[: request.top_n]
        usage = reply.get("usage") if isinstance(reply, dict) else None
        tokens = int((usage or {}).get("total_tokens") or 0)
        return {
            "object": "list",
            "model": model,
            "results": results,
            "usage": {"total_tokens": tokens},
        }

    async def aclose(self) -> None:
        """Close the pooled connections."""
        await self._pool.aclose()

    async def __aenter__(self) -> OpenAICompatProvider:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.aclose()

    def _error_text(self, body: dict[str, Any]) -> str:
        return "upstream error: " + error_message(orjson.dumps(body), 200, self._secrets)
