"""Run summaries (aggregate.summarize) and the reports: terminal, Markdown, HTML, JUnit, CLI."""

from __future__ import annotations

import json
import math
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import typer
from rich.console import Console
from typer.testing import CliRunner

from bastion.cli.eval_reports import report_cmd
from bastion.evals.aggregate import mean_ci, summarize, wilson
from bastion.evals.ports import CaseRow, RunInfo
from bastion.evals.report import md_cell, render_terminal, write_html, write_junit, write_markdown
from bastion.evals.suite import Suite
from bastion.evals.types import Score
from bastion.store.sqlite.evals import SqliteResultStore
from tests.unit.eval_helpers import make_suite


def row(
    case: str,
    *scores: Score,
    rep: int = 0,
    latency: float = 0.5,
    cost: float | None = 0.001,
    error: str | None = None,
    run: str = "run-1",
    input: str = "question",
    output: str = "answer",
    expected: Any = "answer",
) -> CaseRow:
    return CaseRow(run, case, rep, input, expected, output, tuple(scores), latency, cost, error)


def ok(label: str, value: float = 1.0) -> Score:
    return Score(label, value, passed=value >= 0.5)


def bad(label: str) -> Score:
    return Score.failed(label, "judge timed out")


def no_nan(obj: Any) -> None:
    text = json.dumps(obj, allow_nan=False)  # raises on NaN / inf
    assert "NaN" not in text and "Infinity" not in text


def finished(suite: Suite, rows: Sequence[CaseRow], run_id: str = "run-1") -> RunInfo:
    summary = summarize(suite, rows)
    return RunInfo(
        id=run_id,
        suite=suite.name,
        target="model:chat",
        started_at=1_700_000_000.0,
        finished_at=1_700_000_012.5,
        status="passed" if summary["passed"] else "failed",
        config=suite.model_dump(mode="json", by_alias=True),
        summary=summary,
    )


# ---------------------------------------------------------------- summarize


def test_threshold_pass_and_fail_with_readable_reasons() -> None:
    suite = make_suite({"type": "exact", "threshold": 0.9}, {"type": "contains", "threshold": 0.5})
    rows = [row(f"c{i}", ok("exact", 1.0 if i < 8 else 0.0), ok("contains")) for i in range(10)]
    s = summarize(suite, iter(rows))  # a one-shot iterator: summarize reads it once
    assert s["cases"] == 10 and s["rows"] == 10 and s["repetitions"] == 1
    exact, contains = s["scorers"]["exact"], s["scorers"]["contains"]
    assert exact["mean"] == pytest.approx(0.8) and exact["pass_rate"] == pytest.approx(0.8)
    assert exact["aggregate"] == "mean" and exact["passed_cases"] == 8
    assert not exact["ok"] and exact["reason"] == "mean 0.80 < threshold 0.90"
    assert contains["ok"] and contains["reason"] is None and contains["mean"] == 1.0
    assert s["passed"] is False
    assert s["failures"] == ["exact: mean 0.80 < threshold 0.90"]
    assert s["cost_usd"] == pytest.approx(0.01) and s["cost_unknown_rows"] == 0
    no_nan(s)


def test_errors_are_counted_and_never_enter_the_mean() -> None:
    rows = [
        row("a", ok("judge", 1.0)),
        row("b", ok("judge", 1.0)),
        row("c", ok("judge", 0.0)),
        row("d", bad("judge")),
        row("e"),  # no score at all from the judge: unscorable too
    ]
    lenient = summarize(make_suite({**JUDGE, "threshold": 0.6, "max_errors": 2}), rows)
    j = lenient["scorers"]["judge"]
    assert j["mean"] == pytest.approx(2 / 3) and j["scored"] == 3 and j["errors"] == 2
    assert j["ok"] and lenient["passed"]
    strict = summarize(make_suite({**JUDGE, "threshold": 0.6}), rows)
    assert strict["failures"] == ["judge: 2 scoring errors > max_errors 0"]
    # no threshold: ok unless too many errors
    unbarred = summarize(make_suite({**JUDGE, "max_errors": 1}), rows)
    assert unbarred["failures"] == ["judge: 2 scoring errors > max_errors 1"]
    assert summarize(make_suite({**JUDGE, "max_errors": 5}), rows)["passed"]


JUDGE = {"type": "judge", "model": "judge", "rubric": "polite"}


