"""``bastion prompts``: the prompt registry from the command line.

``create``, ``list``, ``show``, ``render``, ``history``, ``label`` (a plain
move), ``promote`` (gated by the version's eval and red-team suites) and
``rollback``. Like the admin commands, they act on the configured database
directly, as a platform admin on this host, in the tenant ``--tenant`` names,
and write every change to the audit log (actor ``--actor``, default ``cli``).

Suite paths in a template file are resolved against the file's folder and
stored as absolute paths, so ``promote`` finds them from any directory.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from bastion.cli.common import (
    DataDir,
    GatewayKey,
    GatewayUrl,
    PolicyFile,
    err,
    errors_exit,
    open_db,
    out,
    settings,
    ts,
    usage_error,
)
from bastion.config.loader import load_yaml_model
from bastion.core.errors import BastionError, InvalidRequest
from bastion.prompts.model import LATEST, PromptTemplate, PromptVersion
from bastion.prompts.promotion import Gate, PromotionResult, gates_for, promote
from bastion.prompts.service import PromptService
from bastion.store.sql.audit import SqlAuditStore
from bastion.store.sql.governance import SqlGovernanceStore
from bastion.store.sql.prompts import SqlPromptStore
from bastion.telemetry.audit import AuditDraft

prompts_app = typer.Typer(
    no_args_is_help=True, help="The prompt registry: versions, labels, gated promotion."
)
Name = Annotated[str, typer.Argument(help="Prompt name.")]
TenantOpt = Annotated[str, typer.Option("--tenant", help="Tenant id or name.")]
Actor = Annotated[str, typer.Option("--actor", help="Who to record in the audit log.")]
Reason = Annotated[str | None, typer.Option("--reason", help="Why (kept in the audit log).")]


def register(app: typer.Typer) -> None:
    app.add_typer(prompts_app, name="prompts")


@dataclass(slots=True)
class Registry:
    """An open registry: the service, the audit log and the tenant acted on."""

    service: PromptService
    audit: SqlAuditStore
    tenant_id: str

    def record(self, kind: str, actor: str, **data: Any) -> None:
        self.audit.append([AuditDraft(kind=kind, actor=actor, tenant=self.tenant_id, data=data)])


@contextmanager
def registry(data_dir: Path | None, tenant: str) -> Iterator[Registry]:
    db = open_db(data_dir)
    try:
        with errors_exit():
            tenant_id = SqlGovernanceStore(db).get_tenant(tenant).id
        yield Registry(PromptService(SqlPromptStore(db)), SqlAuditStore(db), tenant_id)
    finally:
        db.close()


def load_template(path: Path) -> PromptTemplate:
    """A template file, its suite paths made absolute (relative to the file's folder)."""
    template = load_yaml_model(PromptTemplate, path)
    base = path.resolve().parent

    def absolute(paths: list[str]) -> list[str]:
        out_: list[str] = []
        for p in paths:
            full = (base / Path(p).expanduser()).resolve()
            if not full.is_file():
                raise InvalidRequest(f"{path}: suite file {p!r} not found (looked at {full})")
            out_.append(str(full))
        return out_

    return template.model_copy(
        update={
            "eval_suites": absolute(template.eval_suites),
            "redteam_suites": absolute(template.redteam_suites),
        }
    )


def _print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, ensure_ascii=False))


# ---------------------------------------------------------------------- versions
@prompts_app.command("create")
def create(
    name: Name,
    file: Annotated[Path, typer.Option("--file", "-f", help="Template YAML file.")],
    tenant: TenantOpt = "default",
    actor: Actor = "cli",
    data_dir: DataDir = None,
) -> None:
    """Add a version from a YAML template (unchanged content: the latest version stands)."""
    with registry(data_dir, tenant) as reg, errors_exit():
        template = load_template(file)
        v, created = reg.service.create_version(reg.tenant_id, name, template, actor=actor)
        if created:
            reg.record(
                "prompt.create",
                actor,
                prompt=name,
                version=v.version,
                content_hash=v.content_hash,
            )
    if created:
        out.print(f"created {v.ref} (model {v.model}, hash {v.content_hash[:12]})")
    else:
        out.print(f"unchanged: {v.ref} has the same content")


@prompts_app.command("list")
def list_(tenant: TenantOpt = "default", data_dir: DataDir = None) -> None:
    """List the tenant's prompts with their labels."""
    with registry(data_dir, tenant) as reg:
        found = reg.service.list(reg.tenant_id)
    table = Table("name", "latest", "labels", "updated")
    for p in found:
        labels = ", ".join(f"{k}={v}" for k, v in sorted(p.labels.items()))
        table.add_row(p.name, str(p.latest), labels or "-", ts(p.updated_at))
    out.print(table)


