"""The provider protocol: the one seam between Bastion and any model backend.

A *provider* is one configured backend (an OpenAI-compatible endpoint, the
Anthropic API, the bundled local model, a test fake). It is called with a
canonical :class:`~bastion.core.types.ChatRequest` and the provider-side model
name, and returns OpenAI-shaped JSON. Reliability (retries, fallbacks, circuit
breakers) lives in the gateway and wraps providers; adapters only translate and
classify failures into :mod:`bastion.core.errors`:

* an HTTP 429 -> ``UpstreamRateLimited`` (with ``retry_after`` from ``Retry-After``)
* 5xx, 408, 409 -> ``UpstreamError`` (retryable)
* other 4xx -> ``UpstreamClientError`` (never retried, never falls back)
* connect failure -> ``UpstreamConnectError``; any timeout -> ``UpstreamTimeout``

Streams yield ``chat.completion.chunk`` dicts; an adapter that sees the
upstream stream die raises one of the errors above from the iterator.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from bastion.core.types import JSON, ChatRequest, EmbeddingRequest, RerankRequest


@dataclass(slots=True)
class Timeouts:
    """Per-attempt timeouts in seconds (``None``: no limit)."""

    connect: float | None = 5.0
    first_byte: float | None = 60.0
    total: float | None = 600.0
    stream_idle: float | None = 30.0


@dataclass(slots=True)
class CallContext:
    """What a provider call needs besides the request, and what it reports back.

    ``upstream_s`` is incremented by adapters with the time spent waiting on the
    backend, so the API can report Bastion's own overhead (total minus upstream).
    """

    request_id: str
    timeouts: Timeouts = field(default_factory=Timeouts)
    upstream_s: float = 0.0
    tokens_estimate: int = 0
    """Prompt plus output-cap tokens (checked against a deployment's TPM quota)."""

    def clock(self) -> float:
        return time.perf_counter()


@runtime_checkable
class Provider(Protocol):
    """One backend. Implementations: openai_compat, anthropic, local, fake."""

    name: str
    """The provider's id in the policy file (``providers.<name>``)."""

    type: str
    """The adapter kind: ``openai``, ``anthropic``, ``local`` or ``fake``."""

    async def chat(self, request: ChatRequest, model: str, ctx: CallContext) -> JSON:
        """A non-streaming chat completion (``chat.completion`` object)."""
        ...

    def chat_stream(
        self, request: ChatRequest, model: str, ctx: CallContext
    ) -> AsyncIterator[JSON]:
        """Stream ``chat.completion.chunk`` objects; the last carries ``usage``."""
        ...

    async def embed(self, request: EmbeddingRequest, model: str, ctx: CallContext) -> JSON:
        """An OpenAI ``list`` of embeddings with ``usage``."""
        ...

    async def aclose(self) -> None:
        """Release pooled connections, threads or model memory."""
        ...


@runtime_checkable
class SupportsRerank(Protocol):
    """A provider that can rerank documents for a query (``/rerank`` upstreams)."""

    async def rerank(self, request: RerankRequest, model: str, ctx: CallContext) -> JSON:
        """``{"results": [{"index", "relevance_score"}], "usage": {"total_tokens"}}``,
        best first."""
        ...
