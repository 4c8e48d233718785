"""Admin commands: keys, tenants, teams, budgets and usage.

They act on the configured database directly (as a platform admin on this
host) and write every change to the audit log, like the admin API does.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from bastion.cli.common import DataDir, err, errors_exit, open_db, out, ts
from bastion.store.sql.audit import SqlAuditStore
from bastion.store.sql.governance import SqlGovernanceStore
from bastion.store.sql.usage import SqlUsageStore
from bastion.telemetry.audit import AuditDraft
from bastion.telemetry.usage import TOTALS, UsageQuery

keys_app = typer.Typer(no_args_is_help=True, help="Manage virtual keys.")
tenants_app = typer.Typer(no_args_is_help=True, help="Manage tenants.")
teams_app = typer.Typer(no_args_is_help=True, help="Manage teams.")
budgets_app = typer.Typer(no_args_is_help=True, help="Manage budgets.")

Limit = Annotated[int | None, typer.Option(min=0, help="Per-minute limit.")]


def register(app: typer.Typer) -> None:
    app.add_typer(keys_app, name="keys")
    app.add_typer(tenants_app, name="tenants")
    app.add_typer(teams_app, name="teams")
    app.add_typer(budgets_app, name="budgets")
    app.command("usage")(usage)


def _gov(data_dir: Path | None) -> SqlGovernanceStore:
    return SqlGovernanceStore(open_db(data_dir))


def _audit(data_dir: Path | None, kind: str, tenant: str | None = None, **data: Any) -> None:
    store = SqlAuditStore(open_db(data_dir))
    try:
        store.append([AuditDraft(kind=kind, actor="cli", tenant=tenant, data=data)])
    finally:
        store.close()


def _csv(v: str) -> list[str]:
    return [m.strip() for m in v.split(",") if m.strip()] or ["*"]


# ---------------------------------------------------------------------- keys
@keys_app.command("create")
def keys_create(
    name: Annotated[str, typer.Option(help="A name for the key.")],
    models: Annotated[str, typer.Option(help="Comma-separated model aliases (globs ok).")] = "*",
    admin: Annotated[bool, typer.Option(help="A platform admin key (no tenant).")] = False,
    role: Annotated[str | None, typer.Option(help="admin, developer or viewer.")] = None,
    tenant: Annotated[str, typer.Option(help="Tenant id or name.")] = "default",
    team: Annotated[str | None, typer.Option(help="Team id or name.")] = None,
    owner: Annotated[str | None, typer.Option(help="Who the key is for.")] = None,
    rpm: Limit = None,
    tpm: Limit = None,
    ttl_days: Annotated[float | None, typer.Option(help="Expire after N days.")] = None,
    data_dir: DataDir = None,
) -> None:
    """Create a key; its secret is printed once and only its hash is stored."""
    expires = time.time() + ttl_days * 86400 if ttl_days else None
    with errors_exit():
        rec, secret = _gov(data_dir).create(
            name,
            _csv(models),
            role="admin" if admin else role,
            tenant_id=None if admin else tenant,
            team_id=team,
            owner=owner,
            rpm=rpm,
            tpm=tpm,
            expires_at=expires,
        )
    _audit(
        data_dir,
        "admin.key.create",
        rec.tenant_id,
        key_id=rec.id,
        name=rec.name,
        models=list(rec.models),
        role=rec.role,
        team=rec.team_id,
    )
    err.print(f"created key {rec.id} ({rec.name}) for models {','.join(rec.models)}")
    err.print("the secret below is shown once; store it now:")
    print(secret)


@keys_app.command("list")
def keys_list(
    all_: Annotated[bool, typer.Option("--all", help="Include revoked keys.")] = False,
    tenant: Annotated[str | None, typer.Option(help="Only this tenant's keys.")] = None,
    data_dir: DataDir = None,
) -> None:
    """List keys (never their secrets)."""
    store = _gov(data_dir)
    with errors_exit():
        tenant_id = store.get_tenant(tenant).id if tenant else None
    table = Table("id", "name", "prefix", "models", "role", "tenant", "team", "created", "expires")
    table.add_column("revoked")
    for r in store.list(include_revoked=all_, tenant_id=tenant_id):
        table.add_row(
            r.id,
            r.name,
            r.prefix + "…",
            ",".join(r.models),
            r.role or "",
            r.tenant_id or "(platform)",
            r.team_id or "",
            ts(r.created_at),
            ts(r.expires_at),
            ts(r.revoked_at),
        )
    out.print(table)


@keys_app.command("revoke")
def keys_revoke(
    key: Annotated[str, typer.Argument(help="Key id or name.")], data_dir: DataDir = None
) -> None:
    """Revoke a key; a running server stops accepting it within a second."""
    with errors_exit():
        rec = _gov(data_dir).revoke(key)
    _audit(data_dir, "admin.key.revoke", rec.tenant_id, key_id=rec.id, name=rec.name)
    out.print(f"revoked {rec.id} ({rec.name})")


# ---------------------------------------------------------------------- tenants and teams
@tenants_app.command("create")
def tenants_create(
    name: Annotated[str, typer.Argument(help="Tenant name.")],
    models: Annotated[str, typer.Option(help="Models the tenant may use.")] = "*",
    rpm: Limit = None,
    tpm: Limit = None,
    data_dir: DataDir = None,
) -> None:
    """Create a tenant."""
    with errors_exit():
        t = _gov(data_dir).create_tenant(name, models=_csv(models), rpm=rpm, tpm=tpm)
    _audit(data_dir, "admin.tenant.create", t.id, id=t.id, name=t.name, rpm=rpm, tpm=tpm)
    out.print(f"created tenant {t.id} ({t.name})")


@tenants_app.command("list")
def tenants_list(data_dir: DataDir = None) -> None:
    """List tenants."""
    table = Table("id", "name", "models", "rpm", "tpm")
    for t in _gov(data_dir).list_tenants():
        table.add_row(t.id, t.name, ",".join(t.models), str(t.rpm or "-"), str(t.tpm or "-"))
    out.print(table)


@teams_app.command("create")
def teams_create(
    name: Annotated[str, typer.Argument(help="Team name.")],
    tenant: Annotated[str, typer.Option(help="Tenant id or name.")] = "default",
    rpm: Limit = None,
    tpm: Limit = None,
    data_dir: DataDir = None,
) -> None:
    """Create a team in a tenant."""
    with errors_exit():
        t = _gov(data_dir).create_team(tenant, name, rpm=rpm, tpm=tpm)
    _audit(data_dir, "admin.team.create", t.tenant_id, id=t.id, name=t.name)
    out.print(f"created team {t.id} ({t.name})")


@teams_app.command("list")
def teams_list(
    tenant: Annotated[str | None, typer.Option(help="Tenant id or name.")] = None,
    data_dir: DataDir = None,
) -> None:
    """List teams."""
    store = _gov(data_dir)
    with errors_exit():
        tenant_id = store.get_tenant(tenant).id if tenant else None
    table = Table("id", "tenant", "name", "rpm", "tpm")
    for t in store.list_teams(tenant_id):
        table.add_row(t.id, t.tenant_id, t.name, str(t.rpm or "-"), str(t.tpm or "-"))
    out.print(table)


# ---------------------------------------------------------------------- budgets
@budgets_app.command("set")
def budgets_set(
    scope: Annotated[str, typer.Argument(help="tenant, team or key.")],
    target: Annotated[str, typer.Argument(help="Id or name of the tenant, team or key.")],
    usd: Annotated[float | None, typer.Option(min=0, help="USD per period.")] = None,
    tokens: Annotated[int | None, typer.Option(min=0, help="Tokens per period.")] = None,
    period: Annotated[str, typer.Option(help="day or month.")] = "month",
    mode: Annotated[str, typer.Option(help="hard (refuse) or soft (alert).")] = "hard",
    tenant: Annotated[str, typer.Option(help="The team's tenant (scope team).")] = "default",
    data_dir: DataDir = None,
) -> None:
    """Create or replace a budget."""
    store = _gov(data_dir)
    with errors_exit():
        if scope == "tenant":
            scope_id = tenant_id = store.get_tenant(target).id
        elif scope == "team":
            tenant_id = store.get_tenant(tenant).id
            scope_id = store.get_team(tenant_id, target).id
        else:
            key = store.get_key(target)
            scope_id, tenant_id = key.id, key.tenant_id or ""
        b = store.set_budget(scope, scope_id, tenant_id, period, usd=usd, tokens=tokens, mode=mode)
    _audit(data_dir, "admin.budget.set", b.tenant_id, id=b.id, scope=scope, scope_id=scope_id)
    out.print(f"budget {b.id}: {scope} {scope_id} {period} usd={usd} tokens={tokens} ({mode})")


@budgets_app.command("list")
def budgets_list(data_dir: DataDir = None) -> None:
    """List budgets."""
    table = Table("id", "scope", "scope id", "tenant", "period", "usd", "tokens", "mode")
    for b in _gov(data_dir).list_budgets():
        table.add_row(
            b.id,
            b.scope,
            b.scope_id,
            b.tenant_id,
            b.period,
            "-" if b.usd is None else f"{b.usd:g}",
            "-" if b.tokens is None else str(b.tokens),
            b.mode,
        )
    out.print(table)


@budgets_app.command("delete")
def budgets_delete(
    budget: Annotated[str, typer.Argument(help="Budget id.")], data_dir: DataDir = None
) -> None:
    """Delete a budget."""
    with errors_exit():
        b = _gov(data_dir).delete_budget(budget)
    _audit(data_dir, "admin.budget.delete", b.tenant_id, id=b.id)
    out.print(f"deleted budget {b.id}")


# ---------------------------------------------------------------------- usage
def usage(
    group_by: Annotated[
        str, typer.Option(help="Comma-separated: day, month, tenant, team, key, model, tag.")
    ] = "day",
    days: Annotated[float | None, typer.Option(help="Only the last N days.")] = None,
    tenant: Annotated[str | None, typer.Option(help="Tenant id or name.")] = None,
    team: Annotated[str | None, typer.Option(help="Team id.")] = None,
    model: Annotated[str | None, typer.Option(help="Model alias.")] = None,
    tag: Annotated[str | None, typer.Option(help="Caller tag.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="JSON lines instead of a table.")] = False,
    data_dir: DataDir = None,
) -> None:
    """Requests, tokens and cost, grouped and filtered."""
    db = open_db(data_dir)
    with errors_exit():
        tenant_id = SqlGovernanceStore(db).get_tenant(tenant).id if tenant else None
    groups = tuple(g for g in group_by.split(",") if g)
    try:
        q = UsageQuery(
            start=time.time() - days * 86400 if days else None,
            tenant_id=tenant_id,
            team_id=team,
            model=model,
            tag=tag,
            group_by=groups,
        )
    except ValueError as exc:
        err.print(f"error: {exc}", markup=False)
        raise typer.Exit(1) from None
    rows = SqlUsageStore(db).query(q)
    if as_json:
        for row in rows:
            print(json.dumps(row))
        return
    table = Table(*groups, *TOTALS)
    for row in rows:
        cells = [str(row[g]) for g in groups]
        cells += [f"{row[t]:.6f}" if t == "cost_usd" else str(row[t]) for t in TOTALS]
        table.add_row(*cells)
    out.print(table)
