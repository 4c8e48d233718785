"""Windowed counters in Redis: :class:`bastion.gateway.quota.Counters` for scale-out.

Every replica of a deployment points at the same Redis, so a limit of R per
window admits exactly R requests in total, whichever replica they reach.

Key layout: each counter is a plain Redis string holding an integer, stored
under ``prefix + key`` (the caller's key already names its window, e.g.
``...:m:29433120``). Several deployments or test runs share one Redis by using
different prefixes.

Atomicity and round trips:

* :meth:`RedisCounters.acquire` is ONE ``EVALSHA`` of a Lua script, so it is
  one round trip and atomic on the server: it reads every counter, refuses
  (changing nothing) if any hard check would exceed its limit, and otherwise
  increments all of them. No other command runs in between, on any replica.
* :meth:`RedisCounters.adjust` is one ``EVALSHA`` as well (increment, set the
  TTL of counters it creates).
* :meth:`RedisCounters.seed` is ``SET key value NX EX ttl``; :meth:`RedisCounters.get`
  is one ``MGET``.

Expiry: a counter gets its ``ttl_s`` (``EXPIRE``) when a call creates it, i.e.
when it has no TTL after the increment; later increments keep that expiry, so
the counter disappears once its window is over, as in
:class:`bastion.gateway.quota.MemoryCounters`. Redis Cluster is not supported
as such: the keys of one acquire are sent in one script call, which Cluster
would only accept if they hash to one slot.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import redis.asyncio as aioredis

from bastion.gateway.quota import Check, Outcome

__all__ = ["ACQUIRE_LUA", "ADJUST_LUA", "RedisCounters"]

# KEYS: the counters. ARGV: four per check: amount, limit, ttl_s, hard (1 = enforce
# the limit; the caller sends 0 for a soft check or a check without a limit).
# Returns {admitted (1/0), failed index (0-based, -1 when admitted), values...}.
ACQUIRE_LUA = """
local n = #KEYS
local values = {}
for i = 1, n do
  local v = redis.call('GET', KEYS[i])
  if v then values[i] = tonumber(v) else values[i] = 0 end
end
for i = 1, n do
  local b = 4 * (i - 1)
  if ARGV[b + 4] == '1' and values[i] + tonumber(ARGV[b + 1]) > tonumber(ARGV[b + 2]) then
    local out = {0, i - 1}
    for j = 1, n do out[j + 2] = values[j] end
    return out
  end
end
local out = {1, -1}
for i = 1, n do
  local b = 4 * (i - 1)
  out[i + 2] = redis.call('INCRBY', KEYS[i], ARGV[b + 1])
  if redis.call('TTL', KEYS[i]) == -1 then
    redis.call('EXPIRE', KEYS[i], ARGV[b + 3])
  end
end
return out
"""

# KEYS: the counters. ARGV: two per key: delta, ttl_s. Returns nothing.
ADJUST_LUA = """
for i = 1, #KEYS do
  redis.call('INCRBY', KEYS[i], ARGV[2 * i - 1])
  if redis.call('TTL', KEYS[i]) == -1 then
    redis.call('EXPIRE', KEYS[i], ARGV[2 * i])
  end
end
return 0
"""


class RedisCounters:
    """:class:`bastion.gateway.quota.Counters` shared through Redis.

    ``client`` must be a ``redis.asyncio.Redis``; responses are parsed as
    integers, so ``decode_responses`` may be either (``from_url`` uses False).
    Every key is stored as ``prefix + key``. :meth:`aclose` closes the client
    unless ``owns_client`` is False.
    """

    def __init__(
        self, client: aioredis.Redis, prefix: str = "bastion:", *, owns_client: bool = True
    ) -> None:
        self.client = client
        self.prefix = prefix
        self.owns_client = owns_client
        self._acquire = client.register_script(ACQUIRE_LUA)
        self._adjust = client.register_script(ADJUST_LUA)

    @classmethod
    def from_url(cls, url: str, prefix: str = "bastion:") -> RedisCounters:
        """Counters on a new client for ``url`` (``redis://host:port/db``), closed by aclose."""
        client = aioredis.Redis.from_url(url, decode_responses=False)
        return cls(client, prefix, owns_client=True)

    async def acquire(self, checks: Sequence[Check]) -> Outcome:
        """Check every hard limit and, if none refuses, add every amount: one atomic EVALSHA."""
        if not checks:
            return Outcome(True, ())
        keys = [self.prefix + c.key for c in checks]
        args: list[int] = []
        for c in checks:
            enforce = c.hard and c.limit is not None
            args += [c.amount, c.limit if c.limit is not None else -1, c.ttl_s, int(enforce)]
        reply: Any = await self._acquire(keys=keys, args=args)
        admitted, failed, *values = (int(x) for x in reply)
        return Outcome(bool(admitted), tuple(values), failed)

    async def adjust(self, deltas: Sequence[tuple[str, int, int]]) -> None:
        """Add each delta (creating a missing counter with its TTL): one atomic EVALSHA."""
        if not deltas:
            return
        keys = [self.prefix + key for key, _, _ in deltas]
        args: list[int] = []
        for _, delta, ttl_s in deltas:
            args += [delta, ttl_s]
        await self._adjust(keys=keys, args=args)

    async def seed(self, key: str, value: int, ttl_s: int) -> bool:
        """``SET key value NX EX ttl_s``: True when the key did not exist and was set."""
        reply: Any = await self.client.set(self.prefix + key, value, ex=ttl_s, nx=True)
        return bool(reply)

    async def get(self, keys: Sequence[str]) -> list[int]:
        """Current values by one MGET (0 for a missing or expired counter)."""
        if not keys:
            return []
        reply: Any = await self.client.mget([self.prefix + k for k in keys])
        return [0 if v is None else int(v) for v in reply]

    async def aclose(self) -> None:
        if self.owns_client:
            await self.client.aclose()
