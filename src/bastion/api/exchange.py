"""Per-request state shared by the API handlers and the app's bookkeeping."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from bastion.api.guarding import GuardState
from bastion.api.http import SSE_HEADERS, Request, Send, send_json
from bastion.core.types import JSON, ChatRequest, usage_of
from bastion.gateway.auth import Principal
from bastion.gateway.cache import Lookup, StreamAssembler
from bastion.gateway.governance import Ticket
from bastion.gateway.router import Deployment
from bastion.providers.base import CallContext


@dataclass(slots=True)
class Exchange:
    """One request/response exchange: identity, timing, routing and usage."""

    req: Request
    send: Send
    rid: str
    endpoint: str
    t0: float = field(default_factory=time.perf_counter)
    t0_ns: int = field(default_factory=time.time_ns)
    model: str = "-"
    key_name: str | None = None
    deployment: str | None = None
    provider: str | None = None
    response_model: str | None = None
    status: int = 200
    error_code: str | None = None
    started: bool = False
    streamed: bool = False
    ttft_s: float | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    request_attrs: dict[str, object] = field(default_factory=dict)
    extra_headers: list[tuple[bytes, bytes]] = field(default_factory=list)  # sent on any answer
    # governance (set by bastion.api.metering)
    principal: Principal | None = None
    dep: Deployment | None = None
    tags: tuple[str, ...] = ()
    ticket: Ticket | None = None
    look: Lookup | None = None
    cache: str | None = None  # "hit" | "miss" | None (not cached)
    cache_write: bool = True
    cost_micro: int | None = None
    cached_tokens: int = 0
    prompt_estimate: int = 0
    assembler: StreamAssembler | None = None
    completion: JSON | None = None
    chat_request: ChatRequest | None = None  # kept for the logging policy's content
    guard: GuardState | None = None  # when the model has guardrails
    ctx: CallContext = field(init=False)

    def __post_init__(self) -> None:
        self.ctx = CallContext(self.rid)

    def overhead_s(self) -> float:
        return max(0.0, time.perf_counter() - self.t0 - self.ctx.upstream_s)

    def routing_headers(self) -> list[tuple[bytes, bytes]]:
        h = [(b"x-request-id", self.rid.encode())]
        if self.deployment:
            h.append((b"x-bastion-deployment", self.deployment.encode()))
        h.append((b"x-bastion-overhead-ms", f"{self.overhead_s() * 1000:.3f}".encode()))
        h.extend(self.governance_headers())
        h.extend(self.extra_headers)
        return h

    def governance_headers(self) -> list[tuple[bytes, bytes]]:
        h = []
        if self.cache is not None:
            h.append((b"x-bastion-cache", self.cache.encode()))
        if self.cost_micro is not None:
            h.append((b"x-bastion-cost-usd", f"{self.cost_micro / 1e6:.6f}".encode()))
        if self.ticket is not None:
            h.extend(self.ticket.headers)
        return h

    def add_usage(self, body: JSON | None) -> None:
        p, c = usage_of(body)
        if p or c:
            self.prompt_tokens, self.completion_tokens = p, c
            details = (body or {}).get("usage", {}).get("prompt_tokens_details") or {}
            self.cached_tokens = int(details.get("cached_tokens") or 0)

    def routed(self, deployment: Deployment) -> None:
        """Record which deployment answered."""
        self.dep = deployment
        self.deployment, self.provider = deployment.id, deployment.provider.name

    async def start_sse(self) -> None:
        """Send the headers of a 200 event stream (time to first token ends here)."""
        self.status = 200
        self.started = True
        self.ttft_s = time.perf_counter() - self.t0
        await self.send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": SSE_HEADERS + self.routing_headers(),
            }
        )

    async def respond(self, status: int, payload: bytes) -> None:
        self.status = status
        self.started = True
        await send_json(self.send, status, payload, self.routing_headers())
