"""The ``bastion`` command line (composition root).

``bastion serve`` runs the gateway; ``bastion check`` validates policy files
(``file:line: reason``, non-zero exit on any problem, usable in CI);
``bastion keys`` manages virtual keys in the data directory's database (a
running server picks changes up within a second); ``bastion db upgrade``
applies schema migrations, an explicit step.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from bastion import __version__
from bastion.config.schema import Policy
from bastion.core.errors import BastionError, PolicyError
from bastion.core.settings import Settings
from bastion.store.sqlite.audit import SqliteAuditStore
from bastion.store.sqlite.keys import SqliteKeyStore, upgrade
from bastion.telemetry.audit import AuditDraft, export_jsonl, verify

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,  # locals can hold secrets
    help="Bastion: a governed AI gateway.",
)
keys_app = typer.Typer(no_args_is_help=True, help="Manage virtual keys.")
db_app = typer.Typer(no_args_is_help=True, help="Database schema.")
app.add_typer(keys_app, name="keys")
app.add_typer(db_app, name="db")
audit_app = typer.Typer(no_args_is_help=True, help="The tamper-evident audit log.")
app.add_typer(audit_app, name="audit")
out = Console()
err = Console(stderr=True)

DataDir = Annotated[
    Path | None,
    typer.Option("--data-dir", envvar="BASTION_DATA_DIR", help="Embedded-mode data directory."),
]


@app.command()
def version() -> None:
    """Print Bastion's version."""
    out.print(__version__)


@app.command()
def check(files: Annotated[list[Path], typer.Argument(help="Policy files to validate.")]) -> None:
    """Validate policy files; print file:line: reason for every problem."""
    from bastion.config.loader import load_policy
    from bastion.providers.registry import factories

    known = factories()
    bad = 0
    for f in files:
        try:
            policy = load_policy(f)
        except PolicyError as exc:
            for name, line, reason in exc.problems:
                print(f"{name}:{line}: {reason}")
            bad += len(exc.problems)
            continue
        unknown = {n: p.type for n, p in policy.providers.items() if p.type not in known}
        for n, t in unknown.items():
            print(
                f"{f}: providers.{n}.type: unknown provider type {t!r} "
                f"(installed: {', '.join(sorted(known))})"
            )
        bad += len(unknown)
        for ref in _secret_refs(policy):
            if ref.startswith("env:") and ref[4:] not in os.environ:
                print(f"{f}: warning: {ref} is not set in this environment", file=sys.stderr)
        if not unknown:
            print(f"{f}: ok ({len(policy.providers)} providers, {len(policy.models)} models)")
    if bad:
        raise typer.Exit(1)


def _secret_refs(policy: Policy) -> list[str]:
    refs = [p.api_key for p in policy.providers.values() if p.api_key]
    return refs + [k.secret for k in policy.keys.values() if k.secret]


@app.command()
def serve(
    policy: Annotated[
        Path | None, typer.Option("--policy", "-p", envvar="BASTION_POLICY", help="Policy file.")
    ] = None,
    host: Annotated[str, typer.Option(help="Address to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to bind.")] = 8080,
    data_dir: DataDir = None,
) -> None:
    """Run the gateway (embedded defaults when no policy is given)."""
    import uvicorn

    from bastion.api.server import build_app
    from bastion.telemetry.logging import configure, event

    settings = Settings.from_env(policy, data_dir)

    def announce(secret: str) -> None:
        out.print(
            f"[bold]Generated an admin key (shown once; store it):[/bold]\n{secret}\n"
            "Set BASTION_ADMIN_KEY to use your own instead."
        )

    try:
        built = build_app(settings, announce=announce)
    except PolicyError as exc:
        for name, line, reason in exc.problems:
            print(f"{name}:{line}: {reason}", file=sys.stderr)
        raise typer.Exit(2) from None
    except BastionError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        raise typer.Exit(2) from None
    configure(built.app.gateway.rt.policy.telemetry.log_level)
    event(
        logging.getLogger("bastion"),
        "starting",
        version=__version__,
        url=f"http://{host}:{port}",
        policy=str(settings.policy_path) if settings.policy_path else "embedded defaults",
        data_dir=str(settings.data_dir),
    )
    uvicorn.run(
        built.app,
        host=host,
        port=port,
        loop="uvloop" if sys.platform != "win32" else "asyncio",
        http="httptools",
        lifespan="on",
        access_log=False,
        log_config=None,
        server_header=False,
        date_header=False,
    )


