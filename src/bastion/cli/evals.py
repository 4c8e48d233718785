"""``bastion eval``: run eval suites through the gateway and list their runs.

``bastion eval run SUITE`` loads the suite file, streams its cases through
the target (every call through a Bastion gateway: ``--url`` for a running
server, else one started in this process from ``--policy`` / ``--data-dir``),
stores every row in the results file (``DATA_DIR/evals.db`` unless
``--results``), prints the per-scorer table and writes the reports asked
for. Exit status: 0 when every threshold holds (and nothing regressed
against ``--baseline``), 1 otherwise, 2 for a usage or configuration error
(a bad suite file prints ``file:line: reason``), 130 when interrupted (the
run is kept; ``--resume RUN_ID`` continues it).

``bastion eval runs`` lists the stored runs. ``compare`` and ``report`` come
from :mod:`bastion.cli.eval_reports`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.progress import (
    Progress,
    TextColumn,
)
from rich.table import Table

from bastion.cli.common import (
    DataDir,
    GatewayKey,
    GatewayUrl,
    PolicyFile,
    err,
    out,
    progress_bar,
    ts,
    usage_error,
)
from bastion.cli.eval_reports import compare_cmd, report_cmd, results_path
from bastion.core.errors import BastionError, PolicyError
from bastion.core.settings import Settings
from bastion.evals.ports import CaseRow, RunInfo
from bastion.evals.suite import Suite, load_suite

if TYPE_CHECKING:
    from bastion.store.sqlite.evals import SqliteResultStore

eval_app = typer.Typer(
    no_args_is_help=True, help="Run eval suites through the gateway; list, compare, report runs."
)
EXIT_FAIL, EXIT_USAGE, EXIT_INTERRUPTED = 1, 2, 130

Results = Annotated[
    Path | None,
    typer.Option(
        "--results",
        envvar="BASTION_EVAL_RESULTS",
        help="Results file (default: DATA_DIR/evals.db).",
    ),
]


def register(app: typer.Typer) -> None:
    """Attach ``bastion eval`` (run, runs, compare, report) to the main app."""
    eval_app.command("compare")(compare_cmd)
    eval_app.command("report")(report_cmd)
    app.add_typer(eval_app, name="eval")


def _prepare(
    path: Path, repetitions: int | None, concurrency: int | None, limit: int | None
) -> tuple[Suite, int]:
    """The suite with the command-line overrides, and its case count (every row validated)."""
    from bastion.evals.datasets import iter_cases

    suite = load_suite(path)
    update: dict[str, Any] = {}
    if repetitions is not None:
        update["repetitions"] = repetitions
    if concurrency is not None:
        update["concurrency"] = concurrency
    if limit is not None:
        update["dataset"] = suite.dataset.model_copy(update={"limit": limit})
    if update:  # the options' bounds match the schema's
        suite = suite.model_copy(update=update)
    n = sum(1 for _ in iter_cases(suite))  # a malformed row fails here, before any call
    return suite, n


def _dry_run(suite: Suite, url: str | None, policy: Path | None) -> None:
    from bastion.config.defaults import embedded_policy
    from bastion.config.loader import load_policy
    from bastion.evals.datasets import iter_cases
    from bastion.evals.estimate import estimate_cost, policy_prices

    prices = None
    if policy is not None or not url:
        pol = Settings.from_env(policy, None).policy_path
        prices = policy_prices(load_policy(pol) if pol else embedded_policy())
    est = estimate_cost(suite, iter_cases(suite), prices)
    out.print(f"suite {suite.name}: dry run, no model call made")
    out.print(f"  cases           {est.cases} x {est.repetitions} repetition(s)")
    out.print(f"  target calls    {est.target_calls}")
    out.print(f"  judge calls     {est.judge_calls}")
    out.print(f"  prompt tokens   ~{est.prompt_tokens:,} (4 characters a token)")
    out.print(f"  output tokens   <= {est.completion_tokens:,} (max_tokens per answer)")
    if est.cost_usd is None:
        out.print("  cost            unknown (remote gateway)")
    else:
        line = f"  cost            <= ${est.cost_usd:.4f}"
        if est.unpriced:
            line += f" (without {', '.join(est.unpriced)}: no price known)"
        out.print(line, markup=False)


def _progress_bar(
    total: int,
) -> tuple[Progress, Callable[[int, int], None], Callable[[CaseRow], None]]:
    bar = progress_bar(TextColumn("[red]{task.fields[errors]} errors"))
    task = bar.add_task("cases", total=total, errors=0)
    errors = 0

    def on_row(row: CaseRow) -> None:
        nonlocal errors
        if row.error or any(s.error for s in row.scores):
            errors += 1
            bar.update(task, errors=errors)

    def progress(done: int, total: int) -> None:
        bar.update(task, completed=done, total=total)

    return bar, progress, on_row


@eval_app.command("run")
def run(
    suite_file: Annotated[Path, typer.Argument(metavar="SUITE", help="The suite YAML file.")],
    url: GatewayUrl = None,
    api_key: GatewayKey = None,
    policy: PolicyFile = None,
    data_dir: DataDir = None,
    results: Results = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Count cases, tokens and cost; call nothing.")
    ] = False,
    resume: Annotated[
        str | None, typer.Option("--resume", help="Continue an interrupted run (id or prefix).")
    ] = None,
    baseline: Annotated[
        str | None,
        typer.Option("--baseline", help="Fail on a regression against this run (SUITE@latest ok)."),
    ] = None,
    tolerance: Annotated[
        float, typer.Option("--tolerance", min=0, help="Drop allowed against --baseline.")
    ] = 0.02,
    report_md: Annotated[Path | None, typer.Option("--report-md", help="Write Markdown.")] = None,
    report_html: Annotated[Path | None, typer.Option("--report-html", help="Write HTML.")] = None,
    junit: Annotated[Path | None, typer.Option("--junit", help="Write JUnit XML.")] = None,
    repetitions: Annotated[int | None, typer.Option(min=1, max=100)] = None,
    concurrency: Annotated[int | None, typer.Option(min=1, max=256)] = None,
    limit: Annotated[int | None, typer.Option(min=1, help="Only the first N cases.")] = None,
) -> None:
    """Run an eval suite; exit 0 when it passes, 1 when it does not, 2 on a usage error."""
    try:
        suite, n = _prepare(suite_file, repetitions, concurrency, limit)
        if dry_run:
            _dry_run(suite, url, policy)
            return
        from bastion.store.sqlite.evals import SqliteResultStore

        store = SqliteResultStore(results_path(results, data_dir))
    except BastionError as exc:
        raise usage_error(exc) from None
    try:
        baseline = _resolve(store, baseline, "compare with")
        resume = _resolve(store, resume, "resume")
        info = _run(suite, n, store, url, api_key, policy, data_dir, resume)
        _reports(store, info, report_md, report_html, junit)
        code = 0 if info.status == "passed" else EXIT_FAIL
        if baseline is not None and _regressed(store, baseline, info, tolerance):
            code = EXIT_FAIL
    finally:
        store.close()
    raise typer.Exit(code)


def _resolve(store: SqliteResultStore, ref: str | None, what: str) -> str | None:
    """The id of the run ``ref`` names, now (``SUITE@latest`` before this run adds one);
    exit 2 when there is none."""
    if ref is None:
        return None
    try:
        found = store.get_run(ref)
        if found is None:
            raise BastionError(f"no run {ref!r} to {what} in {store.path}")
    except BastionError as exc:
        raise usage_error(exc) from None
    return found.id


def _run(
    suite: Suite,
    n: int,
    store: SqliteResultStore,
    url: str | None,
    api_key: str | None,
    policy: Path | None,
    data_dir: Path | None,
    resume: str | None,
) -> RunInfo:
    """Run the suite (a fresh run, or the rest of ``resume``) and print its table."""
    from bastion.cli.eval_client import open_client
    from bastion.evals.report import render_terminal
    from bastion.evals.runner import new_run_id, run_suite

    run_id = resume or new_run_id()
    tags = {"x-bastion-tags": f"eval,eval:{suite.name},eval-run:{run_id}"}
    bar, progress, on_row = _progress_bar(n * suite.repetitions)

    async def go() -> RunInfo:
        async with open_client(
            url=url,
            api_key=api_key,
            policy=policy,
            data_dir=data_dir,
            headers=tags,
            max_connections=max(suite.concurrency, 8),
            announce=lambda k: err.print(f"generated an admin key (shown once): {k}"),
        ) as client:
            with bar:
                return await run_suite(
                    suite,
                    client=client,
                    store=store,
                    run_id=run_id,
                    resume=resume,
                    progress=progress,
                    judge_cache=store,
                    on_row=on_row,
                    cases=n,
                )

    try:
        info = asyncio.run(go())
    except KeyboardInterrupt:
        err.print("interrupted")
        _resume_hint(store, run_id)
        raise typer.Exit(EXIT_INTERRUPTED) from None
    except BastionError as exc:
        if isinstance(exc, PolicyError):  # the in-process gateway's policy file
            raise usage_error(exc) from None
        err.print(f"error: {exc.code}: {exc.message}", markup=False, soft_wrap=True)
        _resume_hint(store, run_id)
        raise typer.Exit(EXIT_USAGE) from None
    render_terminal(info, out)
    return info


def _resume_hint(store: SqliteResultStore, run_id: str) -> None:
    if store.get_run(run_id) is not None:  # it had started: its rows are kept
        err.print(f"run {run_id} kept; continue it with --resume {run_id}")


def _reports(
    store: SqliteResultStore,
    info: RunInfo,
    md: Path | None,
    html: Path | None,
    junit: Path | None,
) -> None:
    from bastion.evals.report import write_html, write_junit, write_markdown

    for path, write in ((md, write_markdown), (html, write_html), (junit, write_junit)):
        if path is not None:
            written = write(info, store.rows(info.id), path)
            err.print(f"wrote {written}")


def _regressed(store: SqliteResultStore, baseline: str, run: RunInfo, tol: float) -> bool:
    """Compare ``run`` with ``baseline``, print it; whether any scorer regressed."""
    from bastion.evals.compare import compare_runs, render_comparison

    try:
        cmp = compare_runs(store, baseline, run.id, tolerance=tol)
    except BastionError as exc:
        raise usage_error(exc) from None
    render_comparison(cmp, out)
    if cmp.regressions:
        names = ", ".join(d.scorer for d in cmp.regressions)
        err.print(f"regression against {cmp.baseline.id}: {names}")
        return True
    return False


@eval_app.command("runs")
def runs(
    suite: Annotated[str | None, typer.Option("--suite", help="Only this suite's runs.")] = None,
    limit: Annotated[int, typer.Option(min=1, help="How many (newest first).")] = 50,
    results: Results = None,
    data_dir: DataDir = None,
) -> None:
    """List stored runs, newest first."""
    path = results_path(results, data_dir)
    if not path.exists():
        err.print(f"no results file at {path}")
        return
    from bastion.store.sqlite.evals import SqliteResultStore

    store = SqliteResultStore(path)
    try:
        found = store.list_runs(suite, limit)
    finally:
        store.close()
    table = Table("id", "suite", "target", "status", "started", "seconds", "cases", "cost")
    table.add_column("failures")
    for r in found:
        s = r.summary
        dur = f"{r.finished_at - r.started_at:.1f}" if r.finished_at else "-"
        cost = s.get("cost_usd")
        table.add_row(
            r.id,
            r.suite,
            r.target,
            r.status,
            ts(r.started_at),
            dur,
            str(s.get("cases", "-")),
            "-" if cost is None else f"${cost:.4f}",
            "; ".join(s.get("failures") or [])[:120],
        )
    out.print(table)
