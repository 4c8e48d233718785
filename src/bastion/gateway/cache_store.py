"""Response cache storage: the ports and their in-process implementations.

:class:`CacheBackend` stores opaque bytes under a key with a TTL (the exact
cache: one key per normalised request). :class:`SemanticIndex` maps unit
vectors to such keys, per scope (tenant, model and parameters), and answers
"the most similar stored vector at or above a threshold". The in-process
versions here serve embedded mode; :mod:`bastion.store.redis.cache` shares
both between replicas.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any, Protocol


class CacheBackend(Protocol):
    async def get(self, key: str) -> bytes | None:
        """The stored value, or None when absent or expired."""
        ...

    async def set(self, key: str, value: bytes, ttl_s: float) -> None: ...

    async def aclose(self) -> None: ...


class SemanticIndex(Protocol):
    async def search(
        self, scope: str, vector: Sequence[float], threshold: float
    ) -> tuple[str, float] | None:
        """The key of the most similar live vector in ``scope`` with cosine >= threshold."""
        ...

    async def add(self, scope: str, vector: Sequence[float], key: str, ttl_s: float) -> None: ...

    async def aclose(self) -> None: ...


class MemoryCache:
    """An LRU of at most ``max_entries`` values and ``max_bytes`` bytes, with TTLs."""

    def __init__(
        self,
        max_entries: int = 10_000,
        max_bytes: int = 256 * 1024 * 1024,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._clock = clock
        self._data: OrderedDict[str, tuple[bytes, float]] = OrderedDict()
        self._bytes = 0

    async def get(self, key: str) -> bytes | None:
        item = self._data.get(key)
        if item is None:
            return None
        if item[1] <= self._clock():
            self._drop(key)
            return None
        self._data.move_to_end(key)
        return item[0]

    async def set(self, key: str, value: bytes, ttl_s: float) -> None:
        if len(value) > self.max_bytes:
            return
        if key in self._data:
            self._drop(key)
        self._data[key] = (value, self._clock() + ttl_s)
        self._bytes += len(value)
        while len(self._data) > self.max_entries or self._bytes > self.max_bytes:
            self._drop(next(iter(self._data)))

    def _drop(self, key: str) -> None:
        value, _ = self._data.pop(key)
        self._bytes -= len(value)

    def __len__(self) -> int:
        return len(self._data)

    async def aclose(self) -> None:
        self._data.clear()
        self._bytes = 0


def unit(vector: Sequence[float]) -> list[float]:
    """``vector`` scaled to length 1 (a zero vector stays zero)."""
    norm = math.sqrt(sum(x * x for x in vector))
    return [x / norm for x in vector] if norm else [0.0 for _ in vector]


class MemorySemanticIndex:
    """Brute-force cosine search over at most ``per_scope`` vectors per scope."""

    def __init__(self, per_scope: int = 1000, clock: Callable[[], float] = time.monotonic) -> None:
        self.per_scope = per_scope
        self._clock = clock
        self._scopes: dict[str, list[tuple[object, str, float]]] = {}

    async def search(
        self, scope: str, vector: Sequence[float], threshold: float
    ) -> tuple[str, float] | None:
        entries = self._scopes.get(scope)
        if not entries:
            return None
        now = self._clock()
        live = [e for e in entries if e[2] > now]
        if len(live) != len(entries):
            self._scopes[scope] = entries = live
        if not entries:
            return None
        import numpy as np  # imported on first use: only semantic caching needs it

        q = np.asarray(unit(vector), dtype=np.float32)
        vectors: list[Any] = [e[0] for e in entries]
        matrix: Any = np.stack(vectors)
        scores = matrix @ q
        best = int(np.argmax(scores))
        score = float(scores[best])
        return (entries[best][1], score) if score >= threshold else None

    async def add(self, scope: str, vector: Sequence[float], key: str, ttl_s: float) -> None:
        import numpy as np

        entries = self._scopes.setdefault(scope, [])
        entries.append((np.asarray(unit(vector), dtype=np.float32), key, self._clock() + ttl_s))
        if len(entries) > self.per_scope:
            del entries[: len(entries) - self.per_scope]

    async def aclose(self) -> None:
        self._scopes.clear()
