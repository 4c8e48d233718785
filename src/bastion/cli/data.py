"""Data commands: schema migrations, the audit log, and the content purge."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Annotated

import typer

from bastion.cli.common import DataDir, err, open_db, out, settings
from bastion.store.sql.audit import SqlAuditStore
from bastion.store.sql.usage import SqlPayloadStore
from bastion.telemetry.audit import export_jsonl, verify

db_app = typer.Typer(no_args_is_help=True, help="Database schema.")
audit_app = typer.Typer(no_args_is_help=True, help="The tamper-evident audit log.")
payloads_app = typer.Typer(no_args_is_help=True, help="Stored request content.")


def register(app: typer.Typer) -> None:
    app.add_typer(db_app, name="db")
    app.add_typer(audit_app, name="audit")
    app.add_typer(payloads_app, name="payloads")


@db_app.command("upgrade")
def db_upgrade(data_dir: DataDir = None) -> None:
    """Apply pending schema migrations (PostgreSQL when BASTION_DATABASE_URL is set)."""
    s = settings(data_dir)
    if s.database_url:
        from bastion.store.postgres.migrations import upgrade as pg_upgrade

        before, after = pg_upgrade(s.database_url)
        out.print(f"PostgreSQL: schema {before} -> {after}")
        return
    from bastion.store.sqlite.db import upgrade

    before, after = upgrade(s.db_path)
    out.print(f"{s.db_path}: schema {before} -> {after}")


@audit_app.command("verify")
def audit_verify(data_dir: DataDir = None) -> None:
    """Check the hash chain; name the first modified, missing or reordered event."""
    store = SqlAuditStore(open_db(data_dir))
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
    store = SqlAuditStore(open_db(data_dir))
    try:
        if out_file is None:
            n = export_jsonl(store.events(since), sys.stdout)
        else:
            with out_file.open("w") as f:
                n = export_jsonl(store.events(since), f)
    finally:
        store.close()
    err.print(f"exported {n} events")


@payloads_app.command("purge")
def payloads_purge(
    days: Annotated[float, typer.Option(min=0, help="Delete content older than N days.")],
    data_dir: DataDir = None,
) -> None:
    """Delete stored prompts and completions older than N days (the server does it hourly)."""
    store = SqlPayloadStore(open_db(data_dir))
    try:
        n = store.purge(time.time() - days * 86400)
    finally:
        store.close()
    out.print(f"purged {n} payloads older than {days:g} days")
