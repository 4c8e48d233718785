"""Governance around each data-plane request: admit, cache, price, record.

:meth:`Meter.admit_chat` (and :meth:`Meter.admit_embed`) run before the model
call: they read the caller's tags, take the request's rate-limit and budget
reservation (:class:`~bastion.gateway.governance.Governor`), and look the
request up in the response cache. :meth:`Meter.price` computes the cost once
the usage is known (before the response is sent, so it can go in the
``x-bastion-cost-usd`` header). :meth:`Meter.finish` runs after the response
has been sent: it settles the reservation with real (or, for an interrupted
stream, estimated) usage, stores the answer in the cache, and queues the
usage row, the audit event and the payload the logging policy allows. Nothing
here touches a database: rows go through bounded in-process queues.
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass
from typing import Any

import orjson

from bastion.api.exchange import Exchange
from bastion.config.schema import Policy
from bastion.core.types import ChatRequest
from bastion.gateway.auth import BudgetRule, Principal, ScopeLimits
from bastion.gateway.cache import ResponseCache, StreamAssembler
from bastion.gateway.governance import Governor, estimate_tokens, message_chars
from bastion.gateway.router import ModelPlan
from bastion.gateway.service import Gateway
from bastion.telemetry.audit import AuditDraft
from bastion.telemetry.batch import BatchQueue
from bastion.telemetry.logging import event
from bastion.telemetry.metrics import Metrics
from bastion.telemetry.payloads import (
    LoggingPolicy,
    LoggingRule,
    PayloadRecord,
    Redactor,
    RegexRedactor,
)
from bastion.telemetry.usage import UsageRecord

log = logging.getLogger("bastion.governance")
MAX_TAGS = 16


def logging_policy(policy: Policy) -> LoggingPolicy:
    cfg = policy.governance.logging
    return LoggingPolicy(
        default=cfg.default,
        rules=tuple(LoggingRule(r.mode, r.tenant, r.model) for r in cfg.rules),
        retention_days=cfg.retention_days,
    )


def parse_tags(header: str | None, metadata: dict[str, Any] | None) -> tuple[str, ...]:
    """Caller tags from ``x-bastion-tags`` (comma-separated) and ``metadata.tags``."""
    tags: list[str] = []
    if header:
        tags += [t.strip() for t in header.split(",")]
    if metadata:
        raw = metadata.get("tags")
        if isinstance(raw, str):
            tags += [t.strip() for t in raw.split(",")]
        elif isinstance(raw, list):
            tags += [str(t).strip() for t in raw]
    clean = [t[:64] for t in tags if t]
    return tuple(dict.fromkeys(clean))[:MAX_TAGS]


@dataclass(slots=True)
class Queues:
    usage: BatchQueue[UsageRecord] | None = None
    audit: BatchQueue[AuditDraft] | None = None
    payloads: BatchQueue[PayloadRecord] | None = None


class Meter:
    def __init__(
        self,
        gateway: Gateway,
        governor: Governor,
        metrics: Metrics,
        queues: Queues,
        *,
        cache: ResponseCache | None = None,
        redactor: Redactor | None = None,
    ) -> None:
        self.gateway = gateway
        self.governor = governor
        self.metrics = metrics
        self.queues = queues
        self.cache = cache
        self.redactor = redactor or RegexRedactor()
        self._logging: tuple[Policy, LoggingPolicy] | None = None
        governor.on_soft_budget = self._soft_budget

    def logging(self) -> LoggingPolicy:
        policy = self.gateway.rt.policy
        if self._logging is None or self._logging[0] is not policy:
            self._logging = (policy, logging_policy(policy))
        return self._logging[1]

    # ------------------------------------------------------------------ before
    async def _reserve(self, ex: Exchange, principal: Principal, plan: ModelPlan, out: int) -> None:
        ex.principal = principal
        tokens = ex.prompt_estimate + out
        ex.ctx.tokens_estimate = tokens
        if not Governor.needed(principal):
            return
        price = self.gateway.rt.reserve_price(plan)
        micro = price.micro_usd(ex.prompt_estimate, out) if price is not None else 0
        ex.ticket = await self.governor.admit(principal, tokens, micro)

    async def admit_chat(
        self,
        ex: Exchange,
        principal: Principal,
        plan: ModelPlan,
        req: ChatRequest,
        *,
        no_cache: bool = False,
    ) -> None:
        """Tags, reservation and cache lookup; ``ex.completion`` holds a cache hit."""
        ex.tags = parse_tags(ex.req.headers.get("x-bastion-tags"), req.metadata)
        ex.prompt_estimate = estimate_tokens(message_chars(req.messages))
        out = req.output_limit() or self.gateway.rt.policy.governance.default_max_tokens
        await self._reserve(ex, principal, plan, out)
        if req.stream:
            ex.assembler = StreamAssembler()
        cfg = self.gateway.rt.policy.models[plan.alias].cache
        if cfg is None or self.cache is None:
            return
        mode = (ex.req.headers.get("x-bastion-cache") or "").lower()
        ex.cache = "miss"
        if mode == "bypass" or no_cache:  # no_cache: the request carried redacted values
            ex.cache_write = False
            return
        if mode == "refresh":
            return
        tenant = principal.tenant_id or "-"
        try:
            ex.look = await self.cache.lookup(tenant, plan.alias, cfg, req)
        except Exception as exc:  # a cache outage must not fail the request
            event(log, "cache lookup failed", logging.WARNING, error=type(exc).__name__)
            return
        self.metrics.cache(plan.alias, ex.look.kind)
        if ex.look.hit is not None:
            ex.cache = "hit"
            ex.completion = ex.look.hit
            ex.cost_micro = 0
            ex.response_model = ex.look.hit.get("model")

    async def admit_embed(
        self, ex: Exchange, principal: Principal, plan: ModelPlan, texts: list[str]
    ) -> None:
        ex.tags = parse_tags(ex.req.headers.get("x-bastion-tags"), None)
        ex.prompt_estimate = estimate_tokens(sum(len(t) for t in texts))
        await self._reserve(ex, principal, plan, 0)

    # ------------------------------------------------------------------ cost
    def price(self, ex: Exchange) -> int:
        """The cost of the request so far (micro-dollars); also sets ``ex.cost_micro``."""
        if ex.cache == "hit":
            ex.cost_micro = 0
            return 0
        prompt, completion, _ = self._tokens(ex)
        dep = ex.dep
        price = self.gateway.rt.price(dep) if dep is not None else None
        if price is None:
            if dep is not None and (prompt or completion):
                self.metrics.unpriced(ex.model)
            ex.cost_micro = 0
        else:
            ex.cost_micro = price.micro_usd(prompt, completion, ex.cached_tokens)
        return ex.cost_micro

    def _tokens(self, ex: Exchange) -> tuple[int, int, bool]:
        """``(prompt, completion, estimated)``: reported usage, else an estimate."""
        if ex.prompt_tokens or ex.completion_tokens:
            return ex.prompt_tokens, ex.completion_tokens, False
        asm = ex.assembler
        if ex.dep is not None and asm is not None and asm.chunks:
            # an interrupted stream: count what was generated before it ended
            return ex.prompt_estimate, max(asm.chunks, estimate_tokens(asm.chars)), True
        return 0, 0, False

    # ------------------------------------------------------------------ after
    async def finish(self, ex: Exchange) -> None:
        """Settle, cache and record one request (after its response was sent)."""
        principal = ex.principal
        if principal is None:
            return
        prompt, completion, estimated = self._tokens(ex)
        hit = ex.cache == "hit"
        if hit:
            prompt = completion = 0
        micro = ex.cost_micro if ex.cost_micro is not None else self.price(ex)
        if ex.ticket is not None:
            await self.governor.settle(ex.ticket, prompt + completion, micro)
        if ex.assembler is not None and ex.completion is None and ex.status == 200:
            ex.completion = ex.assembler.completion()
        await self._store_cache(ex)
        latency = (time.perf_counter() - ex.t0) * 1000
        self.metrics.cost(ex.model, micro / 1e6)
        record = UsageRecord(
            request_id=ex.rid,
            tenant_id=principal.tenant_id,
            team_id=principal.team_id,
            key_id=principal.key_id,
            model=ex.model,
            endpoint=ex.endpoint,
            status=ex.status,
            deployment=ex.deployment,
            provider=ex.provider,
            error_code=ex.error_code,
            prompt_tokens=prompt,
            completion_tokens=completion,
            cached_tokens=ex.cached_tokens,
            cost_usd=micro / 1e6,
            cache=ex.cache,
            stream=ex.streamed,
            estimated=estimated,
            tags=ex.tags,
            latency_ms=round(latency, 3),
        )
        q = self.queues
        if q.usage is not None:
            await q.usage.put(record)
        await self._audit(ex, principal, record)

    async def _store_cache(self, ex: Exchange) -> None:
        look, comp = ex.look, ex.completion
        if self.cache is None or comp is None or ex.cache != "miss" or not ex.cache_write:
            return
        if ex.status != 200 or ex.principal is None:
            return
        cfg = self.gateway.rt.policy.models.get(ex.model)
        if cfg is None or cfg.cache is None:
            return
        try:
            if look is None:
                return
            await self.cache.store(look, cfg.cache, comp)
        except Exception as exc:
            event(log, "cache store failed", logging.WARNING, error=type(exc).__name__)

    async def _audit(self, ex: Exchange, principal: Principal, rec: UsageRecord) -> None:
        q = self.queues
        mode = self.logging().mode_for(principal.tenant_name or "-", ex.model)
        if mode == "none" or q.audit is None:
            return
        data: dict[str, Any] = {
            "endpoint": rec.endpoint,
            "model": rec.model,
            "deployment": rec.deployment,
            "status": rec.status,
            "error_code": rec.error_code,
            "prompt_tokens": rec.prompt_tokens,
            "completion_tokens": rec.completion_tokens,
            "cost_usd": rec.cost_usd,
            "cache": rec.cache,
            "stream": rec.stream,
            "tags": list(rec.tags),
            "team": principal.team_id,
        }
        if ex.guard is not None and ex.guard.findings:
            data["guard"] = ex.guard.findings[:50]
        if mode in ("redacted", "full") and q.payloads is not None:
            req = ex.chat_request
            messages = [m.model_dump(exclude_none=True) for m in req.messages] if req else []
            prompt = orjson.dumps(messages).decode()
            comp = _completion_text(ex)
            if mode == "redacted":
                prompt, comp = self.redactor.redact(prompt), self.redactor.redact(comp)
            payload = PayloadRecord(ex.rid, principal.tenant_id, ex.model, mode, prompt, comp)
            data["content"] = mode
            data["content_sha256"] = hashlib.sha256(
                orjson.dumps([payload.prompt, payload.completion])
            ).hexdigest()
            await q.payloads.put(payload)
        await q.audit.put(
            AuditDraft(
                kind="request",
                actor=principal.key_id,
                tenant=principal.tenant_id,
                request_id=ex.rid,
                data=data,
            )
        )

    def _soft_budget(self, scope: ScopeLimits, rule: BudgetRule, value: int, limit: int) -> None:
        self.metrics.budget_alert(scope.kind)
        event(
            log,
            "soft budget exceeded",
            logging.WARNING,
            scope=scope.kind,
            scope_id=scope.id,
            budget=rule.id,
            period=rule.period,
            value=value,
            limit=limit,
        )
        if self.queues.audit is not None:
            self.queues.audit.put_nowait(
                AuditDraft(
                    kind="budget.soft_exceeded",
                    data={"scope": scope.kind, "scope_id": scope.id, "budget": rule.id},
                )
            )


def _completion_text(ex: Exchange) -> str:
    comp = ex.completion
    if comp is None:
        return ex.assembler.text() if ex.assembler is not None else ""
    parts = []
    for choice in comp.get("choices") or []:
        msg = choice.get("message") or {}
        if msg.get("content"):
            parts.append(str(msg["content"]))
        if msg.get("tool_calls"):
            parts.append(orjson.dumps(msg["tool_calls"]).decode())
        if "embedding" in choice:
            break
    return "\n".join(parts)
