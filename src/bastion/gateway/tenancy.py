"""Tenants, teams, budgets and roles: the records and the store port.

The hierarchy is tenant -> team -> virtual key. Every key belongs to a
tenant (``default`` unless told otherwise) and optionally to one team of that
tenant. A key may carry a *role* for the admin API:

* ``admin``: everything within its tenant (teams, keys, budgets, usage,
  audit); a key with role ``admin`` and no tenant is a *platform* admin, who
  also manages tenants;
* ``developer``: read within its tenant, and create or revoke keys without
  an admin role there;
* ``viewer``: read only, within its tenant.

A key without a role serves the data plane only. Each of tenant, team and key
may have RPM/TPM limits and budgets; a request must pass all of them.

The store is called off the request path only (admin calls, the refresh
loop); the gateway works from an in-memory snapshot rebuilt when
:meth:`GovernanceStore.version` changes.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal, Protocol

from bastion.gateway.auth import KeyRecord

Role = Literal["admin", "developer", "viewer"]
ROLES: tuple[str, ...] = ("admin", "developer", "viewer")
Scope = Literal["tenant", "team", "key"]
SCOPES: tuple[str, ...] = ("tenant", "team", "key")
Period = Literal["day", "month"]
PERIODS: tuple[str, ...] = ("day", "month")
DEFAULT_TENANT = "tnt_default"


@dataclass(frozen=True, slots=True)
class Tenant:
    id: str
    name: str
    models: tuple[str, ...] = ("*",)
    rpm: int | None = None
    tpm: int | None = None
    created_at: float = 0.0


@dataclass(frozen=True, slots=True)
class Team:
    id: str
    tenant_id: str
    name: str
    rpm: int | None = None
    tpm: int | None = None
    created_at: float = 0.0


@dataclass(frozen=True, slots=True)
class Budget:
    """A spending cap for one scope and period.

    ``usd`` and ``tokens`` cap cost and total tokens (either or both).
    ``hard`` refuses requests that would pass the cap (``budget_exceeded``);
    ``soft`` lets them through and raises an alert once per period.
    """

    id: str
    scope: Scope
    scope_id: str
    tenant_id: str
    period: Period
    usd: float | None = None
    tokens: int | None = None
    mode: Literal["hard", "soft"] = "hard"
    created_at: float = 0.0


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Everything the hot path needs, read in one go."""

    version: int
    tenants: tuple[Tenant, ...]
    teams: tuple[Team, ...]
    keys: tuple[KeyRecord, ...]
    budgets: tuple[Budget, ...]


class GovernanceStore(Protocol):
    """Persistent tenants, teams, keys and budgets (SQLite or PostgreSQL).

    Names are unique: tenants globally, teams within their tenant, active keys
    globally. Lookups take an id or a name. Every write changes :meth:`version`.
    """

    # tenants
    def create_tenant(
        self,
        name: str,
        *,
        models: Iterable[str] = ("*",),
        rpm: int | None = None,
        tpm: int | None = None,
    ) -> Tenant: ...

    def update_tenant(
        self,
        id_or_name: str,
        *,
        models: Iterable[str] | None = None,
        rpm: int | None = None,
        tpm: int | None = None,
    ) -> Tenant: ...

    def get_tenant(self, id_or_name: str) -> Tenant: ...

    def list_tenants(self) -> list[Tenant]: ...

    # teams
    def create_team(
        self, tenant_id: str, name: str, *, rpm: int | None = None, tpm: int | None = None
    ) -> Team: ...

    def get_team(self, tenant_id: str, id_or_name: str) -> Team: ...

    def list_teams(self, tenant_id: str | None = None) -> list[Team]: ...

    # keys
    def create(
        self,
        name: str,
        models: Iterable[str] = ("*",),
        *,
        role: str | None = None,
        tenant_id: str | None = DEFAULT_TENANT,
        team_id: str | None = None,
        owner: str | None = None,
        rpm: int | None = None,
        tpm: int | None = None,
        expires_at: float | None = None,
    ) -> tuple[KeyRecord, str]:
        """Create a key; returns the record and the secret (shown once)."""
        ...

    def get_key(self, id_or_name: str) -> KeyRecord:
        """An active key by id or name."""
        ...

    def revoke(self, id_or_name: str) -> KeyRecord: ...

    # budgets
    def set_budget(
        self,
        scope: str,
        scope_id: str,
        tenant_id: str,
        period: str,
        *,
        usd: float | None = None,
        tokens: int | None = None,
        mode: str = "hard",
    ) -> Budget:
        """Create or replace the budget of ``(scope, scope_id, period)``."""
        ...

    def list_budgets(self, tenant_id: str | None = None) -> list[Budget]: ...

    def delete_budget(self, budget_id: str) -> Budget: ...

    # change tracking
    def version(self) -> int:
        """A number that changes whenever anything here changes (from any process)."""
        ...

    def snapshot(self) -> Snapshot:
        """Tenants, teams, active keys and budgets, with the version they were read at."""
        ...

    def close(self) -> None: ...

    # last: a method named ``list`` shadows the builtin in later annotations
    def list(self, include_revoked: bool = False, tenant_id: str | None = None) -> list[KeyRecord]:
        """Keys, oldest first; all tenants when ``tenant_id`` is None."""
        ...
