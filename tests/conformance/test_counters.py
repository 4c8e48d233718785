"""The Counters port's contract, run against MemoryCounters and RedisCounters alike."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import pytest
import pytest_asyncio

from bastion.gateway.quota import Check, Counters, MemoryCounters, Outcome
from bastion.store.redis.counters import RedisCounters
from tests.conformance.conftest import (
    REDIS_URL,
    Advance,
    FakeClock,
    delete_prefix,
    new_client,
    redis_or_skip,
    unique_prefix,
)


@dataclass
class Env:
    kind: str
    counters: Counters
    replica: Callable[[], Counters]  # another instance over the same state (a second replica)
    advance: Advance


@pytest_asyncio.fixture(params=["memory", "redis"], loop_scope="function")
async def env(request: pytest.FixtureRequest) -> AsyncIterator[Env]:
    if request.param == "memory":
        clock = FakeClock()
        memory = MemoryCounters(clock=clock)
        yield Env("memory", memory, lambda: memory, Advance(clock))
        await memory.aclose()
        return
    admin = await redis_or_skip()
    prefix = unique_prefix()
    made: list[RedisCounters] = []

    def replica() -> RedisCounters:
        made.append(RedisCounters(new_client(), prefix))
        return made[-1]

    try:
        yield Env("redis", replica(), replica, Advance())
    finally:
        for counters in made:
            await counters.aclose()
        await delete_prefix(admin, prefix)
        await admin.aclose()


async def test_acquire_admits_exactly_up_to_the_limit(env: Env) -> None:
    c = env.counters
    outcomes = [await c.acquire([Check("k", 1, 5, 60)]) for _ in range(6)]
    assert [o.admitted for o in outcomes] == [True] * 5 + [False]
    assert [o.values for o in outcomes[:5]] == [(1,), (2,), (3,), (4,), (5,)]
    assert outcomes[5] == Outcome(False, (5,), 0)
    assert await c.get(["k"]) == [5]


async def test_amount_above_one(env: Env) -> None:
    c = env.counters
    assert await c.acquire([Check("t", 40, 100, 60)]) == Outcome(True, (40,))
    assert await c.acquire([Check("t", 60, 100, 60)]) == Outcome(True, (100,))
    assert await c.acquire([Check("t", 1, 100, 60)]) == Outcome(False, (100,), 0)
    assert await c.acquire([Check("u", 101, 100, 60)]) == Outcome(False, (0,), 0)
    assert await c.acquire([Check("t", 0, 100, 60)]) == Outcome(True, (100,))


async def test_refusal_by_a_later_check_changes_nothing(env: Env) -> None:
    c = env.counters
    await c.acquire([Check("team", 3, None, 60)])
    checks = [Check("key", 1, 10, 60), Check("team", 1, 3, 60), Check("tenant", 1, 10, 60)]
    assert await c.acquire(checks) == Outcome(False, (0, 3, 0), 1)
    assert await c.get(["key", "team", "tenant"]) == [0, 3, 0]
    # The first refusing hard check is reported, even when a later one would refuse too.
    checks = [Check("key", 11, 10, 60), Check("team", 1, 3, 60)]
    assert await c.acquire(checks) == Outcome(False, (0, 3), 0)


async def test_admitted_request_counts_on_every_check(env: Env) -> None:
    c = env.counters
    checks = [Check("key", 1, 10, 60), Check("team", 5, 100, 60), Check("tenant", 2, None, 60)]
    assert await c.acquire(checks) == Outcome(True, (1, 5, 2))
    assert await c.acquire(checks) == Outcome(True, (2, 10, 4))
    assert await c.get(["tenant", "team", "key"]) == [4, 10, 2]


async def test_soft_checks_count_but_never_refuse(env: Env) -> None:
    c = env.counters
    for i in range(1, 5):
        outcome = await c.acquire([Check("soft", 1, 2, 60, hard=False), Check("hard", 1, 10, 60)])
        assert outcome == Outcome(True, (i, i))
    assert await c.get(["soft"]) == [4]


async def test_no_limit_never_refuses(env: Env) -> None:
    c = env.counters
    for _ in range(3):
        assert (await c.acquire([Check("free", 1_000_000, None, 60)])).admitted
    assert await c.get(["free"]) == [3_000_000]


async def test_same_key_twice_in_one_acquire(env: Env) -> None:
    c = env.counters
    # Limits are checked against the values before the call; both amounts are then added.
    assert await c.acquire([Check("x", 1, 1, 60), Check("x", 1, 1, 60)]) == Outcome(True, (1, 2))
    assert await c.acquire([Check("x", 1, 5, 60), Check("x", 1, 2, 60)]) == Outcome(
        False, (2, 2), 1
    )


async def test_empty_inputs(env: Env) -> None:
    c = env.counters
    assert await c.acquire([]) == Outcome(True, ())
    await c.adjust([])
    assert await c.get([]) == []


async def test_get_of_missing_keys_is_zero(env: Env) -> None:
    assert await env.counters.get(["nope", "nada"]) == [0, 0]


async def test_adjust_reconciles_and_creates(env: Env) -> None:
    c = env.counters
    assert (await c.acquire([Check("budget", 10, 10, 60)])).admitted
    assert not (await c.acquire([Check("budget", 1, 10, 60)])).admitted
    await c.adjust([("budget", -4, 60)])  # the request used 6 of the 10 it reserved
    assert await c.get(["budget"]) == [6]
    assert await c.acquire([Check("budget", 4, 10, 60)]) == Outcome(True, (10,))
    await c.adjust([("budget", 3, 60), ("new", 7, 60), ("neg", -2, 60)])
    assert await c.get(["budget", "new", "neg"]) == [13, 7, -2]


async def test_seed_only_sets_a_missing_key(env: Env) -> None:
    c = env.counters
    assert await c.seed("s", 40, 60) is True
    assert await c.seed("s", 99, 60) is False
    assert await c.get(["s"]) == [40]
    assert await c.acquire([Check("s", 10, 50, 60)]) == Outcome(True, (50,))
    assert await c.acquire([Check("s", 1, 50, 60)]) == Outcome(False, (50,), 0)
    await c.acquire([Check("taken", 1, None, 60)])
    assert await c.seed("taken", 5, 60) is False
    assert await c.get(["taken"]) == [1]


async def test_counters_expire_after_their_ttl(env: Env) -> None:
    c = env.counters
    await c.acquire([Check("win", 1, 2, 1), Check("long", 1, None, 60)])
    await c.adjust([("adj", 5, 1)])
    assert await c.seed("seeded", 9, 1)
    await env.advance(0.6)
    # Later increments keep the expiry set when the counter was created.
    assert await c.acquire([Check("win", 1, 2, 1)]) == Outcome(True, (2,))
    await c.adjust([("adj", 1, 1)])
    assert not (await c.acquire([Check("win", 1, 2, 1)])).admitted
    await env.advance(0.6)
    assert await c.get(["win", "adj", "seeded", "long"]) == [0, 0, 0, 1]
    assert await c.acquire([Check("win", 1, 2, 1)]) == Outcome(True, (1,))
    assert await c.seed("seeded", 3, 60) is True
    assert await c.get(["seeded"]) == [3]


async def test_concurrent_acquires_across_replicas_admit_exactly_the_limit(env: Env) -> None:
    replicas = [env.counters, env.replica()]
    outcomes = await asyncio.gather(
        *(replicas[i % 2].acquire([Check("hot", 1, 50, 60)]) for i in range(200))
    )
    admitted = [o for o in outcomes if o.admitted]
    assert len(admitted) == 50
    assert sorted(o.values[0] for o in admitted) == list(range(1, 51))
    assert all(o == Outcome(False, (50,), 0) for o in outcomes if not o.admitted)
    assert await replicas[1].get(["hot"]) == [50]


async def test_concurrent_multi_check_acquires_stay_consistent(env: Env) -> None:
    replicas = [env.counters, env.replica()]
    outcomes = await asyncio.gather(
        *(
            replicas[i % 2].acquire([Check(f"key{i % 4}", 1, 20, 60), Check("team", 1, 50, 60)])
            for i in range(200)
        )
    )
    assert sum(o.admitted for o in outcomes) == 50
    per_key = await env.counters.get([f"key{i}" for i in range(4)])
    assert all(v <= 20 for v in per_key)
    assert sum(per_key) == 50
    assert await env.counters.get(["team"]) == [50]


# Redis only ---------------------------------------------------------------


@pytest_asyncio.fixture(loop_scope="function")
async def redis_counters() -> AsyncIterator[RedisCounters]:
    admin = await redis_or_skip()
    prefix = unique_prefix()
    counters = RedisCounters(new_client(), prefix)
    try:
        yield counters
    finally:
        await counters.aclose()
        await delete_prefix(admin, prefix)
        await admin.aclose()


async def test_redis_operations_are_one_round_trip(
    redis_counters: RedisCounters, monkeypatch: pytest.MonkeyPatch
) -> None:
    c = redis_counters
    checks = [Check("a", 1, 10, 60), Check("b", 2, 10, 60), Check("c", 3, None, 60)]
    await c.acquire(checks)  # loads the script on a fresh server (EVALSHA, SCRIPT LOAD, EVALSHA)
    await c.adjust([("a", 1, 60)])
    sent: list[Any] = []
    original: Any = c.client.execute_command

    async def counting(*args: Any, **kwargs: Any) -> Any:
        sent.append(args[0])
        return await original(*args, **kwargs)

    monkeypatch.setattr(c.client, "execute_command", counting)
    assert await c.acquire(checks) == Outcome(True, (3, 4, 6))
    assert sent == ["EVALSHA"]
    await c.adjust([("a", -1, 60), ("b", 1, 60), ("d", 1, 60)])
    assert sent == ["EVALSHA", "EVALSHA"]
    assert await c.get(["a", "b", "c", "d"]) == [2, 5, 6, 1]
    assert sent == ["EVALSHA", "EVALSHA", "MGET"]


async def test_redis_keys_are_prefixed_and_expire(redis_counters: RedisCounters) -> None:
    c = redis_counters
    await c.acquire([Check("k", 1, None, 30)])
    await c.adjust([("j", 1, 40)])
    await c.seed("s", 1, 50)
    raw = c.client
    assert await raw.exists("k", "j", "s") == 0
    for key, ttl in (("k", 30), ("j", 40), ("s", 50)):
        assert 0 < await raw.ttl(c.prefix + key) <= ttl
    await raw.set(c.prefix + "k", 7, keepttl=True)
    assert await c.get(["k"]) == [7]


async def test_counters_on_separate_prefixes_are_independent() -> None:
    admin = await redis_or_skip()
    p1, p2 = unique_prefix(), unique_prefix()
    one, two = RedisCounters(new_client(), p1), RedisCounters(new_client(), p2)
    try:
        assert (await one.acquire([Check("k", 1, 1, 60)])).admitted
        assert (await two.acquire([Check("k", 1, 1, 60)])).admitted
        assert not (await one.acquire([Check("k", 1, 1, 60)])).admitted
    finally:
        await one.aclose()
        await two.aclose()
        await delete_prefix(admin, p1)
        await delete_prefix(admin, p2)
        await admin.aclose()


async def test_from_url_owns_its_client() -> None:
    admin = await redis_or_skip()
    prefix = unique_prefix()
    counters = RedisCounters.from_url(REDIS_URL, prefix)
    try:
        assert await counters.acquire([Check("k", 2, 5, 60)]) == Outcome(True, (2,))
    finally:
        await counters.aclose()
        await delete_prefix(admin, prefix)
        await admin.aclose()