def test_nothing_scored_is_a_failure_and_never_nan() -> None:
    suite = make_suite({**JUDGE, "max_errors": 10})
    s = summarize(suite, [row("a", bad("judge")), row("b", bad("judge"))])
    j = s["scorers"]["judge"]
    assert j["mean"] is None and j["pass_rate"] is None and j["scored"] == 0
    assert not j["ok"] and s["failures"] == ["judge: no case could be scored"]
    no_nan(s)
    empty = summarize(make_suite({"type": "exact", "threshold": 0.5}), [])
    assert empty["rows"] == 0 and not empty["passed"]
    assert empty["latency_p50_s"] is None and empty["cost_usd"] == 0.0
    no_nan(empty)


def test_flaky_cases_across_repetitions() -> None:
    suite = make_suite({"type": "exact", "threshold": 0.5}, repetitions=3)
    rows = [row("stable", ok("exact"), rep=r) for r in range(3)]
    rows += [row("wobbly", ok("exact", 1.0 if r else 0.0), rep=r) for r in range(3)]
    rows += [row("broken", ok("exact", 0.0), rep=r) for r in range(3)]
    s = summarize(suite, reversed(rows))  # any order
    e = s["scorers"]["exact"]
    assert s["cases"] == 3 and s["rows"] == 9
    assert e["mean"] == pytest.approx(5 / 9)  # every (case, repetition) row weighs one
    assert e["flaky_cases"] == ["wobbly"] and e["flaky_count"] == 1
    assert e["passed_cases"] == 1
    single = summarize(make_suite({"type": "exact"}), [row("a", ok("exact"))])
    assert single["scorers"]["exact"]["flaky_cases"] == []


def test_latency_percentiles_cost_and_target_errors() -> None:
    suite = make_suite({"type": "exact"})
    rows = [row(f"c{i:03d}", ok("exact"), latency=float(i), cost=0.5) for i in range(1, 101)]
    rows.append(row("down", bad("exact"), latency=99_999.0, cost=None, error="HTTP 503"))
    s = summarize(suite, rows)
    # numpy's linear interpolation over 1..100 (the errored row's latency is left out)
    assert s["latency_p50_s"] == pytest.approx(50.5)
    assert s["latency_p95_s"] == pytest.approx(95.05)
    assert s["target_errors"] == 1 and s["cost_unknown_rows"] == 1
    assert s["cost_usd"] == pytest.approx(50.0)
    assert s["scorers"]["exact"]["errors"] == 1


def test_latency_thresholds_apply_to_pass_rate_or_lower_mean() -> None:
    rows = [
        row("a", Score("latency", 0.5, passed=True)),
        row("b", Score("latency", 3.0, passed=False)),
    ]
    barred = summarize(make_suite({"type": "latency", "max_s": 2, "threshold": 0.9}), rows)
    lat = barred["scorers"]["latency"]
    assert lat["aggregate"] == "pass_rate" and lat["pass_rate"] == 0.5
    assert barred["failures"] == ["latency: pass rate 0.50 < threshold 0.90"]
    rows = [row("a", Score("latency", 0.5)), row("b", Score("latency", 3.0))]
    mean_bar = summarize(make_suite({"type": "latency", "threshold": 1.0}), rows)
    assert mean_bar["scorers"]["latency"]["aggregate"] == "mean"
    assert mean_bar["failures"] == ["latency: mean 1.75 > threshold 1.00"]
    assert summarize(make_suite({"type": "latency", "threshold": 2.0}), rows)["passed"]


def test_mean_ci_wilson_and_bootstrap() -> None:
    m, lo, hi = mean_ci([1.0] * 8 + [0.0] * 2)
    # Wilson 95% interval for 8/10, by hand: (p + z²/2n ± z·sqrt(p(1-p)/n + z²/4n²)) / (1 + z²/n)
    z = 1.959963984540054
    centre = (0.8 + z * z / 20) / (1 + z * z / 10)
    half = z * math.sqrt(0.8 * 0.2 / 10 + z * z / 400) / (1 + z * z / 10)
    assert m == 0.8 and (lo, hi) == pytest.approx((centre - half, centre + half))
    assert (lo, hi) == pytest.approx(wilson(8, 10))
    assert lo == pytest.approx(0.4902, abs=1e-4) and hi == pytest.approx(0.9433, abs=1e-4)
    values = [0.1, 0.4, 0.35, 0.8, 0.66, 0.9, 0.72, 0.5]
    m2, lo2, hi2 = mean_ci(values)
    assert lo2 < m2 < hi2 and m2 == pytest.approx(sum(values) / len(values))
    assert mean_ci(values) == (m2, lo2, hi2)  # reproducible (fixed seed)
    _, wlo, whi = mean_ci(values * 10)
    assert whi - wlo < hi2 - lo2  # more data, narrower
    assert mean_ci([0.3]) == (0.3, 0.3, 0.3)
    with pytest.raises(ValueError):
        mean_ci([])


# ---------------------------------------------------------------- reports


