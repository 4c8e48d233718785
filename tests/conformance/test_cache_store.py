"""The cache ports' contract, run against the in-process and the Redis implementations."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import pytest
import pytest_asyncio

from bastion.gateway.cache_store import (
    CacheBackend,
    MemoryCache,
    MemorySemanticIndex,
    SemanticIndex,
)
from bastion.store.redis.cache import RedisCache, RedisSemanticIndex
from tests.conformance.conftest import (
    REDIS_URL,
    Advance,
    FakeClock,
    delete_prefix,
    redis_or_skip,
    unique_prefix,
)


@dataclass
class CacheEnv:
    cache: CacheBackend
    advance: Advance


@dataclass
class IndexEnv:
    make: Callable[[int], SemanticIndex]  # per_scope -> an index
    advance: Advance


@pytest_asyncio.fixture(params=["memory", "redis"], loop_scope="function")
async def cache_env(request: pytest.FixtureRequest) -> AsyncIterator[CacheEnv]:
    if request.param == "memory":
        clock = FakeClock()
        memory = MemoryCache(clock=clock)
        yield CacheEnv(memory, Advance(clock))
        await memory.aclose()
        return
    client = await redis_or_skip()
    prefix = unique_prefix()
    try:
        yield CacheEnv(RedisCache(client, prefix), Advance())
    finally:
        await delete_prefix(client, prefix)
        await client.aclose()


@pytest_asyncio.fixture(params=["memory", "redis"], loop_scope="function")
async def index_env(request: pytest.FixtureRequest) -> AsyncIterator[IndexEnv]:
    if request.param == "memory":
        clock = FakeClock()
        yield IndexEnv(lambda n: MemorySemanticIndex(per_scope=n, clock=clock), Advance(clock))
        return
    client = await redis_or_skip()
    prefix = unique_prefix()
    try:
        yield IndexEnv(lambda n: RedisSemanticIndex(client, prefix, per_scope=n), Advance())
    finally:
        await delete_prefix(client, prefix)
        await client.aclose()


def axis(i: int, dim: int = 8) -> list[float]:
    return [1.0 if j == i else 0.0 for j in range(dim)]


# Exact cache ----------------------------------------------------------------


async def test_missing_key_is_none(cache_env: CacheEnv) -> None:
    assert await cache_env.cache.get("absent") is None


async def test_roundtrip_and_overwrite(cache_env: CacheEnv) -> None:
    cache = cache_env.cache
    await cache.set("k", b'{"answer": 42}', 60)
    assert await cache.get("k") == b'{"answer": 42}'
    await cache.set("k", b"second", 60)
    assert await cache.get("k") == b"second"
    await cache.set("other", b"", 60)
    assert await cache.get("other") == b""
    assert await cache.get("k") == b"second"


async def test_binary_values_are_exact(cache_env: CacheEnv) -> None:
    value = bytes(range(256)) * 64 + b"\x00\xff\r\n" + "héllo ✓".encode()
    await cache_env.cache.set("bin", value, 60)
    got = await cache_env.cache.get("bin")
    assert got == value
    assert isinstance(got, bytes)


async def test_values_expire_after_their_ttl(cache_env: CacheEnv) -> None:
    cache = cache_env.cache
    await cache.set("short", b"s", 0.2)
    await cache.set("renewed", b"old", 0.2)
    await cache.set("renewed", b"new", 60)  # an overwrite sets the new TTL
    await cache.set("long", b"l", 60)
    await cache_env.advance(0.3)
    assert await cache.get("short") is None
    assert await cache.get("renewed") == b"new"
    assert await cache.get("long") == b"l"


async def test_non_positive_ttl_stores_nothing(cache_env: CacheEnv) -> None:
    cache = cache_env.cache
    await cache.set("k", b"v", 60)
    await cache.set("k", b"w", 0)
    assert await cache.get("k") is None


async def test_memory_cache_evicts_least_recently_used_by_entries() -> None:
    cache = MemoryCache(max_entries=2)
    await cache.set("a", b"1", 60)
    await cache.set("b", b"2", 60)
    assert await cache.get("a") == b"1"  # a is now the most recently used
    await cache.set("c", b"3", 60)
    assert await cache.get("b") is None
    assert await cache.get("a") == b"1"
    assert await cache.get("c") == b"3"
    assert len(cache) == 2


async def test_memory_cache_evicts_by_bytes() -> None:
    cache = MemoryCache(max_bytes=10)
    await cache.set("a", b"123456", 60)
    await cache.set("b", b"1234", 60)
    await cache.set("c", b"123", 60)  # 13 bytes: a goes
    assert await cache.get("a") is None
    assert await cache.get("b") == b"1234"
    await cache.set("huge", b"x" * 11, 60)  # larger than the whole cache: not stored
    assert await cache.get("huge") is None
    assert await cache.get("b") == b"1234"
    assert await cache.get("c") == b"123"


async def test_redis_cache_prefixes_and_ttl() -> None:
    client = await redis_or_skip()
    p1, p2 = unique_prefix(), unique_prefix()
    one = RedisCache.from_url(REDIS_URL, p1)
    two = RedisCache(client, p2)
    try:
        await one.set("k", b"one", 30)
        assert await two.get("k") is None
        assert await client.get(p1 + "k") == b"one"
        assert 0 < await client.pttl(p1 + "k") <= 30_000
    finally:
        await one.aclose()
        await two.aclose()  # does not own the client
        assert await client.ping()
        await delete_prefix(client, p1)
        await client.aclose()


# Semantic index -------------------------------------------------------------


async def test_empty_scope_finds_nothing(index_env: IndexEnv) -> None:
    assert await index_env.make(1000).search("scope", axis(0), 0.0) is None


async def test_identical_vector_is_found(index_env: IndexEnv) -> None:
    index = index_env.make(1000)
    await index.add("s", [3.0, 4.0, 0.0], "k34", 60)
    await index.add("s", [0.0, 0.0, 2.0], "kz", 60)
    found = await index.search("s", [0.6, 0.8, 0.0], 0.99)
    assert found is not None
    assert found[0] == "k34"
    assert found[1] == pytest.approx(1.0, abs=1e-5)
    found = await index.search("s", [0.1, 0.0, 5.0], 0.9)
    assert found is not None
    assert found[0] == "kz"


async def test_threshold_above_the_best_score_finds_nothing(index_env: IndexEnv) -> None:
    index = index_env.make(1000)
    await index.add("s", [1.0, 0.0], "x", 60)
    found = await index.search("s", [1.0, 1.0], 0.7)  # cosine 0.7071
    assert found is not None
    assert found[0] == "x"
    assert found[1] == pytest.approx(2**-0.5, abs=1e-5)
    assert await index.search("s", [1.0, 1.0], 0.75) is None


async def test_ties_go_to_the_oldest_entry(index_env: IndexEnv) -> None:
    index = index_env.make(1000)
    await index.add("s", axis(1), "first", 60)
    await index.add("s", axis(1), "second", 60)
    found = await index.search("s", axis(1), 0.5)
    assert found is not None
    assert found[0] == "first"


async def test_scopes_are_isolated(index_env: IndexEnv) -> None:
    index = index_env.make(1000)
    await index.add("tenant-a|gpt", axis(0), "a", 60)
    assert await index.search("tenant-b|gpt", axis(0), -1.0) is None
    found = await index.search("tenant-a|gpt", axis(0), 0.9)
    assert found is not None
    assert found[0] == "a"


async def test_per_scope_keeps_the_newest(index_env: IndexEnv) -> None:
    index = index_env.make(3)
    for i in range(5):
        await index.add("s", axis(i), f"k{i}", 60)
    await index.add("other", axis(0), "o0", 60)
    for i in range(2):
        assert await index.search("s", axis(i), 0.5) is None
    for i in range(2, 5):
        found = await index.search("s", axis(i), 0.5)
        assert found is not None
        assert found[0] == f"k{i}"
    found = await index.search("other", axis(0), 0.5)
    assert found is not None
    assert found[0] == "o0"


async def test_expired_entries_are_ignored(index_env: IndexEnv) -> None:
    index = index_env.make(1000)
    await index.add("s", axis(0), "short", 0.2)
    await index.add("s", axis(1), "long", 60)
    await index.add("gone", axis(0), "only", 0.2)
    await index_env.advance(0.3)
    assert await index.search("s", axis(0), 0.5) is None
    found = await index.search("s", axis(0), -1.0)  # only the live entry is a candidate
    assert found is not None
    assert found[0] == "long"
    assert await index.search("gone", axis(0), -1.0) is None


async def test_keys_with_any_characters_roundtrip(index_env: IndexEnv) -> None:
    index = index_env.make(1000)
    key = "cache:é✓:" + "x" * 300
    await index.add("s", axis(2), key, 60)
    found = await index.search("s", axis(2), 0.9)
    assert found is not None
    assert found[0] == key


async def test_redis_index_list_layout_and_expiry() -> None:
    client = await redis_or_skip()
    prefix = unique_prefix()
    index = RedisSemanticIndex(client, prefix, per_scope=2)
    try:
        await index.add("s", axis(0), "a", 10)
        await index.add("s", axis(1), "b", 30)
        await index.add("s", axis(2), "c", 20)  # does not shorten the list's expiry
        key = prefix + "sem:s"
        assert await client.llen(key) == 2
        assert 20_000 < await client.pttl(key) <= 30_000
    finally:
        await delete_prefix(client, prefix)
        await index.aclose()
        await client.aclose()