@prompts_app.command("show")
def show(
    name: Name,
    version: Annotated[int | None, typer.Option("--version", "-v", help="One version.")] = None,
    ref: Annotated[str | None, typer.Option("--ref", help="A label or 'latest'.")] = None,
    tenant: TenantOpt = "default",
    data_dir: DataDir = None,
) -> None:
    """The prompt's versions and labels; with --version or --ref, that version as JSON."""
    with registry(data_dir, tenant) as reg, errors_exit():
        svc, t = reg.service, reg.tenant_id
        if version is not None or ref is not None:
            _print_json(svc.get(t, name, version if version is not None else str(ref)).to_json())
            return
        versions, labels = svc.versions(t, name), svc.labels(t, name)
    at: dict[int, list[str]] = {}
    for label, n in labels.items():
        at.setdefault(n, []).append(label)
    table = Table("version", "model", "labels", "suites", "hash", "created", "by")
    for v in versions:
        table.add_row(
            str(v.version),
            v.model,
            ", ".join(sorted(at.get(v.version, []))) or "-",
            str(len(v.eval_suites) + len(v.redteam_suites)),
            v.content_hash[:12],
            ts(v.created_at),
            v.created_by or "-",
        )
    out.print(table)


@prompts_app.command("render")
def render(
    name: Name,
    ref: Annotated[str, typer.Option("--ref", help="Version number, label or 'latest'.")] = LATEST,
    var: Annotated[
        list[str] | None, typer.Option("--var", help="A variable, NAME=VALUE (repeatable).")
    ] = None,
    vars_json: Annotated[
        str | None, typer.Option("--vars-json", help="Variables as a JSON object.")
    ] = None,
    tenant: TenantOpt = "default",
    data_dir: DataDir = None,
) -> None:
    """Print the rendered messages, model and params as JSON."""
    variables: dict[str, Any] = {}
    with errors_exit():
        if vars_json:
            try:
                loaded = json.loads(vars_json)
            except json.JSONDecodeError as exc:
                raise InvalidRequest(f"--vars-json: {exc}") from None
            if not isinstance(loaded, dict):
                raise InvalidRequest("--vars-json must be a JSON object")
            variables.update(loaded)
        for item in var or []:
            key, sep, value = item.partition("=")
            if not sep or not key:
                raise InvalidRequest(f"--var {item!r}: expected NAME=VALUE")
            variables[key] = value
    with registry(data_dir, tenant) as reg, errors_exit():
        rendered = reg.service.render(reg.tenant_id, name, ref, variables)
    _print_json(rendered.to_json())


@prompts_app.command("history")
def history(
    name: Name,
    label: Annotated[str | None, typer.Option("--label", help="Only this label.")] = None,
    tenant: TenantOpt = "default",
    data_dir: DataDir = None,
) -> None:
    """Every move of the prompt's labels, oldest first."""
    with registry(data_dir, tenant) as reg, errors_exit():
        events = reg.service.history(reg.tenant_id, name, label)
    table = Table("when", "label", "from", "to", "action", "actor", "reason")
    for e in events:
        table.add_row(
            ts(e.ts),
            e.label,
            "-" if e.from_version is None else str(e.from_version),
            str(e.to_version),
            e.action,
            e.actor or "-",
            e.reason or "",
        )
    out.print(table)


# ---------------------------------------------------------------------- labels
@prompts_app.command("label")
def label(
    name: Name,
    version: Annotated[int, typer.Argument(min=1, help="Version number.")],
    to: Annotated[str, typer.Option("--to", help="Label to point at the version.")],
    reason: Reason = None,
    tenant: TenantOpt = "default",
    actor: Actor = "cli",
    data_dir: DataDir = None,
) -> None:
    """Point a label at a version, without gates (see `promote` for the gated move)."""
    with registry(data_dir, tenant) as reg, errors_exit():
        e = reg.service.set_label(reg.tenant_id, name, to, version, actor=actor, reason=reason)
        data = {"prompt": name, "label": to, "from": e.from_version, "to": e.to_version}
        reg.record("prompt.label", actor, **data, reason=reason)
    out.print(f"{name}: {to} -> {version} (was {e.from_version or '-'})")


@prompts_app.command("rollback")
def rollback(
    name: Name,
    label_: Annotated[str, typer.Option("--label", help="The label to move back.")],
    reason: Reason = None,
    tenant: TenantOpt = "default",
    actor: Actor = "cli",
    data_dir: DataDir = None,
) -> None:
    """Move a label back to the version it pointed at before its last move."""
    with registry(data_dir, tenant) as reg, errors_exit():
        e = reg.service.rollback(reg.tenant_id, name, label_, actor=actor, reason=reason)
        data = {"prompt": name, "label": label_, "from": e.from_version, "to": e.to_version}
        reg.record("prompt.rollback", actor, **data, reason=reason)
    out.print(f"{name}: {label_} rolled back {e.from_version} -> {e.to_version}")


