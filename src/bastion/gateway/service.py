"""The gateway service: a policy turned into providers, plans and keys.

:class:`Gateway` holds an immutable :class:`Runtime` snapshot built from a
validated policy. ``apply(policy)`` builds the next snapshot (reusing provider
instances, connection pools and breakers whose configuration did not change)
and swaps it in one assignment, so requests in flight finish on the snapshot
they started with. A policy that fails to build leaves the old one serving.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field

from bastion.config.schema import ModelConfig, Policy, ProviderConfig, RouteConfig
from bastion.core.errors import DeploymentQuotaExceeded, InvalidRequest, ModelNotFound, Unsupported
from bastion.core.secrets import hash_key, resolve
from bastion.core.types import JSON, ChatRequest, EmbeddingRequest, RerankRequest
from bastion.gateway.auth import KeyRecord, KeyRing, Principal
from bastion.gateway.breaker import CircuitBreaker
from bastion.gateway.directory import build_ring
from bastion.gateway.governance import Governor
from bastion.gateway.pricing import Price, PriceBook
from bastion.gateway.router import (
    Deployment,
    Ewma,
    ModelPlan,
    Router,
    RouterObserver,
    breaker_listener,
)
from bastion.gateway.tenancy import DEFAULT_TENANT, GovernanceStore
from bastion.providers import registry
from bastion.providers.base import CallContext, Provider, SupportsRerank, Timeouts

log = logging.getLogger("bastion.gateway")


@dataclass(slots=True)
class Runtime:
    """One applied policy."""

    policy: Policy
    providers: dict[str, tuple[ProviderConfig, Provider]]
    plans: dict[str, ModelPlan]
    deployments: dict[str, Deployment] = field(default_factory=dict)
    prices: PriceBook = field(default_factory=PriceBook)
    _reserve: dict[str, Price | None] = field(default_factory=dict)

    def price(self, dep: Deployment) -> Price | None:
        """The price of a deployment (None: priced nowhere)."""
        return self.prices.lookup(dep.provider.name, dep.model)

    def reserve_price(self, plan: ModelPlan) -> Price | None:
        """The dearest price among a plan's deployments and fallbacks (for reservations)."""
        if plan.alias in self._reserve:
            return self._reserve[plan.alias]
        prices: list[Price] = []
        seen: set[str] = set()

        def walk(p: ModelPlan) -> None:
            if p.alias in seen:
                return
            seen.add(p.alias)
            for d in p.deployments:
                if (pr := self.price(d)) is not None:
                    prices.append(pr)
            for fb in p.fallbacks:
                if isinstance(fb, ModelPlan):
                    walk(fb)
                elif (pr := self.price(fb)) is not None:
                    prices.append(pr)

        walk(plan)
        best = (
            Price(
                max(p.input for p in prices),
                max(p.output for p in prices),
                max(p.input if p.cached_input is None else p.cached_input for p in prices),
            )
            if prices
            else None
        )
        self._reserve[plan.alias] = best
        return best


def policy_keys(policy: Policy) -> list[KeyRecord]:
    """The keys a policy declares, as records (secrets resolved and hashed)."""
    out = []
    for name, k in policy.keys.items():
        if k.sha256:
            digest = k.sha256
        else:
            secret = resolve(k.secret)
            assert secret is not None
            digest = hash_key(secret.reveal())
        out.append(
            KeyRecord(
                id=f"policy:{name}",
                name=name,
                hash=digest,
                models=tuple(k.models),
                role="admin" if k.admin else k.role,
                tenant_id=None if k.admin else (k.tenant or DEFAULT_TENANT),
                team_id=k.team,
                rpm=k.rpm,
                tpm=k.tpm,
            )
        )
    return out


def _timeouts(m: ModelConfig) -> Timeouts:
    """``timeout_s`` sets the total, and the first-byte limit unless that is given."""
    t = m.timeouts
    total = m.timeout_s if m.timeout_s is not None else t.total_s
    first_byte = t.first_byte_s if "first_byte_s" in t.model_fields_set else total
    return Timeouts(
        connect=t.connect_s,
        first_byte=min(first_byte, total),
        total=total,
        stream_idle=t.stream_idle_s,
    )


