"""Response cache storage in Redis: the cache ports shared by every replica.

:class:`RedisCache` implements :class:`bastion.gateway.cache_store.CacheBackend`:
each value is a Redis string under ``prefix + key``, written with
``SET key value PX ttl_ms`` and read with ``GET``; the bytes are stored and
returned unchanged. Redis expires entries itself; bounding memory (the job of
:class:`~bastion.gateway.cache_store.MemoryCache`'s LRU) is left to the
server's ``maxmemory`` and ``maxmemory-policy`` (``allkeys-lru`` or
``volatile-lru`` suit a cache).

:class:`RedisSemanticIndex` implements
:class:`bastion.gateway.cache_store.SemanticIndex`. Each scope is one Redis
list under ``prefix + "sem:" + scope``, oldest entry first; an entry packs,
little-endian::

    float64 expires_at (epoch seconds, time.time()) | uint32 len(key) | key (utf-8)
    | the unit vector as float32s

:meth:`~RedisSemanticIndex.add` is one atomic script call: ``RPUSH``, ``LTRIM``
to the newest ``per_scope`` entries, and a ``PEXPIRE`` of the list that only
ever extends it, so the list lives as long as its longest-lived entry.
:meth:`~RedisSemanticIndex.search` reads the list with one ``LRANGE``, drops
expired entries (and any whose dimension differs from the query's), and does a
brute-force cosine search in numpy, like
:class:`~bastion.gateway.cache_store.MemorySemanticIndex`. Expired entries are
not deleted one by one; they age out through trimming and the list's expiry.
Expiry uses wall-clock time, so replicas' clocks should be in sync.
"""

from __future__ import annotations

import math
import struct
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import redis.asyncio as aioredis

from bastion.gateway.cache_store import unit

__all__ = ["ADD_LUA", "RedisCache", "RedisSemanticIndex"]

_HEADER = struct.Struct("<dI")  # expires_at, key length
_F32 = np.dtype("<f4")

# KEYS[1]: the scope's list. ARGV: entry, per_scope, ttl_ms.
ADD_LUA = """
redis.call('RPUSH', KEYS[1], ARGV[1])
redis.call('LTRIM', KEYS[1], -tonumber(ARGV[2]), -1)
local ttl = tonumber(ARGV[3])
if redis.call('PTTL', KEYS[1]) < ttl then
  redis.call('PEXPIRE', KEYS[1], ttl)
end
return 0
"""


def _ttl_ms(ttl_s: float) -> int:
    return math.ceil(ttl_s * 1000)


class RedisCache:
    """:class:`~bastion.gateway.cache_store.CacheBackend` on Redis strings (GET / SET PX).

    A TTL of zero or less stores nothing and removes any previous value under
    the key (as an already-expired entry would). ``client`` should be created
    with ``decode_responses=False``, so values come back as bytes. :meth:`aclose`
    closes the client only when ``owns_client``.
    """

    def __init__(
        self, client: aioredis.Redis, prefix: str = "bastion:", *, owns_client: bool = False
    ) -> None:
        self.client = client
        self.prefix = prefix
        self.owns_client = owns_client

    @classmethod
    def from_url(cls, url: str, prefix: str = "bastion:") -> RedisCache:
        """A cache on a new client for ``url``, closed by :meth:`aclose`."""
        return cls(aioredis.Redis.from_url(url, decode_responses=False), prefix, owns_client=True)

    async def get(self, key: str) -> bytes | None:
        value: Any = await self.client.get(self.prefix + key)
        return None if value is None else bytes(value)

    async def set(self, key: str, value: bytes, ttl_s: float) -> None:
        ms = _ttl_ms(ttl_s)
        if ms <= 0:
            await self.client.delete(self.prefix + key)
            return
        await self.client.set(self.prefix + key, value, px=ms)

    async def aclose(self) -> None:
        if self.owns_client:
            await self.client.aclose()


def _pack(expires_at: float, key: str, vector: np.ndarray[Any, Any]) -> bytes:
    raw = key.encode()
    return _HEADER.pack(expires_at, len(raw)) + raw + vector.astype(_F32).tobytes()


def _unpack(entry: bytes) -> tuple[float, str, np.ndarray[Any, Any]]:
    expires_at, n = _HEADER.unpack_from(entry)
    start = _HEADER.size
    key = entry[start : start + n].decode()
    vector = np.frombuffer(entry, dtype=_F32, offset=start + n)
    return expires_at, key, vector


class RedisSemanticIndex:
    """:class:`~bastion.gateway.cache_store.SemanticIndex` on one Redis list per scope.

    Keeps the newest ``per_scope`` vectors of each scope; :meth:`add` is one
    atomic script call, :meth:`search` one ``LRANGE`` plus a numpy matrix
    product. Ties go to the oldest entry, as in the in-process index.
    :meth:`aclose` closes the client only when ``owns_client``.
    """

    def __init__(
        self,
        client: aioredis.Redis,
        prefix: str = "bastion:",
        per_scope: int = 1000,
        *,
        owns_client: bool = False,
    ) -> None:
        if per_scope < 1:
            raise ValueError("per_scope must be at least 1")
        self.client = client
        self.prefix = prefix
        self.per_scope = per_scope
        self.owns_client = owns_client
        self._add = client.register_script(ADD_LUA)

    @classmethod
    def from_url(
        cls, url: str, prefix: str = "bastion:", per_scope: int = 1000
    ) -> RedisSemanticIndex:
        """An index on a new client for ``url``, closed by :meth:`aclose`."""
        client = aioredis.Redis.from_url(url, decode_responses=False)
        return cls(client, prefix, per_scope, owns_client=True)

    def _key(self, scope: str) -> str:
        return f"{self.prefix}sem:{scope}"

    async def search(
        self, scope: str, vector: Sequence[float], threshold: float
    ) -> tuple[str, float] | None:
        raw: Any = await self.client.lrange(self._key(scope), 0, -1)
        if not raw:
            return None
        q = np.asarray(unit(vector), dtype=np.float32)
        now = time.time()
        keys: list[str] = []
        rows: list[np.ndarray[Any, Any]] = []
        for entry in raw:
            expires_at, key, vec = _unpack(bytes(entry))
            if expires_at > now and vec.shape == q.shape:
                keys.append(key)
                rows.append(vec)
        if not rows:
            return None
        scores = np.stack(rows) @ q
        best = int(np.argmax(scores))
        score = float(scores[best])
        return (keys[best], score) if score >= threshold else None

    async def add(self, scope: str, vector: Sequence[float], key: str, ttl_s: float) -> None:
        ms = _ttl_ms(ttl_s)
        if ms <= 0:
            return  # already expired: it could never be found
        entry = _pack(time.time() + ttl_s, key, np.asarray(unit(vector), dtype=np.float32))
        await self._add(keys=[self._key(scope)], args=[entry, self.per_scope, ms])

    async def aclose(self) -> None:
        if self.owns_client:
            await self.client.aclose()
