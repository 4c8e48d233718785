"""Virtual keys and principals.

A caller presents ``Authorization: Bearer <key>`` (or Anthropic's
``x-api-key``). Keys are stored only as SHA-256 digests. The :class:`KeyRing`
holds every active key in memory as a :class:`Principal` (with its tenant,
team, limits and budgets resolved), so authentication is a hash and a dict
lookup with no database round trip; it is rebuilt from the governance store
when the store reports a change (:mod:`bastion.gateway.directory`).
"""

from __future__ import annotations

import fnmatch
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from bastion.core.errors import AuthenticationError, PermissionDenied
from bastion.core.secrets import hash_key


@dataclass(frozen=True, slots=True)
class KeyRecord:
    """A stored virtual key (never its secret)."""

    id: str
    name: str
    hash: str
    models: tuple[str, ...] = ("*",)
    role: str | None = None
    tenant_id: str | None = "tnt_default"
    team_id: str | None = None
    owner: str | None = None
    rpm: int | None = None
    tpm: int | None = None
    created_at: float = 0.0
    expires_at: float | None = None
    revoked_at: float | None = None
    prefix: str = ""

    @property
    def admin(self) -> bool:
        """A platform admin: role ``admin`` and no tenant."""
        return self.role == "admin" and self.tenant_id is None

    def active(self, now: float) -> bool:
        return self.revoked_at is None and (self.expires_at is None or self.expires_at > now)


@dataclass(frozen=True, slots=True)
class BudgetRule:
    """A budget as the hot path checks it (USD in micro-dollars)."""

    id: str
    period: str
    micro_usd: int | None
    tokens: int | None
    hard: bool


@dataclass(frozen=True, slots=True)
class ScopeLimits:
    """The limits of one scope a request counts against (its key, team or tenant)."""

    kind: str
    id: str
    rpm: int | None = None
    tpm: int | None = None
    budgets: tuple[BudgetRule, ...] = ()

    @property
    def tag(self) -> str:
        return f"{self.kind}:{self.id}"


def _allows(patterns: tuple[str, ...], exact: frozenset[str], model: str) -> bool:
    if "*" in patterns or model in exact:
        return True
    return any(fnmatch.fnmatchcase(model, p) for p in patterns if "*" in p or "?" in p)


def _exact(patterns: tuple[str, ...]) -> frozenset[str]:
    return frozenset(m for m in patterns if "*" not in m and "?" not in m)


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: the key's identity, its tenant and team, and its limits."""

    key_id: str
    name: str
    models: tuple[str, ...] = ("*",)
    role: str | None = None
    tenant_id: str | None = "tnt_default"
    tenant_name: str | None = "default"
    team_id: str | None = None
    team_name: str | None = None
    expires_at: float | None = None
    tenant_models: tuple[str, ...] = ("*",)
    scopes: tuple[ScopeLimits, ...] = ()
    _exact: frozenset[str] = field(default=frozenset(), repr=False)
    _tenant_exact: frozenset[str] = field(default=frozenset(), repr=False)

    @property
    def admin(self) -> bool:
        """A platform admin (role ``admin``, no tenant)."""
        return self.role == "admin" and self.tenant_id is None

    def may_use(self, model: str) -> bool:
        if self.admin:
            return True
        return _allows(self.models, self._exact, model) and _allows(
            self.tenant_models, self._tenant_exact, model
        )

    def check_model(self, model: str) -> None:
        if not self.may_use(model):
            raise PermissionDenied(f"this key may not use model {model!r}", param="model")


def principal_of(
    rec: KeyRecord,
    *,
    tenant_name: str | None = None,
    tenant_models: tuple[str, ...] = ("*",),
    team_name: str | None = None,
    scopes: tuple[ScopeLimits, ...] = (),
) -> Principal:
    return Principal(
        key_id=rec.id,
        name=rec.name,
        models=rec.models,
        role=rec.role,
        tenant_id=rec.tenant_id,
        tenant_name=tenant_name if rec.tenant_id else None,
        team_id=rec.team_id,
        team_name=team_name,
        expires_at=rec.expires_at,
        tenant_models=tenant_models,
        scopes=scopes or (ScopeLimits("key", rec.id, rec.rpm, rec.tpm),),
        _exact=_exact(rec.models),
        _tenant_exact=_exact(tenant_models),
    )


class KeyRing:
    """In-memory digest -> principal map (built by :mod:`bastion.gateway.directory`)."""

    def __init__(self, principals: dict[str, Principal] | None = None) -> None:
        self._by_hash = principals or {}

    @classmethod
    def of(cls, records: Iterable[KeyRecord]) -> KeyRing:
        now = time.time()
        return cls({r.hash: principal_of(r) for r in records if r.active(now)})

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