class Gateway:
    """Routes authenticated calls to providers under the current policy."""

    def __init__(
        self,
        policy: Policy,
        *,
        observer: RouterObserver | None = None,
        keystore: GovernanceStore | None = None,
        extra_keys: Iterable[KeyRecord] = (),
        factories: dict[str, registry.Factory] | None = None,
    ) -> None:
        self.observer = observer
        self.router = Router(observer)
        self.keystore = keystore
        self.governor: Governor | None = None
        self.extra_keys = list(extra_keys)
        self._factories = factories
        self._keys_version = -1
        self.keyring = KeyRing({})
        self.rt = self._build(policy, None)
        self._policy_keys = policy_keys(policy)
        self.refresh_keys(force=True)

    # ------------------------------------------------------------------ policy
    def _build(self, policy: Policy, old: Runtime | None) -> Runtime:
        providers: dict[str, tuple[ProviderConfig, Provider]] = {}
        for name, cfg in policy.providers.items():
            prev = old.providers.get(name) if old else None
            if prev is not None and prev[0] == cfg:
                providers[name] = prev
            else:
                providers[name] = (cfg, registry.build(name, cfg, self._factories))
        old_deps = old.deployments if old else {}
        deployments: dict[str, Deployment] = {}
        plans: dict[str, ModelPlan] = {}

        def deployment(route: RouteConfig, model: ModelConfig) -> Deployment:
            """A route of ``model``; breaker and latency are shared per provider/model."""
            cfg, provider = providers[route.provider]
            target = route.model or registry.default_model(route.provider, cfg)
            dep_id = f"{route.provider}/{target}"
            shared = deployments.get(dep_id)
            if shared is None:
                prev = old_deps.get(dep_id)
                if (
                    prev is not None
                    and prev.provider is provider
                    and prev.breaker.cfg == model.breaker
                ):
                    breaker, latency = prev.breaker, prev.latency
                else:
                    listener = breaker_listener(self.observer, dep_id)
                    breaker, latency = CircuitBreaker(model.breaker, on_change=listener), Ewma()
                shared = deployments[dep_id] = Deployment(
                    dep_id, provider, target, route.weight, breaker, latency, route.rpm, route.tpm
                )
            return Deployment(
                dep_id,
                provider,
                target,
                route.weight,
                shared.breaker,
                shared.latency,
                route.rpm if route.rpm is not None else shared.rpm,
                route.tpm if route.tpm is not None else shared.tpm,
            )

        for alias, m in policy.models.items():
            plans[alias] = ModelPlan(
                alias=alias,
                type=m.type,
                deployments=[deployment(r, m) for r in m.routes],
                timeouts=_timeouts(m),
                retries=m.retries,
                strategy=m.strategy,
            )
        for alias, m in policy.models.items():
            for fb in m.fallbacks:
                if isinstance(fb, RouteConfig):
                    plans[alias].fallbacks.append(deployment(fb, m))
                elif fb in plans:
                    plans[alias].fallbacks.append(plans[fb])
                else:
                    plans[alias].fallbacks.append(deployment(RouteConfig(provider=fb), m))
        overrides = {
            name: Price(p.input, p.output, p.cached_input) for name, p in policy.pricing.items()
        }
        free = frozenset(n for n, (cfg, _) in providers.items() if cfg.type in ("local", "fake"))
        prices = PriceBook(overrides, free_providers=free)
        return Runtime(policy, providers, plans, deployments, prices)

    async def apply(self, policy: Policy) -> None:
        """Swap in a new policy; close providers it no longer uses."""
        old = self.rt
        keys = policy_keys(policy)  # may fail (an unset secret): before anything changes
        new = self._build(policy, old)
        self.rt, self._policy_keys = new, keys
        self.refresh_keys(force=True)
        kept = {id(p) for _, p in new.providers.values()}
        stale = [p for _, p in old.providers.values() if id(p) not in kept]
        if stale:
            # let requests in flight on the old snapshot finish first
            asyncio.get_running_loop().call_later(
                30, lambda: [asyncio.ensure_future(p.aclose()) for p in stale]
            )

    async def aclose(self) -> None:
        await asyncio.gather(*(p.aclose() for _, p in self.rt.providers.values()))

    # ------------------------------------------------------------------ keys
    def refresh_keys(self, force: bool = False) -> bool:
        """Rebuild the key ring if the key store changed. Returns whether it did."""
        version = self.keystore.version() if self.keystore is not None else 0
        if not force and version == self._keys_version:
            return False
        snapshot = self.keystore.snapshot() if self.keystore is not None else None
        self.keyring = build_ring(snapshot, self.extra_keys + self._policy_keys)
        self._keys_version = snapshot.version if snapshot is not None else version
        return True

    def authenticate(self, token: str | None) -> Principal:
        return self.keyring.authenticate(token)

    # ------------------------------------------------------------------ models
    def plan(self, principal: Principal, model: str, kind: str) -> ModelPlan:
        plan = self.rt.plans.get(model)
        if plan is not None:
            principal.check_model(model)
        else:
            raise ModelNotFound(f"model {model!r} does not exist", param="model")
        if plan.type != kind:
            raise InvalidRequest(
                f"model {model!r} is a {plan.type} model, not {kind}", param="model"
            )
        return plan

    def models_for(self, principal: Principal) -> list[JSON]:
        return [
            {"id": alias, "object": "model", "created": 0, "owned_by": "bastion", "type": plan.type}
            for alias, plan in self.rt.plans.items()
            if principal.may_use(alias)
        ]

    # ------------------------------------------------------------------ calls
    async def chat(
        self, plan: ModelPlan, req: ChatRequest, ctx: CallContext
    ) -> tuple[Deployment, JSON]:
        async def call(dep: Deployment, timeouts: Timeouts) -> JSON:
            await self._quota(dep, ctx)
            ctx.timeouts = timeouts
            return await dep.provider.chat(req, dep.model, ctx)

        return await self.router.call(plan, call, ctx)

    async def chat_stream(
        self, plan: ModelPlan, req: ChatRequest, ctx: CallContext
    ) -> tuple[Deployment, AsyncIterator[JSON]]:
        async def open_stream(dep: Deployment, timeouts: Timeouts) -> AsyncIterator[JSON]:
            await self._quota(dep, ctx)
            ctx.timeouts = timeouts
            async for chunk in dep.provider.chat_stream(req, dep.model, ctx):
                yield chunk

        return await self.router.stream(plan, open_stream, ctx)

    async def embed(
        self, plan: ModelPlan, req: EmbeddingRequest, ctx: CallContext
    ) -> tuple[Deployment, JSON]:
        async def call(dep: Deployment, timeouts: Timeouts) -> JSON:
            await self._quota(dep, ctx)
            ctx.timeouts = timeouts
            return await dep.provider.embed(req, dep.model, ctx)

        return await self.router.call(plan, call, ctx)

    async def rerank(
        self, plan: ModelPlan, req: RerankRequest, ctx: CallContext
    ) -> tuple[Deployment, JSON]:
        async def call(dep: Deployment, timeouts: Timeouts) -> JSON:
            provider = dep.provider
            if not isinstance(provider, SupportsRerank):
                raise Unsupported(f"provider {provider.name!r} cannot rerank")
            await self._quota(dep, ctx)
            ctx.timeouts = timeouts
            return await provider.rerank(req, dep.model, ctx)

        return await self.router.call(plan, call, ctx)

    async def _quota(self, dep: Deployment, ctx: CallContext) -> None:
        """Take a request of a deployment's own RPM/TPM quota, or move on."""
        if (dep.rpm is None and dep.tpm is None) or self.governor is None:
            return
        if not await self.governor.deployment(dep.id, dep.rpm, dep.tpm, ctx.tokens_estimate):
            raise DeploymentQuotaExceeded(
                f"deployment {dep.id} reached its per-minute quota", retry_after=60.0
            )
