"""Comparing two runs: deltas, tolerance, paired tests, per-case changes, the compare command."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import typer
from rich.console import Console
from typer.testing import CliRunner

from bastion.cli.eval_reports import compare_cmd
from bastion.core.errors import NotFound
from bastion.evals.aggregate import sign_test, summarize, wilcoxon
from bastion.evals.compare import compare_runs, comparison_markdown, render_comparison
from bastion.evals.ports import CaseRow, RunInfo
from bastion.evals.suite import Suite
from bastion.evals.types import Score
from bastion.store.sqlite.evals import SqliteResultStore
from tests.unit.eval_helpers import make_suite


class MemoryStore:
    """An in-memory ResultStore (get_run resolves ids, unique prefixes and SUITE@latest)."""

    def __init__(self) -> None:
        self.runs: dict[str, RunInfo] = {}
        self._rows: dict[str, list[CaseRow]] = {}

    def create_run(self, info: RunInfo) -> None:
        self.runs[info.id] = info
        self._rows.setdefault(info.id, [])

    def add_rows(self, rows: Sequence[CaseRow]) -> None:
        for r in rows:
            self._rows[r.run_id].append(r)

    def done_keys(self, run_id: str) -> set[tuple[str, int]]:
        return {r.key for r in self._rows.get(run_id, [])}

    def finish_run(
        self, run_id: str, status: str, summary: dict[str, Any], finished_at: float
    ) -> None:
        self.runs[run_id] = replace(
            self.runs[run_id], status=status, summary=summary, finished_at=finished_at
        )

    def get_run(self, run_id: str) -> RunInfo | None:
        if run_id.endswith("@latest"):
            runs = [r for r in self.runs.values() if r.suite == run_id[: -len("@latest")]]
            return max(runs, key=lambda r: r.started_at) if runs else None
        if run_id in self.runs:
            return self.runs[run_id]
        found = [r for k, r in self.runs.items() if k.startswith(run_id)]
        return found[0] if len(found) == 1 else None

    def list_runs(self, suite: str | None = None, limit: int = 50) -> list[RunInfo]:
        runs = [r for r in self.runs.values() if suite is None or r.suite == suite]
        return sorted(runs, key=lambda r: -r.started_at)[:limit]

    def rows(self, run_id: str) -> Iterator[CaseRow]:
        yield from sorted(self._rows.get(run_id, []), key=lambda r: r.key)

    def close(self) -> None:
        pass


EXACT = make_suite({"type": "exact", "threshold": 0.8})


def put_run(
    store: MemoryStore | SqliteResultStore,
    run_id: str,
    suite: Suite,
    scores: dict[tuple[str, int], list[Score]],
    *,
    started: float = 1_700_000_000.0,
) -> RunInfo:
    rows = [
        CaseRow(run_id, case, rep, f"q {case}", "a", "out", tuple(sc), 0.2, 0.001)
        for (case, rep), sc in scores.items()
    ]
    info = RunInfo(run_id, suite.name, "model:chat", started,
                   config=suite.model_dump(mode="json", by_alias=True))  # fmt: skip
    store.create_run(info)
    store.add_rows(rows)
    summary = summarize(suite, rows)
    store.finish_run(run_id, "passed" if summary["passed"] else "failed", summary, started + 5)
    return info


def exact(passed: bool) -> Score:
    return Score("exact", 1.0 if passed else 0.0, passed=passed)


def pass_fail(n: int, failing: set[int]) -> dict[tuple[str, int], list[Score]]:
    return {(f"c{i:03d}", 0): [exact(i not in failing)] for i in range(n)}


def pair(base: dict[tuple[str, int], list[Score]], cand: dict[tuple[str, int], list[Score]],
         suite: Suite = EXACT) -> MemoryStore:  # fmt: skip
    store = MemoryStore()
    put_run(store, "base-001", suite, base)
    put_run(store, "cand-002", suite, cand, started=1_700_000_100.0)
    return store


# ---------------------------------------------------------------- statistics


def test_sign_test_matches_hand_computed_binomials() -> None:
    assert sign_test(1, 9) == pytest.approx(2 * (1 + 10) / 2**10)  # 0.021484375
    assert sign_test(9, 1) == sign_test(1, 9)
    assert sign_test(0, 5) == pytest.approx(2 / 32)
    assert sign_test(2, 10) == pytest.approx(2 * (1 + 12 + 66) / 2**12)
    assert sign_test(0, 4) == pytest.approx(0.125)
    assert sign_test(3, 3) == 1.0 and sign_test(0, 0) == 1.0


def test_wilcoxon_exact_and_normal() -> None:
    # all five differences positive: W+ = 15 is the most extreme of 2^5 sign patterns
    assert wilcoxon([1, 2, 3, 4, 5]) == pytest.approx(2 / 32)
    # W+ = 14: subsets of {1..5} summing to >= 14 are {1..5} and {2..5}
    assert wilcoxon([-1, 2, 3, 4, 5]) == pytest.approx(2 * 2 / 32)
    assert wilcoxon([0.0, 0.0, 0.5, 0.25]) == pytest.approx(2 / 4)  # zeros dropped, n = 2
    assert wilcoxon([]) == 1.0 and wilcoxon([0.0, 0.0]) == 1.0
    assert wilcoxon([0.1 * (i + 1) for i in range(60)]) < 1e-9  # normal approximation
    assert wilcoxon([1.0] * 30 + [-1.0] * 30) == pytest.approx(1.0)


# ---------------------------------------------------------------- compare_runs


def test_regression_beyond_tolerance_only() -> None:
    store = pair(pass_fail(40, set()), pass_fail(40, {1, 2, 3, 4}))
    cmp = compare_runs(store, "base-001", "cand-002", tolerance=0.05)
    (d,) = cmp.scorers
    assert d.baseline == 1.0 and d.candidate == pytest.approx(0.9)
    assert d.delta == pytest.approx(-0.1) and d.paired_n == 40 and d.worse == 4
    assert d.test == "sign" and d.p_value == pytest.approx(2 / 16)
    assert cmp.regressions == [d]
    assert d.note == "too few cases to call a difference (n=40, p=0.125)"
    within = compare_runs(store, "base-001", "cand-002", tolerance=0.1)
    assert within.regressions == [] and within.scorers[0].note is None
    json.dumps(cmp.to_dict(), allow_nan=False)


def test_clear_regression_has_no_note_and_small_samples_do() -> None:
    store = pair(pass_fail(40, set()), pass_fail(40, set(range(12))))
    (d,) = compare_runs(store, "base", "cand").regressions  # unique prefixes
    assert d.p_value == pytest.approx(2 / 2**12) and d.note is None
    tiny = pair(pass_fail(10, set()), pass_fail(10, set(range(10))))
    (t,) = compare_runs(tiny, "base-001", "cand-002").regressions
    assert t.p_value == pytest.approx(2 / 1024)  # significant, but only 10 cases
    assert t.note == "too few cases to call a difference (n=10, p=0.00195)"


def test_improvement_is_not_a_regression() -> None:
    store = pair(pass_fail(30, {1, 2, 3}), pass_fail(30, set()))
    cmp = compare_runs(store, "demo@latest", "cand-002")  # @latest is the candidate itself
    assert cmp.baseline.id == "cand-002" and cmp.regressions == []
    cmp = compare_runs(store, "base-001", "demo@latest")
    (d,) = cmp.scorers
    assert d.delta == pytest.approx(0.1) and d.better == 3 and not d.regression
    assert [c.kind for c in cmp.changes] == ["fix"] * 3


def test_lower_is_better_and_pass_rate_metrics() -> None:
    lat = make_suite({"type": "latency"})
    store = MemoryStore()
    put_run(store, "b", lat, {(f"c{i}", 0): [Score("latency", 1.0)] for i in range(5)})
    put_run(store, "c", lat, {(f"c{i}", 0): [Score("latency", 2.0)] for i in range(5)})
    (d,) = compare_runs(store, "b", "c").regressions  # slower is worse
    assert d.metric == "mean" and not d.higher_is_better and d.delta == pytest.approx(1.0)
    assert d.test == "wilcoxon" and d.p_value == pytest.approx(2 / 32)
    assert compare_runs(store, "c", "b").regressions == []  # faster is not
    barred = make_suite({"type": "latency", "max_s": 1.5, "threshold": 0.5})
    store = MemoryStore()
    put_run(store, "b", barred, {("a", 0): [Score("latency", 1.0, passed=True)]})
    put_run(store, "c", barred, {("a", 0): [Score("latency", 1.2, passed=True)]})
    cmp = compare_runs(store, "b", "c")  # slower, but still under the per-case bar
    assert cmp.scorers[0].metric == "pass_rate" and cmp.regressions == []
    assert [c.kind for c in cmp.changes] == ["changed"]


def test_continuous_scores_use_wilcoxon() -> None:
    judge = make_suite({"type": "judge", "model": "j", "rubric": "r"})
    base = {(f"c{i:02d}", 0): [Score("judge", 0.5 + 0.01 * i)] for i in range(40)}
    cand = {(f"c{i:02d}", 0): [Score("judge", 0.3 + 0.01 * i)] for i in range(40)}
    (d,) = compare_runs(pair(base, cand, judge), "base-001", "cand-002").regressions
    assert d.test == "wilcoxon" and d.p_value is not None and d.p_value < 1e-6
    assert d.note is None and d.delta == pytest.approx(-0.2)
    assert d.baseline_ci is not None and d.baseline_ci[0] < 0.695 < d.baseline_ci[1]


def test_case_changes_regressions_first_and_one_sided_cases() -> None:
    two = make_suite({"type": "exact"}, {"type": "judge", "model": "j", "rubric": "r"})
    base = {
        ("a", 0): [exact(True), Score("judge", 0.9)],
        ("b", 0): [exact(False), Score("judge", 0.9)],
        ("c", 0): [exact(True), Score("judge", 0.9)],
        ("d", 0): [exact(True), Score("judge", 0.9)],
        ("x", 0): [exact(True), Score("judge", 0.9)],
    }
    cand = {
        ("a", 0): [exact(False), Score("judge", 0.9)],
        ("b", 0): [exact(True), Score("judge", 0.9)],
        ("c", 0): [exact(True), Score("judge", 0.4)],
        ("d", 0): [Score.failed("exact", "boom"), Score("judge", 0.9)],
        ("y", 0): [exact(True), Score("judge", 0.9)],
    }
    cmp = compare_runs(pair(base, cand, two), "base-001", "cand-002")
    got = [(c.kind, c.case_id, c.scorer, c.before, c.after) for c in cmp.changes]
    assert got == [
        ("regression", "a", "exact", "passed", "failed"),
        ("regression", "d", "exact", "passed", "error"),
        ("fix", "b", "exact", "failed", "passed"),
        ("changed", "c", "judge", "0.9", "0.4"),
    ]
    assert cmp.only_baseline == ["x"] and cmp.only_candidate == ["y"]


def test_repetitions_and_nothing_scored() -> None:
    reps = make_suite({"type": "exact"}, repetitions=3)
    base = {("a", r): [exact(True)] for r in range(3)}
    cand = {("a", r): [exact(r == 0)] for r in range(3)}
    cmp = compare_runs(pair(base, cand, reps), "base-001", "cand-002")
    (ch,) = cmp.changes
    assert (ch.before, ch.after) == ("3/3 passed", "1/3 passed")
    assert cmp.scorers[0].candidate == pytest.approx(1 / 3)
    dead = {("c000", 0): [Score.failed("exact", "no output")]}
    (d,) = compare_runs(pair(pass_fail(1, set()), dead), "base-001", "cand-002").scorers
    assert d.regression and d.candidate is None
    assert d.note == "the candidate could not score any case"


def test_missing_run_and_bad_tolerance() -> None:
    store = pair(pass_fail(3, set()), pass_fail(3, set()))
    with pytest.raises(NotFound):
        compare_runs(store, "base-001", "nope")
    with pytest.raises(ValueError):
        compare_runs(store, "base-001", "cand-002", tolerance=-1)


def test_renderings_escape_and_show_verdicts() -> None:
    base = {("pipe|case", 0): [exact(True)], ("ok", 0): [exact(True)]}
    cand = {("pipe|case", 0): [exact(False)], ("ok", 0): [exact(True)]}
    cmp = compare_runs(pair(base, cand), "base-001", "cand-002")
    md = comparison_markdown(cmp)
    assert "| pipe\\|case | exact | regression | passed | failed |" in md
    assert "**REGRESSION**" in md and "too few cases to call a difference (n=2" in md
    console = Console(record=True, width=200)
    render_comparison(cmp, console)
    text = console.export_text()
    assert "REGRESSION" in text and "pipe|case" in text and "1 regression(s)" in text


# ---------------------------------------------------------------- the compare command


def cli() -> typer.Typer:
    app = typer.Typer()
    app.command("compare")(compare_cmd)
    app.command("noop")(lambda: None)
    return app


def test_compare_command_exit_codes(tmp_path: Path) -> None:
    db = tmp_path / "evals.db"
    store = SqliteResultStore(db)
    put_run(store, "base-001", EXACT, pass_fail(40, set()))
    put_run(store, "cand-002", EXACT, pass_fail(40, {0, 1}), started=1_700_000_100.0)
    store.close()
    runner = CliRunner()
    md = tmp_path / "cmp" / "c.md"
    res = runner.invoke(cli(), ["compare", "base-001", "demo@latest", "--results", str(db),
                                "--markdown", str(md)])  # fmt: skip
    assert res.exit_code == 1, res.output
    assert "REGRESSION" in res.output and "**REGRESSION**" in md.read_text()
    res = runner.invoke(cli(), ["compare", "base", "cand", "--results", str(db),
                                "--tolerance", "0.05"])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "no regression beyond tolerance" in res.output
    res = runner.invoke(cli(), ["compare", "base-001", "gone", "--results", str(db)])
    assert res.exit_code == 2 and "gone" in res.output
    res = runner.invoke(cli(), ["compare", "a", "b", "--results", str(tmp_path / "none.db")])
    assert res.exit_code == 2
