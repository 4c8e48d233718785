"""Build the in-memory key ring from a governance snapshot.

Each active key becomes a :class:`~bastion.gateway.auth.Principal` with its
tenant's and team's names, model allow-lists and limits resolved, and with
the chain of scopes (key, team, tenant) that rate limits and budgets are
checked against, in that order. Budgets become micro-dollar integers here so
the hot path does integer arithmetic only.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable

from bastion.gateway.auth import (
    BudgetRule,
    KeyRecord,
    KeyRing,
    Principal,
    ScopeLimits,
    principal_of,
)
from bastion.gateway.tenancy import DEFAULT_TENANT, Budget, Snapshot, Team, Tenant

log = logging.getLogger("bastion.gateway")

DEFAULT = Tenant(id=DEFAULT_TENANT, name="default")


def _rules(budgets: Iterable[Budget]) -> tuple[BudgetRule, ...]:
    return tuple(
        BudgetRule(
            id=b.id,
            period=b.period,
            micro_usd=None if b.usd is None else round(b.usd * 1_000_000),
            tokens=b.tokens,
            hard=b.mode == "hard",
        )
        for b in budgets
    )


def build_ring(snapshot: Snapshot | None, extra: Iterable[KeyRecord] = ()) -> KeyRing:
    """Principals for the snapshot's keys plus ``extra`` (policy and environment keys).

    A key whose tenant or team is unknown is left out (and logged): it cannot
    be attributed, so it must not be served.
    """
    tenants: dict[str, Tenant] = {DEFAULT.id: DEFAULT}
    teams: dict[str, Team] = {}
    budgets: dict[tuple[str, str], list[Budget]] = {}
    keys: list[KeyRecord] = list(extra)
    if snapshot is not None:
        tenants.update({t.id: t for t in snapshot.tenants})
        teams = {t.id: t for t in snapshot.teams}
        for b in snapshot.budgets:
            budgets.setdefault((b.scope, b.scope_id), []).append(b)
        keys += snapshot.keys
    by_tenant_name = {t.name: t for t in tenants.values()}
    now = time.time()
    out: dict[str, Principal] = {}
    for rec in keys:
        if not rec.active(now):
            continue
        tenant_id = rec.tenant_id
        if tenant_id is not None and tenant_id not in tenants and tenant_id in by_tenant_name:
            tenant_id = by_tenant_name[tenant_id].id  # policy keys name their tenant
        if tenant_id is None:
            out[rec.hash] = principal_of(
                rec, scopes=(ScopeLimits("key", rec.id, rec.rpm, rec.tpm),)
            )
            continue
        tenant = tenants.get(tenant_id)
        team = teams.get(rec.team_id) if rec.team_id else None
        if team is None and rec.team_id and tenant is not None:
            team = next(
                (t for t in teams.values() if t.tenant_id == tenant.id and t.name == rec.team_id),
                None,
            )
        if tenant is None or (rec.team_id and (team is None or team.tenant_id != tenant.id)):
            log.warning("key %s names an unknown tenant or team; it is not served", rec.id)
            continue
        scopes = [
            ScopeLimits("key", rec.id, rec.rpm, rec.tpm, _rules(budgets.get(("key", rec.id), ())))
        ]
        if team is not None:
            scopes.append(
                ScopeLimits(
                    "team", team.id, team.rpm, team.tpm, _rules(budgets.get(("team", team.id), ()))
                )
            )
        scopes.append(
            ScopeLimits(
                "tenant",
                tenant.id,
                tenant.rpm,
                tenant.tpm,
                _rules(budgets.get(("tenant", tenant.id), ())),
            )
        )
        fixed = rec
        if tenant_id != rec.tenant_id or (team is not None and team.id != rec.team_id):
            from dataclasses import replace

            fixed = replace(rec, tenant_id=tenant.id, team_id=team.id if team else None)
        out[rec.hash] = principal_of(
            fixed,
            tenant_name=tenant.name,
            tenant_models=tenant.models,
            team_name=team.name if team else None,
            scopes=tuple(scopes),
        )
    return KeyRing(out)
