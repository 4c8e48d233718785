"""Virtual keys and principals.

A caller presents ``Authorization: Bearer <key>`` (or Anthropic's
``x-api-key``). Keys are stored only as SHA-256 digests. The :class:`KeyRing`
holds every active key in memory, so authentication is a hash and a dict
lookup with no database round trip; it is rebuilt from the :class:`KeyStore`
when the store reports a change.
"""

from __future__ import annotations

import fnmatch
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Protocol

from bastion.core.errors import AuthenticationError, PermissionDenied
from bastion.core.secrets import hash_key


@dataclass(frozen=True, slots=True)
class KeyRecord:
    """A stored virtual key (never its secret)."""

    id: str
    name: str
    hash: str
    models: tuple[str, ...] = ("*",)
    admin: bool = False
    created_at: float = 0.0
    expires_at: float | None = None
    revoked_at: float | None = None
    prefix: str = ""

    def active(self, now: float) -> bool:
        return self.revoked_at is None and (self.expires_at is None or self.expires_at > now)


class KeyStore(Protocol):
    """Persistent keys (SQLite in embedded mode). Called off the hot path only."""

    def create(
        self,
        name: str,
        models: Iterable[str] = ("*",),
        *,
        admin: bool = False,
        expires_at: float | None = None,
    ) -> tuple[KeyRecord, str]:
        """Create a key; returns the record and the secret (shown once)."""
        ...

    def list(self, include_revoked: bool = False) -> list[KeyRecord]: ...

    def revoke(self, id_or_name: str) -> KeyRecord: ...

    def version(self) -> int:
        """A number that changes whenever keys change (from any process)."""
        ...

    def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: the key's identity and what it may use."""

    key_id: str
    name: str
    models: tuple[str, ...] = ("*",)
    admin: bool = False
    expires_at: float | None = None
    _exact: frozenset[str] = field(default=frozenset(), repr=False)

    def may_use(self, model: str) -> bool:
        if self.admin or "*" in self.models or model in self._exact:
            return True
        return any(fnmatch.fnmatchcase(model, p) for p in self.models if "*" in p or "?" in p)

    def check_model(self, model: str) -> None:
        if not self.may_use(model):
            raise PermissionDenied(f"this key may not use model {model!r}", param="model")


def principal_of(rec: KeyRecord) -> Principal:
    return Principal(
        key_id=rec.id,
        name=rec.name,
        models=rec.models,
        admin=rec.admin,
        expires_at=rec.expires_at,
        _exact=frozenset(m for m in rec.models if "*" not in m and "?" not in m),
    )


class KeyRing:
    """In-memory digest -> principal map."""

    def __init__(self, records: Iterable[KeyRecord] = ()) -> None:
        now = time.time()
        self._by_hash = {r.hash: principal_of(r) for r in records if r.active(now)}

    def __len__(self) -> int:
        return len(self._by_hash)

    def authenticate(self, token: str | None) -> Principal:
        if not token:
            raise AuthenticationError(
                "missing API key: send 'Authorization: Bearer <key>'", param="authorization"
            )
        p = self._by_hash.get(hash_key(token))
        if p is None:
            raise AuthenticationError("invalid API key")
        if p.expires_at is not None and p.expires_at <= time.time():
            raise AuthenticationError("API key expired")
        return p


def bearer(header: str | None) -> str | None:
    """The token of an ``Authorization: Bearer`` header."""
    if not header:
        return None
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip() or None
