"""Shared CLI plumbing: options, consoles, and opening the configured database."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TextColumn,
    TimeElapsedColumn,
)

from bastion.core.errors import BastionError, PolicyError
from bastion.core.settings import Settings
from bastion.store.sql.database import Database, open_database
from bastion.store.sqlite import db as sqlite_db

# piped output (scripts, CI logs) gets full-width tables instead of 80 columns
out = Console(width=None if sys.stdout.isatty() else 200)
err = Console(stderr=True)

PolicyFile = Annotated[
    Path | None,
    typer.Option("--policy", "-p", envvar="BASTION_POLICY", help="Policy file."),
]
GatewayUrl = Annotated[
    str | None, typer.Option("--url", help="A running gateway (default: in process).")
]
GatewayKey = Annotated[
    str | None, typer.Option("--api-key", help="Key for --url (or BASTION_API_KEY).")
]
DataDir = Annotated[
    Path | None,
    typer.Option("--data-dir", envvar="BASTION_DATA_DIR", help="Embedded-mode data directory."),
]


def settings(data_dir: Path | None) -> Settings:
    return Settings.from_env(None, data_dir)


def open_db(data_dir: Path | None) -> Database:
    """The configured database (PostgreSQL when BASTION_DATABASE_URL is set)."""
    s = settings(data_dir)
    if s.database_url:
        return open_database(s.database_url)
    if not s.db_path.exists():
        sqlite_db.upgrade(s.db_path)
    return open_database(s.db_path)


@contextmanager
def errors_exit() -> Iterator[None]:
    """Turn a Bastion error into a one-line message and exit status 1."""
    try:
        yield
    except BastionError as exc:
        err.print(f"error: {exc.message}", markup=False)
        raise typer.Exit(1) from None


EXIT_USAGE = 2
"""Exit status of a command given a bad file, option or reference."""


def usage_error(exc: BastionError) -> typer.Exit:
    """Print a usage error (``file:line: reason`` lines for a bad YAML file); exit 2."""
    if isinstance(exc, PolicyError):
        for name, line, reason in exc.problems:
            err.print(f"{name}:{line}: {reason}", markup=False, soft_wrap=True)
    else:
        err.print(f"error: {exc.message}", markup=False, soft_wrap=True)
    return typer.Exit(EXIT_USAGE)


def progress_bar(*extra: ProgressColumn, terminal_only: bool = True) -> Progress:
    """The commands' progress bar on stderr: label, bar, done/total, elapsed, ``extra``.

    ``terminal_only`` hides it when stderr is not a terminal (CI logs get the result only).
    """
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        *extra,
        console=err,
        transient=True,
        disable=terminal_only and not err.is_terminal,
    )


def ts(v: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.gmtime(v)) if v else "-"
