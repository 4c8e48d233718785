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
guard_app = typer.Typer(no_args_is_help=True, help="Run Bastion's guardrails on files.")


def register(app: typer.Typer) -> None:
    app.add_typer(db_app, name="db")
    app.add_typer(audit_app, name="audit")
    app.add_typer(payloads_app, name="payloads")
    app.add_typer(guard_app, name="guard")


@db_app.command("upgrade")
def db_upgrade(data_dir: DataDir = None) -> None:
    """Apply pending schema migrations (PostgreSQL when BASTION_DATABASE_URL is set)."""
    s = settings(data_dir)
    if s.database_url:
        from bastion.store.postgres.migrations import upgrade as pg_upgrade

        before, after = pg_upgrade(s.database_url)
        out.print(f"PostgreSQL: schema {before} -> {after}")
        try:
            from bastion.store.rag.postgres import upgrade as rag_upgrade

            rag_upgrade(s.database_url)
            out.print("PostgreSQL: RAG schema (pgvector) up to date")
        except Exception as exc:  # no pgvector: everything but RAG works
            err.print(f"RAG schema skipped: {exc}", markup=False)
        return
    from bastion.store.rag.embedded import upgrade as rag_sqlite_upgrade
    from bastion.store.sqlite.db import upgrade

    before, after = upgrade(s.db_path)
    out.print(f"{s.db_path}: schema {before} -> {after}")
    rag_db = s.data_dir / "rag.db"
    before, after = rag_sqlite_upgrade(rag_db)
    out.print(f"{rag_db}: RAG schema {before} -> {after}")


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


@guard_app.command("scan")
def guard_scan(
    files: Annotated[list[Path], typer.Argument(help="Text files to scan ('-' for stdin).")],
    kind: Annotated[str, typer.Option(help="input, retrieved, tool_output or output.")] = "input",
    policy: Annotated[
        Path | None, typer.Option("--policy", "-p", help="Policy file with guardrails.")
    ] = None,
    pipeline: Annotated[str | None, typer.Option(help="Pipeline name in the policy.")] = None,
) -> None:
    """Scan files with a guardrails pipeline; print one JSON line each.

    Exit status 1 when any file is blocked. Without --policy the built-in full
    pipeline applies (injection: block; PII and secrets: redact).
    """
    import json

    from bastion.config.loader import load_policy
    from bastion.guard.base import KINDS, ScanContext
    from bastion.guard.pipeline import guard_for
    from bastion.guard.presets import full_pipeline

    if kind not in KINDS:
        err.print(f"error: --kind must be one of {', '.join(KINDS)}")
        raise typer.Exit(2)
    chosen = full_pipeline()
    if policy is not None:
        guard = guard_for(load_policy(policy))
        name = pipeline or (guard.default.name if guard.default else None)
        if name is not None:
            if name not in guard.pipelines:
                err.print(f"error: no guardrails pipeline {name!r} in {policy}")
                raise typer.Exit(2)
            chosen = guard.pipelines[name]
    blocked = False
    for f in files:
        text = sys.stdin.read() if str(f) == "-" else f.read_text(errors="replace")
        verdict = chosen.scan(text, kind, ScanContext(kind))
        blocked = blocked or verdict.action == "block"
        print(
            json.dumps(
                {
                    "file": str(f),
                    "action": verdict.action,
                    "findings": [{**x.to_dict(), "action": a} for x, a in verdict.findings],
                    "redacted_text": None if verdict.action == "block" else verdict.text,
                }
            )
        )
    if blocked:
        raise typer.Exit(1)
