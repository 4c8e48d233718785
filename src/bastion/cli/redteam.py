"""``bastion redteam run``: attack a model through the gateway, report, gate.

``bastion redteam run SUITE.yaml`` sends the suite's probes (bundled seeds x
converters) through a Bastion gateway: ``--url`` for a running server (with
``--api-key``, a platform admin key for the cross-tenant probes), else one
started in this process from ``--policy`` / ``--data-dir``. It prints the
attack success rate per category against the gate's bars and writes
``hits.jsonl``, ``summary.json`` and ``report.html`` under ``--out``.

Exit status: 0 when the gate passes, 1 when it fails (any success in a
critical category, a threshold exceeded, too many errors), 2 for a usage or
configuration error (a bad suite prints ``file:line: reason``).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from bastion.cli.common import (
    DataDir,
    GatewayKey,
    GatewayUrl,
    PolicyFile,
    out,
    progress_bar,
    usage_error,
)
from bastion.core.errors import BastionError

if TYPE_CHECKING:  # imported where used: `bastion --help` stays fast
    from bastion.evals.redteam.gate import Verdict
    from bastion.evals.redteam.runner import RedteamResult
    from bastion.evals.redteam.suite import RedteamSuite

redteam_app = typer.Typer(
    no_args_is_help=True, help="Red-team a model through the gateway (OWASP LLM Top 10 probes)."
)
EXIT_FAIL = 1


def register(app: typer.Typer) -> None:
    """Attach ``bastion redteam`` to the main app."""
    app.add_typer(redteam_app, name="redteam")


async def _run(
    suite: RedteamSuite,
    url: str | None,
    api_key: str | None,
    policy: Path | None,
    data_dir: Path | None,
    limit: int | None,
) -> RedteamResult:
    bar = progress_bar()
    task = bar.add_task("probes", total=None)

    def progress(done: int, total: int) -> None:
        bar.update(task, completed=done, total=total)

    headers = {"x-bastion-tags": f"redteam,redteam:{suite.name}"}
    from bastion.cli.eval_client import open_client
    from bastion.evals.redteam.fixtures import clients_for_key_of
    from bastion.evals.redteam.runner import run_redteam

    async with open_client(
        url=url, api_key=api_key, policy=policy, data_dir=data_dir, headers=headers
    ) as client:
        with bar:
            return await run_redteam(
                suite,
                client,
                clients_for_key=clients_for_key_of(client),
                progress=progress,
                limit=limit,
            )


def _print(result: RedteamResult, suite: RedteamSuite, verdict: Verdict) -> None:
    from bastion.evals.redteam.report import summarize, table

    summary = summarize(result.records, suite)
    out.print(table(summary, suite))
    for note in result.notes:
        out.print(f"note: {note}", markup=False, soft_wrap=True)
    if verdict.passed:
        out.print(f"[green]PASSED[/green] {suite.name} ({result.run_id})")
    else:
        out.print(f"[red]FAILED[/red] {suite.name} ({result.run_id})")
        for reason in verdict.reasons:
            out.print(f"  - {reason}", markup=False, soft_wrap=True)


@redteam_app.command("run")
def run(
    suite_file: Annotated[Path, typer.Argument(metavar="SUITE", help="The red-team suite YAML.")],
    url: GatewayUrl = None,
    api_key: GatewayKey = None,
    policy: PolicyFile = None,
    data_dir: DataDir = None,
    out_dir: Annotated[
        Path | None,
        typer.Option("--out", help="Write hits.jsonl, summary.json and report.html here."),
    ] = None,
    limit: Annotated[
        int | None, typer.Option("--limit", min=1, help="At most N probes per category.")
    ] = None,
    concurrency: Annotated[int | None, typer.Option(min=1, max=64)] = None,
) -> None:
    """Run a red-team suite; exit 0 when the gate passes, 1 when it fails, 2 on usage errors."""
    try:
        from bastion.evals.redteam.suite import load_redteam_suite

        suite = load_redteam_suite(suite_file)
        if concurrency is not None:
            suite = suite.model_copy(update={"concurrency": concurrency})
        result = asyncio.run(_run(suite, url, api_key, policy, data_dir, limit))
    except BastionError as exc:
        raise usage_error(exc) from None
    from bastion.evals.redteam.gate import evaluate
    from bastion.evals.redteam.report import summarize, write_reports

    summary = summarize(result.records, suite)
    verdict = evaluate(summary, suite)
    _print(result, suite, verdict)
    if out_dir is not None:
        paths = write_reports(out_dir, result, summary, suite, verdict.passed, verdict.reasons)
        out.print(f"report: {paths['html']}  hit log: {paths['hits']}", markup=False)
    raise typer.Exit(0 if verdict.passed else EXIT_FAIL)
