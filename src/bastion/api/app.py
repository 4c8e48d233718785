"""The ASGI application: the composition root of the server.

It owns the :class:`~bastion.gateway.service.Gateway`, the telemetry objects
and the background tasks (policy hot reload, key-ring refresh), dispatches
requests to the handlers in ``routes_*`` modules, turns every failure into a
clean error body, and records metrics, spans and the access log for each
request after the response has been sent.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bastion.api import (
    routes_admin,
    routes_anthropic,
    routes_guard,
    routes_openai,
    routes_ops,
    routes_prompts,
    routes_rag,
)
from bastion.api.errors import error_headers, to_error
from bastion.api.exchange import Exchange
from bastion.api.guarding import GuardState, state_for
from bastion.api.http import Receive, Request, Scope, Send, dumps, send_json
from bastion.api.metering import Meter, Queues
from bastion.api.rag import RagService
from bastion.config.loader import load_policy
from bastion.core.errors import BastionError, NotFound, PermissionDenied, PolicyError
from bastion.gateway.auth import Principal, bearer
from bastion.gateway.service import Gateway
from bastion.guard.pipeline import guard_for
from bastion.prompts.service import PromptService
from bastion.telemetry.audit import AuditDraft
from bastion.telemetry.batch import BatchQueue
from bastion.telemetry.logging import AccessLog, event
from bastion.telemetry.metrics import Metrics
from bastion.telemetry.tracing import Tracing

log = logging.getLogger("bastion.api")

Handler = Callable[["BastionApp", Exchange], Awaitable[None]]
_RID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


@dataclass(slots=True)
class Stores:
    """The stores the admin API reads (None where this server has none)."""

    usage: Any = None
    audit: Any = None
    payloads: Any = None
    closers: tuple[Callable[[], Any], ...] = ()


@dataclass(frozen=True, slots=True)
class Route:
    endpoint: str
    handler: Handler
    anthropic: bool = False


ROUTES: dict[tuple[str, str], Route] = {
    ("POST", "/v1/chat/completions"): Route("chat", routes_openai.chat_completions),
    ("POST", "/v1/embeddings"): Route("embeddings", routes_openai.embeddings),
    ("POST", "/v1/rerank"): Route("rerank", routes_openai.rerank),
    ("GET", "/v1/models"): Route("models", routes_openai.models),
    ("POST", "/v1/messages"): Route("messages", routes_anthropic.messages, anthropic=True),
    ("POST", "/v1/guard/scan"): Route("guard", routes_guard.scan),
    ("GET", "/healthz"): Route("healthz", routes_ops.healthz),
    ("GET", "/readyz"): Route("readyz", routes_ops.readyz),
    ("GET", "/metrics"): Route("metrics", routes_ops.metrics),
    ("GET", "/v1/collections"): Route("rag", routes_rag.collections),
    ("POST", "/v1/collections"): Route("rag", routes_rag.collections),
    ("POST", "/v1/rag/query"): Route("rag", routes_rag.query),
    ("GET", "/v1/prompts"): Route("prompts", routes_prompts.prompts),
    ("POST", "/v1/prompts"): Route("prompts", routes_prompts.prompts),
    ("GET", "/admin/keys"): Route("admin", routes_admin.list_keys),
    ("POST", "/admin/keys"): Route("admin", routes_admin.create_key),
    ("GET", "/admin/tenants"): Route("admin", routes_admin.list_tenants),
    ("POST", "/admin/tenants"): Route("admin", routes_admin.create_tenant),
    ("GET", "/admin/teams"): Route("admin", routes_admin.list_teams),
    ("POST", "/admin/teams"): Route("admin", routes_admin.create_team),
    ("GET", "/admin/budgets"): Route("admin", routes_admin.list_budgets),
    ("POST", "/admin/budgets"): Route("admin", routes_admin.set_budget),
    ("GET", "/admin/usage"): Route("admin", routes_admin.usage),
    ("GET", "/admin/audit"): Route("admin", routes_admin.audit_events),
    ("POST", "/admin/policy/reload"): Route("admin", routes_ops.reload_policy),
}
PREFIX_ROUTES: list[tuple[str, str, Route]] = [
    ("GET", "/v1/models/", Route("models", routes_openai.models)),
    ("DELETE", "/admin/keys/", Route("admin", routes_admin.revoke_key)),
    ("DELETE", "/admin/budgets/", Route("admin", routes_admin.delete_budget)),
    ("GET", "/admin/tenants/", Route("admin", routes_admin.tenant_item)),
    ("PATCH", "/admin/tenants/", Route("admin", routes_admin.tenant_item)),
    ("GET", "/v1/collections/", Route("rag", routes_rag.collection_item)),
    ("POST", "/v1/collections/", Route("rag", routes_rag.collection_item)),
    ("DELETE", "/v1/collections/", Route("rag", routes_rag.collection_item)),
    ("GET", "/v1/jobs/", Route("rag", routes_rag.job_item)),
    ("GET", "/v1/prompts/", Route("prompts", routes_prompts.prompt_item)),
    ("POST", "/v1/prompts/", Route("prompts", routes_prompts.prompt_item)),
]
_UNTRACKED = {"healthz", "readyz", "metrics"}


class BastionApp:
    """The ASGI callable."""

    def __init__(
        self,
        gateway: Gateway,
        *,
        metrics: Metrics,
        tracing: Tracing,
        policy_path: Path | None = None,
        key_refresh_s: float = 1.0,
        audit: BatchQueue[AuditDraft] | None = None,
        meter: Meter | None = None,
        stores: Stores | None = None,
        rag: RagService | None = None,
        prompts: PromptService | None = None,
    ) -> None:
        self.gateway = gateway
        self.rag = rag or RagService(None, None, unavailable="RAG is not configured on this server")
        self.prompts = prompts  # the prompt registry (None: its endpoints answer unsupported)
        self.metrics = metrics
        self.tracing = tracing
        self.policy_path = policy_path
        self.key_refresh_s = key_refresh_s
        self._tasks: list[asyncio.Task[None]] = []
        self.access_log = AccessLog()
        self.audit_queue = audit
        self.stores = stores or Stores()
        if meter is None:
            from bastion.gateway.governance import Governor
            from bastion.gateway.quota import MemoryCounters

            meter = Meter(gateway, Governor(MemoryCounters()), metrics, Queues(audit=audit))
        self.meter = meter
        gateway.governor = meter.governor
        self.started_at = time.time()

    @property
    def max_body(self) -> int:
        return self.gateway.rt.policy.server.max_body_bytes

    # ------------------------------------------------------------------ ASGI
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await self._http(scope, receive, send)
        elif scope["type"] == "lifespan":
            await self._lifespan(receive, send)

    def _route(self, method: str, path: str) -> Route | None:
        route = ROUTES.get((method, path))
        if route is None:
            for m, prefix, r in PREFIX_ROUTES:
                if m == method and path.startswith(prefix) and len(path) > len(prefix):
                    return r
        return route

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        req = Request(scope, receive)
        rid = req.headers.get("x-request-id", "")
        if not _RID.match(rid):
            rid = "req_" + os.urandom(12).hex()
        route = self._route(req.method, req.path)
        ex = Exchange(req, send, rid, route.endpoint if route else "unknown")
        in_flight = self.metrics.in_flight
        in_flight.inc()
        try:
            if route is None:
                raise NotFound(f"no route for {req.method} {req.path}")
            await route.handler(self, ex)
        except asyncio.CancelledError:
            ex.status, ex.error_code = 499, "client_disconnected"
            raise
        except BaseException as exc:
            err = to_error(
                exc, rid, expose_upstream=self.gateway.rt.policy.server.expose_upstream_errors
            )
            ex.status, ex.error_code = err.status, err.code
            if not ex.started:
                await self._send_error(ex, err, anthropic=bool(route and route.anthropic))
        finally:
            in_flight.dec()
            if ex.principal is not None:
                try:
                    await self.meter.finish(ex)
                except Exception:
                    log.exception("recording the request failed")
            if ex.endpoint not in _UNTRACKED:
                self._record(ex)

    async def _send_error(self, ex: Exchange, err: BastionError, *, anthropic: bool) -> None:
        if anthropic:
            from bastion.providers.anthropic_format import error_body

            payload = dumps(error_body(err))
        else:
            payload = dumps(err.to_body())
        headers = error_headers(err, ex.rid)
        if ex.deployment:
            headers.append((b"x-bastion-deployment", ex.deployment.encode()))
        headers.append((b"x-bastion-overhead-ms", f"{ex.overhead_s() * 1000:.3f}".encode()))
        ex.started = True
        await send_json(ex.send, err.status, payload, headers)

    def _record(self, ex: Exchange) -> None:
        total = time.perf_counter() - ex.t0
        overhead = max(0.0, total - ex.ctx.upstream_s)
        m = self.metrics
        m.request(ex.endpoint, ex.model, ex.status, total, overhead)
        if ex.error_code:
            m.error(ex.endpoint, ex.error_code)
        if ex.prompt_tokens or ex.completion_tokens:
            m.usage(ex.model, ex.prompt_tokens, ex.completion_tokens)
        if ex.streamed and ex.ttft_s is not None:
            m.first_token(ex.model, ex.ttft_s)
        if self.tracing.enabled and ex.endpoint in {"chat", "embeddings", "messages"}:
            self.tracing.record(
                operation="embeddings" if ex.endpoint == "embeddings" else "chat",
                request_model=ex.model,
                provider=ex.provider,
                response_model=ex.response_model,
                start_ns=ex.t0_ns,
                end_ns=ex.t0_ns + int(total * 1e9),
                attributes={
                    "gen_ai.usage.input_tokens": ex.prompt_tokens,
                    "gen_ai.usage.output_tokens": ex.completion_tokens,
                    "bastion.request_id": ex.rid,
                    "bastion.deployment": ex.deployment,
                    "bastion.overhead_ms": round(overhead * 1000, 3),
                    **ex.request_attrs,
                },
                error_type=ex.error_code,
            )
        if self.gateway.rt.policy.telemetry.access_log:
            self.access_log.write(
                request_id=ex.rid,
                endpoint=ex.endpoint,
                method=ex.req.method,
                model=ex.model,
                key=ex.key_name,
                deployment=ex.deployment,
                status=ex.status,
                error_code=ex.error_code,
                stream=ex.streamed,
                duration_ms=round(total * 1000, 3),
                overhead_ms=round(overhead * 1000, 3),
                input_tokens=ex.prompt_tokens,
                output_tokens=ex.completion_tokens,
            )

    # ------------------------------------------------------------------ guardrails
    def guard_state(self, ex: Exchange, principal: Principal, model: str) -> GuardState | None:
        """The request's guard context, if its model has a pipeline."""
        pipeline = guard_for(self.gateway.rt.policy).for_model(model)
        state = state_for(pipeline, principal.tenant_name, model, self.metrics)
        ex.guard = state
        return state

    # ------------------------------------------------------------------ auth
    def authenticate(self, ex: Exchange, *, admin: bool = False) -> Principal:
        h = ex.req.headers
        token = bearer(h.get("authorization")) or h.get("x-api-key")
        principal = self.gateway.authenticate(token)
        ex.key_name = principal.name
        if admin and not principal.admin:
            raise PermissionDenied("this endpoint needs an admin key")
        return principal

    # ------------------------------------------------------------------ lifespan
    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            msg = await receive()
            if msg["type"] == "lifespan.startup":
                try:
                    await self.startup()
                except Exception as exc:
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif msg["type"] == "lifespan.shutdown":
                await self.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def startup(self) -> None:
        # Everything loaded so far lives as long as the process: keep it out of
        # the collector's generations so collections stay short (tail latency).
        gc.collect()
        gc.freeze()
        for q in self._queues():
            q.start()
        await self.seed_budgets()
        self._tasks.append(asyncio.create_task(self._refresh_keys_loop()))
        if self.stores.payloads is not None:
            self._tasks.append(asyncio.create_task(self._purge_loop()))
        if self.policy_path is not None:
            self._tasks.append(asyncio.create_task(self._watch_policy()))

    async def shutdown(self) -> None:
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.gateway.aclose()
        await self.rag.aclose()
        # usage first: draining it may still add nothing, but audit and payload
        # rows of the last requests must land too
        for q in self._queues():
            await q.drain()
        if self.meter.cache is not None:
            await self.meter.cache.aclose()
        await self.meter.governor.counters.aclose()
        for close in self.stores.closers:
            try:
                close()
            except Exception:
                log.exception("closing a store failed")
        self.access_log.flush()
        self.tracing.shutdown()

    def _queues(self) -> list[BatchQueue[Any]]:
        q = self.meter.queues
        out: list[BatchQueue[Any]] = [x for x in (q.usage, q.payloads) if x is not None]
        if self.audit_queue is not None:
            out.append(self.audit_queue)
        return out

    async def _purge_loop(self, every_s: float = 3600.0) -> None:
        """Delete request content older than the logging policy's retention."""
        while True:
            days = self.gateway.rt.policy.governance.logging.retention_days
            if days is not None:
                try:
                    n = await asyncio.to_thread(
                        self.stores.payloads.purge, time.time() - days * 86400
                    )
                    if n:
                        event(log, "purged request content", rows=n, retention_days=days)
                except Exception:
                    log.exception("payload purge failed")
            await asyncio.sleep(every_s)

    async def _refresh_keys_loop(self) -> None:
        while True:
            await asyncio.sleep(self.key_refresh_s)
            try:
                if await asyncio.to_thread(self.gateway.refresh_keys):
                    await self.seed_budgets()  # a budget made elsewhere (CLI, a replica)
            except Exception:
                log.exception("key refresh failed")
            for q in self._queues():
                self.metrics.queue_depth.labels(q.name).set(q.pending)
                self.metrics.queue_refused.labels(q.name).set(q.refused)

    async def audit(
        self, kind: str, actor: str | None, tenant: str | None = None, **data: Any
    ) -> None:
        """Record an admin action in the audit log (batched, off the request path)."""
        if self.audit_queue is not None:
            await self.audit_queue.put(AuditDraft(kind=kind, actor=actor, tenant=tenant, data=data))

    async def seed_budgets(self) -> None:
        """Start missing budget counters from the usage rows of their period.

        A counter is missing after a restart (embedded mode), a Redis flush or
        at a new period; ``seed`` sets it only when absent, so a counter that
        replicas are already sharing is never overwritten.
        """
        store, usage = self.gateway.keystore, self.stores.usage
        if store is None or usage is None:
            return
        try:
            budgets = await asyncio.to_thread(store.list_budgets)
            governor = self.meter.governor
            for b in budgets:
                since = governor.period_start(b.period)
                spent_usd, spent_tokens = await asyncio.to_thread(
                    usage.spent, b.scope, b.scope_id, since
                )
                await governor.seed(b, spent_usd, spent_tokens)
        except Exception:
            log.exception("seeding budget counters failed")

    async def reload_policy(self, actor: str | None = "policy-watch") -> tuple[bool, list[str]]:
        """Load the policy file again; keep the old one on any error."""
        assert self.policy_path is not None
        try:
            policy = await asyncio.to_thread(load_policy, self.policy_path)
            await self.gateway.apply(policy)
        except PolicyError as exc:
            problems = [f"{f}:{line}: {reason}" for f, line, reason in exc.problems]
            self.metrics.policy_reloads.labels("rejected").inc()
            await self.audit("admin.policy.reload", actor, applied=False, problems=problems)
            event(
                log,
                "policy rejected; the previous policy keeps serving",
                logging.ERROR,
                problems=problems,
            )
            return False, problems
        except BastionError as exc:
            self.metrics.policy_reloads.labels("rejected").inc()
            await self.audit("admin.policy.reload", actor, applied=False, problems=[exc.message])
            event(
                log,
                "policy rejected; the previous policy keeps serving",
                logging.ERROR,
                problems=[exc.message],
            )
            return False, [exc.message]
        self.metrics.policy_reloads.labels("applied").inc()
        await self.audit("admin.policy.reload", actor, applied=True, models=sorted(policy.models))
        event(log, "policy applied", models=len(policy.models), providers=len(policy.providers))
        return True, []

    async def _watch_policy(self) -> None:
        from watchfiles import awatch

        assert self.policy_path is not None
        target = str(self.policy_path.absolute())
        folder = os.path.dirname(target)

        def is_policy(_change: object, path: str) -> bool:
            # the policy file, or a YAML file beside it (its includes live there)
            return path == target or (
                os.path.dirname(path) == folder and path.endswith((".yaml", ".yml"))
            )

        # watch the directory (editors replace files rather than write in place),
        # non-recursively and only for policy files
        async for _ in awatch(
            os.path.dirname(target), watch_filter=is_policy, recursive=False, debounce=200, step=50
        ):
            try:
                await self.reload_policy()
            except Exception:
                log.exception("policy reload failed")