def mixed_run(tmp_rows: list[CaseRow] | None = None) -> tuple[RunInfo, list[CaseRow]]:
    suite = make_suite({"type": "exact", "threshold": 0.9}, {**JUDGE, "max_errors": 0})
    rows = tmp_rows or [
        row("good", ok("exact"), ok("judge")),
        row("wrong", ok("exact", 0.0), ok("judge"), output="nope | not it"),
        row("judge-down", ok("exact"), bad("judge")),
        row("target-down", bad("exact"), bad("judge"), error="HTTP 503", output=""),
    ]
    return finished(suite, rows), rows


def test_terminal_report_shows_scorers_and_failures() -> None:
    run, _ = mixed_run()
    console = Console(record=True, width=160)
    render_terminal(run, console)
    text = console.export_text()
    for needle in ("demo", "model:chat", "run-1", "failed", "exact", "judge", "✗", "12.5s"):
        assert needle in text
    assert "exact: mean 0.67 < threshold 0.90" in text
    assert "judge: 2 scoring errors > max_errors 0" in text


def test_markdown_escapes_pipes_and_lists_failing_and_errored(tmp_path: Path) -> None:
    long_output = "x" * 1000
    rows = [
        row("ok", ok("exact"), ok("judge")),
        row("pipe|case", ok("exact", 0.0), ok("judge"), output="a | b\nnext <b>line</b>"),
        row("long", ok("exact", 0.0), ok("judge"), output=long_output),
        row("err", ok("exact"), bad("judge")),
    ]
    run, rows = mixed_run(rows)
    path = write_markdown(run, rows, tmp_path / "r.md")
    text = path.read_text()
    assert "## Failing cases (2)" in text and "## Errored cases (1)" in text
    line = next(x for x in text.splitlines() if x.startswith("| pipe"))
    assert "pipe\\|case" in line and "a \\| b<br>next &lt;b&gt;line&lt;/b&gt;" in line
    # exactly the 5 columns' 6 unescaped pipes: escaping kept the table's shape
    assert len(re.findall(r"(?<!\\)\|", line)) == 6
    long_line = next(x for x in text.splitlines() if x.startswith("| long"))
    assert "x" * 299 + "…" in long_line and "x" * 300 not in long_line
    assert "judge: judge timed out" in text
    assert md_cell("a|b") == "a\\|b" and md_cell("*x*") == "\\*x\\*"


def test_markdown_caps_failing_cases(tmp_path: Path) -> None:
    rows = [row(f"c{i:03d}", ok("exact", 0.0), ok("judge")) for i in range(60)]
    run, rows = mixed_run(rows)
    text = write_markdown(run, rows, tmp_path / "r.md").read_text()
    assert text.count("| c0") == 50 and "... and 10 more." in text


def test_html_is_self_contained_and_escaped(tmp_path: Path) -> None:
    evil = '<script>alert("pwned")</script>'
    rows = [
        row("good", ok("exact"), ok("judge"), latency=0.2),
        row("evil", ok("exact", 0.0), ok("judge"), input=evil, output=evil, latency=1.4),
        row("<img src=x onerror=alert(1)>", ok("exact"), ok("judge"), latency=0.9),
    ]
    run, rows = mixed_run(rows)
    text = write_html(run, rows, tmp_path / "r.html").read_text()
    assert text.startswith("<!DOCTYPE html>") and "<svg" in text and "<style>" in text
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", text, re.I)
    assert "http://" not in text and "https://" not in text
    assert evil not in text and "&lt;script&gt;alert(&quot;pwned&quot;)&lt;/script&gt;" in text
    assert "<img" not in text
    assert text.count("<script>") == 1  # ours: the table filter
    assert 'aria-label="latency histogram"' in text and "<rect" in text
    assert 'data-status="fail"' in text and 'data-status="pass"' in text


def junit_of(run: RunInfo, rows: list[CaseRow], path: Path) -> ET.Element:
    write_junit(run, iter(rows), path)
    root = ET.parse(path).getroot()
    assert root.tag == "testsuites"
    return root