def _audit_cli(data_dir: Path | None, kind: str, **data: object) -> None:
    settings = Settings.from_env(None, data_dir)
    store = SqliteAuditStore(settings.db_path)
    try:
        store.append([AuditDraft(kind=kind, actor="cli", data=data)])
    finally:
        store.close()


def _store(data_dir: Path | None) -> SqliteKeyStore:

    settings = Settings.from_env(None, data_dir)
    if not settings.db_path.exists():
        upgrade(settings.db_path)
    return SqliteKeyStore(settings.db_path)


@keys_app.command("create")
def keys_create(
    name: Annotated[str, typer.Option(help="A name for the key.")],
    models: Annotated[str, typer.Option(help="Comma-separated model aliases (globs ok).")] = "*",
    admin: Annotated[bool, typer.Option(help="May use the admin API.")] = False,
    ttl_days: Annotated[float | None, typer.Option(help="Expire after N days.")] = None,
    data_dir: DataDir = None,
) -> None:
    """Create a key; its secret is printed once and only its hash is stored."""
    allowed = [m.strip() for m in models.split(",") if m.strip()] or ["*"]
    expires = time.time() + ttl_days * 86400 if ttl_days else None
    try:
        rec, secret = _store(data_dir).create(name, allowed, admin=admin, expires_at=expires)
    except BastionError as exc:
        err.print(f"error: {exc.message}", markup=False)
        raise typer.Exit(1) from None
    _audit_cli(
        data_dir,
        "admin.key.create",
        key_id=rec.id,
        name=rec.name,
        models=list(rec.models),
        admin=rec.admin,
    )
    err.print(f"created key {rec.id} ({rec.name}) for models {','.join(rec.models)}")
    err.print("the secret below is shown once; store it now:")
    print(secret)


@keys_app.command("list")
def keys_list(
    all_: Annotated[bool, typer.Option("--all", help="Include revoked keys.")] = False,
    data_dir: DataDir = None,
) -> None:
    """List keys (never their secrets)."""
    table = Table("id", "name", "prefix", "models", "admin", "created", "expires", "revoked")

    def ts(v: float | None) -> str:
        return time.strftime("%Y-%m-%d %H:%M", time.gmtime(v)) if v else "-"

    for r in _store(data_dir).list(include_revoked=all_):
        table.add_row(
            r.id,
            r.name,
            r.prefix + "…",
            ",".join(r.models),
            "yes" if r.admin else "",
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
    try:
        rec = _store(data_dir).revoke(key)
    except BastionError as exc:
        err.print(f"error: {exc.message}", markup=False)
        raise typer.Exit(1) from None
    _audit_cli(data_dir, "admin.key.revoke", key_id=rec.id, name=rec.name)
    out.print(f"revoked {rec.id} ({rec.name})")


@db_app.command("upgrade")
def db_upgrade(data_dir: DataDir = None) -> None:
    """Apply pending schema migrations to the embedded database."""
    settings = Settings.from_env(None, data_dir)
    before, after = upgrade(settings.db_path)
    out.print(f"{settings.db_path}: schema {before} -> {after}")


@audit_app.command("verify")
def audit_verify(data_dir: DataDir = None) -> None:
    """Check the hash chain; name the first modified, missing or reordered event."""
    settings = Settings.from_env(None, data_dir)
    store = SqliteAuditStore(settings.db_path)
    try:
        result = verify(store.events())
    finally:
        store.close()
    if result.ok:
        print(f"ok: {result.checked} events, head {result.head_hash}")
        return
    print(f"TAMPERED: {result.reason} (first bad event: {result.first_bad_seq})")
    raise typer.Exit(1)


@audit_app.command("export")
def audit_export(
    out_file: Annotated[
        Path | None, typer.Option("--out", "-o", help="File to write (default: stdout).")
    ] = None,
    since: Annotated[int, typer.Option(help="Only events after this sequence number.")] = 0,
    data_dir: DataDir = None,
) -> None:
    """Write audit events as JSON lines."""
    settings = Settings.from_env(None, data_dir)
    store = SqliteAuditStore(settings.db_path)
    try:
        if out_file is None:
            n = export_jsonl(store.events(since), sys.stdout)
        else:
            with out_file.open("w") as f:
                n = export_jsonl(store.events(since), f)
    finally:
        store.close()
    err.print(f"exported {n} events")


def main() -> None:
    app()