@prompts_app.command("promote")
def promote_cmd(
    name: Name,
    version: Annotated[int, typer.Argument(min=1, help="Version number.")],
    to: Annotated[str, typer.Option("--to", help="Label to move, e.g. production.")],
    force: Annotated[
        bool, typer.Option("--force", help="Move the label despite failed gates (admin).")
    ] = False,
    reason: Reason = None,
    url: GatewayUrl = None,
    api_key: GatewayKey = None,
    policy: PolicyFile = None,
    tenant: TenantOpt = "default",
    actor: Actor = "cli",
    data_dir: DataDir = None,
) -> None:
    """Run the version's eval and red-team suites; move the label only if all pass.

    Exit status 1 when refused (label unchanged); 2 for a usage error (--force
    without --reason, an unknown prompt or version, a bad policy or key).
    """
    if force and not (reason or "").strip():
        err.print("error: --force needs --reason (an override is audited with its reason)")
        raise typer.Exit(2)
    with registry(data_dir, tenant) as reg:
        try:
            v = reg.service.get(reg.tenant_id, name, version)
            result = asyncio.run(
                _promote(reg, v, to, force, reason, actor, url, api_key, policy, data_dir)
            )
        except BastionError as exc:
            raise usage_error(exc) from None
    _report(result)
    if result.refused:
        raise typer.Exit(1)


async def _promote(
    reg: Registry,
    v: PromptVersion,
    label: str,
    force: bool,
    reason: str | None,
    actor: str,
    url: str | None,
    api_key: str | None,
    policy: Path | None,
    data_dir: Path | None,
) -> PromotionResult:
    async def run(eval_gate: Gate | None, redteam_gate: Gate | None) -> PromotionResult:
        return await promote(
            reg.service,
            reg.audit,
            reg.tenant_id,
            v.name,
            v.version,
            label,
            gates_for(v, eval_gate, redteam_gate),
            force=force,
            reason=reason,
            actor=actor,
        )

    if not v.gated:
        return await run(None, None)
    try:
        from bastion.cli.eval_client import open_client
    except ImportError as exc:
        broken = _unavailable(f"the evaluation harness is not available: {exc}")
        return await run(broken, broken)
    async with open_client(url=url, api_key=api_key, policy=policy, data_dir=data_dir) as client:
        eval_gate: Gate | None = None
        redteam_gate: Gate | None = None
        store: Any = None
        try:
            if v.eval_suites:
                try:
                    from bastion.evals.runner import make_gate
                    from bastion.store.sqlite.evals import SqliteResultStore

                    store = SqliteResultStore(settings(data_dir).data_dir / "evals.db")
                    eval_gate = make_gate(client, store)
                except ImportError as exc:
                    eval_gate = _unavailable(f"the eval gate is not available: {exc}")
            if v.redteam_suites:
                try:
                    from bastion.evals.redteam.gate import make_redteam_gate

                    redteam_gate = make_redteam_gate(client)
                except ImportError as exc:
                    redteam_gate = _unavailable(f"the red-team gate is not available: {exc}")
            return await run(eval_gate, redteam_gate)
        finally:
            if store is not None:
                store.close()


def _unavailable(why: str) -> Gate:
    """A gate that cannot run: promotion records it as a failure (never as a pass)."""

    async def gate(suite_path: str, *, prompt: str | None = None) -> Any:
        raise BastionError(why)

    return gate


def _report(result: PromotionResult) -> None:
    for g in result.gates:
        mark = "pass" if g.passed else "FAIL"
        run = f" (run {g.run_id})" if g.run_id else ""
        out.print(f"  {mark} {g.kind} {g.suite}{run}", markup=False)
        for r in g.reasons:
            out.print(f"      {r}", markup=False)
    ref = f"{result.name}@{result.version}"
    if not result.moved:
        err.print(f"refused: {ref} was not promoted to {result.label}", markup=False)
        for f in result.failures:
            err.print(f"  - {f}", markup=False)
        return
    was = result.event.from_version if result.event else None
    if result.overridden:
        err.print(
            f"OVERRIDE: {result.label} -> {ref} despite {len(result.failures)} failure(s) "
            "(audited)",
            markup=False,
        )
    out.print(f"promoted {ref} to {result.label} (was {was or '-'})", markup=False)