def test_junit_structure_and_counts(tmp_path: Path) -> None:
    run, rows = mixed_run()
    root = junit_of(run, rows, tmp_path / "j.xml")
    (suite,) = root.findall("testsuite")
    cases = suite.findall("testcase")
    assert suite.get("name") == "demo"
    assert [c.get("name") for c in cases] == [
        "good", "wrong", "judge-down", "target-down", "gate:exact", "gate:judge",
    ]  # fmt: skip
    for c in cases:  # the attributes every JUnit consumer requires
        assert c.get("classname") == "demo"
        assert float(c.get("time", "x")) >= 0
        assert len([ch for ch in c if ch.tag in ("failure", "error", "skipped")]) <= 1
    by = {c.get("name"): c for c in cases}
    assert by["good"].find("failure") is None and by["good"].find("error") is None
    failure = by["wrong"].find("failure")
    assert failure is not None and failure.get("message") == "exact=0"
    assert "nope | not it" in (failure.text or "")
    err = by["judge-down"].find("error")
    assert err is not None and err.get("type") == "scorer"
    assert err.get("message") == "judge: judge timed out"
    terr = by["target-down"].find("error")
    assert terr is not None and terr.get("type") == "target"
    assert (terr.get("message") or "").startswith("target: HTTP 503")
    gate = by["gate:exact"].find("failure")
    assert gate is not None
    assert gate.get("message") == "mean 0.67 < threshold 0.90; 1 scoring error > max_errors 0"
    assert by["gate:judge"].find("failure") is not None
    n_fail = sum(1 for c in cases if c.find("failure") is not None)
    n_err = sum(1 for c in cases if c.find("error") is not None)
    for el in (suite, root):
        assert el.get("tests") == str(len(cases)) == "6"
        assert el.get("failures") == str(n_fail) == "3"
        assert el.get("errors") == str(n_err) == "2"
        assert el.get("time") == "12.500"
    props = {p.get("name"): p.get("value") for p in suite.iter("property")}
    assert props["run_id"] == "run-1"


def test_junit_repetitions_and_bad_xml_characters(tmp_path: Path) -> None:
    suite = make_suite({"type": "exact", "threshold": 0.1}, repetitions=2)
    rows = [
        row("a", ok("exact"), rep=0, output="bell\x07 and nul\x00"),
        row("a", ok("exact", 0.0), rep=1, output="fine"),
    ]
    run = finished(suite, rows)
    root = junit_of(run, rows, tmp_path / "j.xml")  # parses: control characters replaced
    names = [c.get("name") for c in root.iter("testcase")]
    assert names == ["a#0", "a#1", "gate:exact"]
    assert root.get("tests") == "3" and root.get("failures") == "1" and root.get("errors") == "0"


# ---------------------------------------------------------------- the report command


def cli() -> typer.Typer:
    app = typer.Typer()
    app.command("report")(report_cmd)
    app.command("noop")(lambda: None)  # two commands: typer keeps "report" as a subcommand
    return app


def stored(tmp_path: Path) -> Path:
    run, rows = mixed_run()
    db = tmp_path / "evals.db"
    store = SqliteResultStore(db)
    store.create_run(RunInfo(run.id, run.suite, run.target, run.started_at, config=run.config))
    store.add_rows(rows)
    assert run.finished_at is not None
    store.finish_run(run.id, run.status, run.summary, run.finished_at)
    store.close()
    return db


def test_report_command_writes_all_formats(tmp_path: Path) -> None:
    db = stored(tmp_path)
    out = tmp_path / "out"
    res = CliRunner().invoke(
        cli(),
        ["report", "demo@latest", "--results", str(db), "--md", str(out / "r.md"),
         "--html", str(out / "r.html"), "--junit", str(out / "j.xml")],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "exact: mean 0.67 < threshold 0.90" in res.output
    assert "| wrong |" in (out / "r.md").read_text()
    assert "<svg" in (out / "r.html").read_text()
    assert ET.parse(out / "j.xml").getroot().get("tests") == "6"


def test_report_command_missing_run_or_results(tmp_path: Path) -> None:
    db = stored(tmp_path)
    res = CliRunner().invoke(cli(), ["report", "nope", "--results", str(db)])
    assert res.exit_code == 2
    res = CliRunner().invoke(cli(), ["report", "run-1", "--results", str(tmp_path / "x.db")])
    assert res.exit_code == 2 and not (tmp_path / "x.db").exists()


class _Rows:
    """An iterable that can be read once only (reports must stream)."""

    def __init__(self, rows: list[CaseRow]) -> None:
        self._rows: list[CaseRow] | None = rows

    def __iter__(self) -> Iterator[CaseRow]:
        assert self._rows is not None, "rows iterated twice"
        rows, self._rows = self._rows, None
        return iter(rows)


def test_reports_read_rows_once(tmp_path: Path) -> None:
    run, rows = mixed_run()
    md = write_markdown(run, _Rows(rows), tmp_path / "a.md").read_text()
    page = write_html(run, _Rows(rows), tmp_path / "a.html").read_text()
    xml = ET.parse(write_junit(run, _Rows(rows), tmp_path / "a.xml")).getroot()
    assert "## Failing cases (1)" in md and "## Errored cases (2)" in md
    assert page.count("<tr data-status=") == len(rows)
    assert xml.get("tests") == str(len(rows) + 2)
