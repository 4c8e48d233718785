"""Routing and reliability: weighted choice, retries, fallbacks, circuit breakers.

A model alias resolves to a :class:`ModelPlan`: its deployments (provider +
provider-side model, each with a weight and a breaker), its fallback chain and
its timeout and retry settings. :class:`Router` runs a call against a plan:

1. order the deployments: a weighted random permutation (``weighted``), or
   power-of-two-choices on EWMA latency (``latency``); then the fallbacks in
   order (a model alias expands to its own ordering, a provider to its default
   model); a deployment appears once;
2. skip a deployment whose breaker is open; try the others in order, retrying
   each up to ``retries.attempts`` times with exponential backoff and jitter, or
   after ``Retry-After`` when the upstream gave one (a wait longer than
   ``max_retry_after_s`` moves on at once);
3. an ``UpstreamClientError`` (the request itself is bad) stops everything;
   every other upstream failure, and a full local queue, moves on.

For streams a deployment is committed once its first chunk arrived: failures
before that fail over like any call; failures after it end the stream (the API
turns them into an SSE error event).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

from bastion.config.schema import RetryConfig
from bastion.core.errors import (
    AllRoutesFailed,
    BastionError,
    DeploymentQuotaExceeded,
    NoHealthyDeployment,
    Overloaded,
    UpstreamClientError,
    UpstreamFailure,
)
from bastion.core.types import JSON
from bastion.gateway.breaker import CircuitBreaker, State
from bastion.providers.base import CallContext, Provider, Timeouts

T = TypeVar("T")


class RouterObserver(Protocol):
    """Receives routing events (implemented by telemetry.metrics)."""

    def attempt(self, deployment: str, outcome: str, seconds: float) -> None: ...
    def retry(self, deployment: str) -> None: ...
    def fallback(self, model: str) -> None: ...
    def breaker(self, deployment: str, state: int) -> None: ...


@dataclass(eq=False, slots=True)
class Ewma:
    """An exponentially weighted moving average of attempt latency."""

    value: float | None = None
    alpha: float = 0.3

    def observe(self, seconds: float) -> None:
        prev = self.value
        self.value = seconds if prev is None else prev + self.alpha * (seconds - prev)


@dataclass(eq=False, slots=True)
class Deployment:
    """One provider + provider-side model as a route of one model alias.

    ``weight`` belongs to the route; ``breaker`` and ``latency`` describe the
    upstream deployment itself and are shared by every alias that routes to the
    same ``provider/model``.
    """

    id: str
    provider: Provider
    model: str
    weight: float
    breaker: CircuitBreaker
    latency: Ewma = field(default_factory=Ewma)
    rpm: int | None = None
    tpm: int | None = None


@dataclass(eq=False, slots=True)
class ModelPlan:
    alias: str
    type: str
    deployments: list[Deployment]
    timeouts: Timeouts
    retries: RetryConfig
    strategy: str = "weighted"
    fallbacks: list[ModelPlan | Deployment] = field(default_factory=list)


def weighted_order(deps: list[Deployment], rng: random.Random) -> list[Deployment]:
    """A weighted random permutation (Efraimidis-Spirakis keys)."""
    if len(deps) == 1:
        return list(deps)
    return sorted(deps, key=lambda d: rng.random() ** (1.0 / d.weight), reverse=True)


def latency_order(deps: list[Deployment], rng: random.Random) -> list[Deployment]:
    """Power of two choices on EWMA latency; unmeasured deployments go first."""
    order = weighted_order(deps, rng)
    if len(order) >= 2:
        a, b = order[0], order[1]
        la = a.latency.value if a.latency.value is not None else -1.0
        lb = b.latency.value if b.latency.value is not None else -1.0
        if lb < la:
            order[0], order[1] = b, a
    return order


def backoff_delay(cfg: RetryConfig, retry_index: int, rng: random.Random) -> float:
    """Exponential (or constant) backoff with equal jitter."""
    base = cfg.base_s * (2**retry_index if cfg.backoff == "exponential" else 1)
    d = min(cfg.max_s, base)
    return d / 2 + rng.uniform(0, d / 2)


class Router:
    """Runs calls against plans with retries, fallbacks and breakers."""

    def __init__(
        self,
        observer: RouterObserver | None = None,
        *,
        rng: random.Random | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.observer = observer
        self.rng = rng or random.Random()
        self.sleep = sleep

    def candidates(self, plan: ModelPlan) -> list[tuple[Deployment, ModelPlan]]:
        """Every deployment to try, in order, each with the plan whose settings apply."""
        out: list[tuple[Deployment, ModelPlan]] = []
        seen: set[str] = set()
        self._expand(plan, out, seen, set())
        return out

    def _expand(
        self,
        plan: ModelPlan,
        out: list[tuple[Deployment, ModelPlan]],
        seen: set[str],
        visiting: set[str],
    ) -> None:
        visiting.add(plan.alias)
        order = latency_order if plan.strategy == "latency" else weighted_order
        for dep in order(plan.deployments, self.rng):
            if dep.id not in seen:
                seen.add(dep.id)
                out.append((dep, plan))
        for fb in plan.fallbacks:
            if isinstance(fb, ModelPlan):
                if fb.alias not in visiting:
                    self._expand(fb, out, seen, visiting)
            elif fb.id not in seen:
                seen.add(fb.id)
                out.append((fb, plan))

    async def call(
        self,
        plan: ModelPlan,
        fn: Callable[[Deployment, Timeouts], Awaitable[T]],
        ctx: CallContext | None = None,
    ) -> tuple[Deployment, T]:
        """Run ``fn`` on the first deployment that succeeds.

        Backoff waits count as upstream time in ``ctx`` (they are not overhead).
        """
        failures: list[BastionError] = []
        tried_any = False
        obs = self.observer
        loop = asyncio.get_running_loop()
        for n, (dep, owner) in enumerate(self.candidates(plan)):
            if n and tried_any and obs is not None:
                obs.fallback(plan.alias)
            retries = owner.retries
            for attempt in range(retries.attempts + 1):
                if not dep.breaker.allow():
                    break
                tried_any = True
                t0 = loop.time()
                try:
                    result = await fn(dep, owner.timeouts)
                except DeploymentQuotaExceeded as exc:
                    dep.breaker.release()
                    failures.append(exc)
                    if obs is not None:
                        obs.attempt(dep.id, exc.code, loop.time() - t0)
                    break
                except UpstreamClientError as exc:
                    dep.breaker.release()
                    exc.deployment = dep.id
                    if obs is not None:
                        obs.attempt(dep.id, exc.code, loop.time() - t0)
                    raise
                except (UpstreamFailure, Overloaded) as exc:
                    wait = self._after_failure(dep, retries, exc, loop.time() - t0, failures)
                    if wait is None or attempt == retries.attempts:
                        break
                    if wait < 0:
                        wait = backoff_delay(retries, attempt, self.rng)
                    if obs is not None:
                        obs.retry(dep.id)
                    if ctx is not None:
                        ctx.upstream_s += wait
                    await self.sleep(wait)
                    continue
                except BaseException:
                    dep.breaker.release()
                    raise
                dt = loop.time() - t0
                dep.breaker.record(True)
                dep.latency.observe(dt)
                if obs is not None:
                    obs.attempt(dep.id, "ok", dt)
                return dep, result
        raise self._exhausted(plan, failures)

    def _after_failure(
        self,
        dep: Deployment,
        retries: RetryConfig,
        exc: BastionError,
        seconds: float,
        failures: list[BastionError],
    ) -> float | None:
        """Record a failed attempt. Returns the retry wait (-1: use backoff) or None: move on."""
        if isinstance(exc, UpstreamFailure):
            exc.deployment = dep.id
            dep.breaker.record(False)
        else:
            dep.breaker.release()  # a full local queue says nothing about health
        failures.append(exc)
        if self.observer is not None:
            self.observer.attempt(dep.id, exc.code, seconds)
        if isinstance(exc, Overloaded) or not getattr(exc, "retryable", True):
            return None
        if exc.retry_after is not None:
            return exc.retry_after if exc.retry_after <= retries.max_retry_after_s else None
        return -1.0

    def _exhausted(self, plan: ModelPlan, failures: list[BastionError]) -> BastionError:
        if not failures:
            return NoHealthyDeployment(
                f"every deployment of model {plan.alias!r} is cooling down after failures",
                retry_after=min((d.breaker.cfg.cooldown_s for d in plan.deployments), default=1.0),
            )
        if len(failures) == 1:
            return failures[0]
        return AllRoutesFailed(failures)

    async def stream(
        self,
        plan: ModelPlan,
        open_stream: Callable[[Deployment, Timeouts], AsyncIterator[JSON]],
        ctx: CallContext | None = None,
    ) -> tuple[Deployment, AsyncIterator[JSON]]:
        """Open a stream with failover until its first chunk; then commit to it."""

        async def first_chunk(
            dep: Deployment, timeouts: Timeouts
        ) -> tuple[AsyncIterator[JSON], list[JSON]]:
            # Chunks that only announce the role carry nothing yet: keep reading
            # (and keep the right to fail over) until one carries content.
            it = open_stream(dep, timeouts)
            held: list[JSON] = []
            try:
                async for chunk in it:
                    held.append(chunk)
                    if _substantive(chunk):
                        break
            except BaseException:
                await _aclose(it)
                raise
            return it, held

        # call() records success once the first chunk arrived; a failure after
        # that is recorded again when the stream dies.
        dep, (it, held) = await self.call(plan, first_chunk, ctx)
        return dep, self._committed(dep, it, held)

    async def _committed(
        self, dep: Deployment, it: AsyncIterator[JSON], held: list[JSON]
    ) -> AsyncIterator[JSON]:
        try:
            for chunk in held:
                yield chunk
            async for chunk in it:
                yield chunk
        except UpstreamFailure as exc:
            exc.deployment = dep.id
            exc.retryable = False
            dep.breaker.record(False)
            if self.observer is not None:
                self.observer.attempt(dep.id, exc.code, 0.0)
            raise
        finally:
            await _aclose(it)


def _substantive(chunk: JSON) -> bool:
    """Does a chunk carry output (text, a tool call, a finish reason or usage)?"""
    if chunk.get("usage"):
        return True
    for choice in chunk.get("choices") or ():
        delta = choice.get("delta") or {}
        if delta.get("content") or delta.get("tool_calls") or choice.get("finish_reason"):
            return True
    return False


async def _aclose(it: AsyncIterator[JSON]) -> None:
    close = getattr(it, "aclose", None)
    if close is not None:
        await close()


def breaker_listener(observer: RouterObserver | None, dep_id: str) -> Callable[[State], None]:
    """A breaker ``on_change`` callback reporting to the observer."""

    def changed(state: State) -> None:
        if observer is not None:
            observer.breaker(dep_id, int(state))

    return changed
