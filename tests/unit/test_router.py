"""Router and circuit breaker: ordering, retries, fallbacks, breaker states."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from bastion.config.schema import BreakerConfig, RetryConfig
from bastion.core.errors import (
    AllRoutesFailed,
    NoHealthyDeployment,
    Overloaded,
    UpstreamClientError,
    UpstreamConnectError,
    UpstreamError,
    UpstreamRateLimited,
    UpstreamTimeout,
)
from bastion.core.types import ChatRequest
from bastion.gateway.breaker import CircuitBreaker, State
from bastion.gateway.router import Deployment, ModelPlan, Router, backoff_delay
from bastion.providers.base import CallContext, Timeouts
from bastion.providers.fake import FakeProvider


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


class Obs:
    def __init__(self) -> None:
        self.events: list[tuple[str, ...]] = []

    def attempt(self, deployment: str, outcome: str, seconds: float) -> None:
        self.events.append(("attempt", deployment, outcome))

    def retry(self, deployment: str) -> None:
        self.events.append(("retry", deployment))

    def fallback(self, model: str) -> None:
        self.events.append(("fallback", model))

    def breaker(self, deployment: str, state: int) -> None:
        self.events.append(("breaker", deployment, str(state)))


def dep(
    name: str,
    weight: float = 1,
    cfg: BreakerConfig | None = None,
    clock: Clock | None = None,
    provider: FakeProvider | None = None,
) -> Deployment:
    b = CircuitBreaker(cfg or BreakerConfig(), clock=clock or Clock())
    return Deployment(f"{name}/m", provider or FakeProvider(name), "m", weight, b)


def plan(
    *deps: Deployment,
    attempts: int = 0,
    fallbacks: list[ModelPlan | Deployment] | None = None,
    alias: str = "chat",
    max_retry_after_s: float = 30,
) -> ModelPlan:
    return ModelPlan(
        alias,
        "chat",
        list(deps),
        Timeouts(),
        RetryConfig(attempts=attempts, base_s=0.01, max_retry_after_s=max_retry_after_s),
        fallbacks=fallbacks or [],
    )


REQ = ChatRequest.model_validate({"model": "chat", "messages": [{"role": "user", "content": "hi"}]})


class Sleeps:
    def __init__(self) -> None:
        self.waits: list[float] = []

    async def __call__(self, s: float) -> None:
        self.waits.append(s)


def router(obs: Obs | None = None, sleeps: Sleeps | None = None, seed: int = 1) -> Router:
    return Router(obs, rng=random.Random(seed), sleep=sleeps or Sleeps())


async def call(r: Router, p: ModelPlan) -> tuple[Deployment, dict[str, object]]:
    async def fn(d: Deployment, t: Timeouts) -> dict[str, object]:
        return await d.provider.chat(REQ, d.model, CallContext("r"))

    return await r.call(p, fn)


# ---------------------------------------------------------------- breaker
def test_breaker_opens_on_consecutive_failures_then_half_opens() -> None:
    clock = Clock()
    changes: list[State] = []
    b = CircuitBreaker(
        BreakerConfig(consecutive_failures=3, cooldown_s=10, min_requests=100),
        clock=clock,
        on_change=changes.append,
    )
    for _ in range(2):
        assert b.allow()
        b.record(False)
    assert b.state is State.CLOSED
    b.record(False)
    assert b.state is State.OPEN and not b.allow()
    clock.t += 9.9
    assert not b.allow()
    clock.t += 0.2
    assert b.allow()  # the probe
    assert b.state is State.HALF_OPEN
    assert not b.allow()  # only one probe at a time
    b.record(True)
    assert b.state is State.CLOSED and b.allow()
    assert changes == [State.OPEN, State.HALF_OPEN, State.CLOSED]


def test_breaker_failed_probe_reopens_for_a_new_cooldown() -> None:
    clock = Clock()
    b = CircuitBreaker(BreakerConfig(consecutive_failures=1, cooldown_s=5), clock=clock)
    b.record(False)
    clock.t += 5
    assert b.allow()
    b.record(False)
    assert b.state is State.OPEN
    clock.t += 4
    assert not b.allow()


def test_breaker_opens_on_error_rate_over_window() -> None:
    clock = Clock()
    cfg = BreakerConfig(consecutive_failures=100, error_rate=0.5, window_s=10, min_requests=10)
    b = CircuitBreaker(cfg, clock=clock)
    for i in range(10):  # alternate: 50% is not *over* the rate
        b.record(i % 2 == 0)
    assert b.state is State.CLOSED
    b.record(False)  # 6 of 11 failed
    assert b.state is State.OPEN


def test_breaker_window_forgets_old_failures() -> None:
    clock = Clock()
    cfg = BreakerConfig(consecutive_failures=100, error_rate=0.5, window_s=10, min_requests=4)
    b = CircuitBreaker(cfg, clock=clock)
    for _ in range(3):
        b.record(False)
    clock.t += 11
    for _ in range(3):
        b.record(True)
    b.record(False)
    assert b.state is State.CLOSED  # 1 of 4 in the window


def test_released_probe_lets_another_probe_through() -> None:
    clock = Clock()
    b = CircuitBreaker(BreakerConfig(consecutive_failures=1, cooldown_s=1), clock=clock)
    b.record(False)
    clock.t += 2
    assert b.allow() and not b.allow()
    b.release()
    assert b.allow()


# ---------------------------------------------------------------- ordering
def test_weighted_choice_follows_weights() -> None:
    r = router(seed=7)
    a, b = dep("a", 90), dep("b", 10)
    first = Counter(r.candidates(plan(a, b))[0][0].id for _ in range(5000))
    assert 0.87 < first["a/m"] / 5000 < 0.93


def test_fallback_chain_order_and_dedupe() -> None:
    a, b, c = dep("a"), dep("b"), dep("c")
    other = plan(b, c, alias="other")
    p = plan(a, fallbacks=[other, a, dep("d")])
    ids = [d.id for d, _ in router().candidates(p)]
    assert ids[0] == "a/m" and set(ids[1:3]) == {"b/m", "c/m"} and ids[3:] == ["d/m"]


def test_backoff_grows_and_is_capped() -> None:
    cfg = RetryConfig(base_s=1, max_s=4)
    rng = random.Random(3)
    for i, (lo, hi) in enumerate([(0.5, 1), (1, 2), (2, 4), (2, 4), (2, 4)]):
        d = backoff_delay(cfg, i, rng)
        assert lo <= d <= hi


# ---------------------------------------------------------------- calls
async def test_retry_then_success_on_same_deployment() -> None:
    a = dep("a")
    assert isinstance(a.provider, FakeProvider)
    a.provider.fail_next(UpstreamError("boom", upstream_status=500))
    obs, sleeps = Obs(), Sleeps()
    d, body = await call(router(obs, sleeps), plan(a, attempts=2))
    assert d is a and body["object"] == "chat.completion"
    assert a.provider.calls == 2 and len(sleeps.waits) == 1
    assert ("retry", "a/m") in obs.events


async def test_retry_after_is_honoured() -> None:
    a = dep("a")
    assert isinstance(a.provider, FakeProvider)
    a.provider.fail_next(UpstreamRateLimited("slow down", retry_after=2.5))
    sleeps = Sleeps()
    await call(router(sleeps=sleeps), plan(a, attempts=1))
    assert sleeps.waits == [2.5]


async def test_long_retry_after_moves_to_next_deployment() -> None:
    a, b = dep("a", 1000), dep("b", 0.001)
    assert isinstance(a.provider, FakeProvider)
    a.provider.fail_next(UpstreamRateLimited("slow down", retry_after=120))
    sleeps, obs = Sleeps(), Obs()
    d, _ = await call(router(obs, sleeps), plan(a, b, attempts=3))
    assert d is b and sleeps.waits == [] and ("fallback", "chat") in obs.events


@pytest.mark.parametrize(
    "exc",
    [
        UpstreamError("5xx", upstream_status=503),
        UpstreamTimeout("t"),
        UpstreamConnectError("c"),
        UpstreamRateLimited("429"),
        Overloaded("queue full"),
    ],
)
async def test_falls_back_on_transient_failures(exc: Exception) -> None:
    a, b = dep("a"), dep("b")
    assert isinstance(a.provider, FakeProvider)
    a.provider.fail_next(exc)  # type: ignore[arg-type]
    d, _ = await call(router(), plan(a, fallbacks=[b]))
    assert d is b


async def test_client_error_never_retries_or_falls_back() -> None:
    a, b = dep("a"), dep("b")
    assert isinstance(a.provider, FakeProvider) and isinstance(b.provider, FakeProvider)
    a.provider.fail_next(UpstreamClientError("bad field", upstream_status=400))
    with pytest.raises(UpstreamClientError) as info:
        await call(router(), plan(a, attempts=3, fallbacks=[b]))
    assert info.value.deployment == "a/m" and a.provider.calls == 1 and b.provider.calls == 0
    assert a.breaker.state is State.CLOSED and a.breaker.consecutive == 0


async def test_all_failed_collects_every_failure() -> None:
    a, b = dep("a"), dep("b")
    for d in (a, b):
        assert isinstance(d.provider, FakeProvider)
        d.provider.fail_next(UpstreamError("down", upstream_status=502))
    with pytest.raises(AllRoutesFailed) as info:
        await call(router(), plan(a, fallbacks=[b]))
    err = info.value
    assert [f.deployment for f in err.failures] == ["a/m", "b/m"]  # type: ignore[attr-defined]
    assert err.status == 502 and err.code == "upstream_error"
    assert len(err.as_group().exceptions) == 2


async def test_open_breaker_is_skipped_and_retries_count_against_it() -> None:
    clock = Clock()
    cfg = BreakerConfig(consecutive_failures=2, cooldown_s=30)
    a, b = dep("a", cfg=cfg, clock=clock), dep("b")
    assert isinstance(a.provider, FakeProvider)
    a.provider.fail_next(*[UpstreamError("down", upstream_status=500) for _ in range(5)])
    d, _ = await call(router(), plan(a, attempts=4, fallbacks=[b]))
    # two attempts opened the breaker; the retries stopped there
    assert d is b and a.provider.calls == 2 and a.breaker.state is State.OPEN
    d, _ = await call(router(), plan(a, fallbacks=[b]))
    assert d is b and a.provider.calls == 2  # skipped while open


async def test_every_breaker_open_is_a_clear_error() -> None:
    a = dep("a", cfg=BreakerConfig(consecutive_failures=1, cooldown_s=30))
    a.breaker.record(False)
    with pytest.raises(NoHealthyDeployment) as info:
        await call(router(), plan(a))
    assert info.value.status == 503 and info.value.retry_after == 30


async def test_stream_fails_over_before_first_chunk_only() -> None:
    a, b = dep("a"), dep("b")
    assert isinstance(a.provider, FakeProvider)
    a.provider.fail_next(UpstreamConnectError("refused"))

    def open_stream(d: Deployment, t: Timeouts):  # type: ignore[no-untyped-def]
        return d.provider.chat_stream(REQ, d.model, CallContext("r"))

    d, chunks = await router().stream(plan(a, fallbacks=[b]), open_stream)
    text = "".join(
        [c["choices"][0]["delta"].get("content", "") async for c in chunks if c["choices"]]
    )
    assert d is b and text == "echo: hi"
