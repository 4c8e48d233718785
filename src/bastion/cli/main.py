"""The ``bastion`` command line (composition root).

``bastion serve`` runs the gateway; ``bastion check`` validates policy files
(``file:line: reason``, non-zero exit on any problem, usable in CI). The
admin commands (``keys``, ``tenants``, ``teams``, ``budgets``, ``usage``) live in
:mod:`bastion.cli.admin`, the data commands (``db upgrade``, ``audit``,
``payloads purge``) in :mod:`bastion.cli.data`. They work on the database the
settings name (the SQLite file, or ``BASTION_DATABASE_URL``); a running
server picks changes up within a second.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from bastion import __version__
from bastion.cli.common import DataDir
from bastion.config.schema import Policy
from bastion.core.errors import BastionError, PolicyError
from bastion.core.settings import Settings

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,  # locals can hold secrets
    help="Bastion: a governed AI gateway.",
)
out = Console()


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


def _register() -> None:
    from bastion.cli.admin import register as register_admin
    from bastion.cli.data import register as register_data
    from bastion.cli.evals import register as register_evals
    from bastion.cli.prompts import register as register_prompts
    from bastion.cli.rag import register as register_rag
    from bastion.cli.redteam import register as register_redteam

    register_admin(app)
    register_data(app)
    register_evals(app)
    register_rag(app)
    register_prompts(app)
    register_redteam(app)


_register()


def main() -> None:
    app()
