"""``bastion eval compare`` and ``bastion eval report``: read stored runs, print and write reports.

The functions are typer commands; :mod:`bastion.cli.evals` registers them on
``eval_app``. Exit statuses (the CI gate):

* ``compare``: 0 no regression beyond ``--tolerance``, 1 at least one, 2 a
  run (or the results file) is missing or ambiguous.
* ``report``: 0 written, 2 the run (or the results file) is missing.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer

from bastion.cli.common import DataDir, err, out, settings
from bastion.core.errors import BastionError
from bastion.evals.ports import ResultStore

EXIT_REGRESSION = 1
EXIT_MISSING = 2

Results = Annotated[
    Path | None,
    typer.Option(
        "--results",
        envvar="BASTION_EVAL_RESULTS",
        help="Eval results database (default: <data dir>/evals.db).",
    ),
]
RunRef = "Run id, unique id prefix, or SUITE@latest."


def results_path(results: Path | None, data_dir: Path | None) -> Path:
    """The results database: ``--results``, else ``evals.db`` in the data directory."""
    return results if results is not None else settings(data_dir).data_dir / "evals.db"


def open_results(path: Path) -> ResultStore:
    """Open the SQLite result store at ``path`` (which must exist)."""
    from bastion.store.sqlite.evals import SqliteResultStore

    return SqliteResultStore(path)


@contextmanager
def _store(results: Path | None, data_dir: Path | None) -> Iterator[ResultStore]:
    """The store, or exit 2 when there is none; a Bastion error while reading exits 2 too."""
    path = results_path(results, data_dir)
    if not path.exists():
        err.print(f"error: no eval results at {path} (run `bastion eval run` first)", markup=False)
        raise typer.Exit(EXIT_MISSING)
    store = open_results(path)
    try:
        yield store
    except BastionError as exc:  # unknown or ambiguous run ids
        err.print(f"error: {exc.message}", markup=False)
        raise typer.Exit(EXIT_MISSING) from None
    finally:
        store.close()


def compare_cmd(
    baseline: Annotated[str, typer.Argument(help="Baseline run. " + RunRef)],
    candidate: Annotated[str, typer.Argument(help="Candidate run. " + RunRef)],
    results: Results = None,
    data_dir: DataDir = None,
    tolerance: Annotated[
        float,
        typer.Option(
            "--tolerance",
            min=0.0,
            help="How much worse a scorer's mean (or pass rate) may get before it is a regression.",
        ),
    ] = 0.0,
    markdown: Annotated[
        Path | None, typer.Option("--markdown", help="Also write the comparison as Markdown.")
    ] = None,
) -> None:
    """Compare a candidate run with a baseline; exit 1 on a regression beyond tolerance."""
    with _store(results, data_dir) as store:
        from bastion.evals.compare import compare_runs, comparison_markdown, render_comparison

        cmp = compare_runs(store, baseline, candidate, tolerance=tolerance)
    render_comparison(cmp, out)
    if markdown is not None:
        markdown.parent.mkdir(parents=True, exist_ok=True)
        markdown.write_text(comparison_markdown(cmp), encoding="utf-8")
        out.print(f"markdown: {markdown}", markup=False)
    if cmp.regressions:
        raise typer.Exit(EXIT_REGRESSION)


def report_cmd(
    run: Annotated[str, typer.Argument(help=RunRef)],
    results: Results = None,
    data_dir: DataDir = None,
    md: Annotated[Path | None, typer.Option("--md", help="Write a Markdown report.")] = None,
    html: Annotated[
        Path | None, typer.Option("--html", help="Write a self-contained HTML report.")
    ] = None,
    junit: Annotated[
        Path | None, typer.Option("--junit", help="Write JUnit XML (for CI test views).")
    ] = None,
) -> None:
    """Show a stored run and (re)write its reports."""
    with _store(results, data_dir) as store:
        info = store.get_run(run)
        if info is None:
            err.print(f"error: no eval run {run!r}", markup=False)
            raise typer.Exit(EXIT_MISSING)
        from bastion.evals.report import render_terminal, write_html, write_junit, write_markdown

        render_terminal(info, out)
        for path, write in ((md, write_markdown), (html, write_html), (junit, write_junit)):
            if path is not None:
                path.parent.mkdir(parents=True, exist_ok=True)
                write(info, store.rows(info.id), path)
                out.print(f"wrote {path}", markup=False)
