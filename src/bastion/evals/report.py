"""Reports of a stored run: the terminal view, Markdown, JUnit XML (and HTML, in report_html).

Every report reads the run's stored summary (:func:`bastion.evals.aggregate.summarize`)
for the per-scorer figures and the gate verdict, and iterates the run's rows
once, keeping only what it writes (capped lists of failing and errored cases),
so a report of a large run takes little memory.
"""

from __future__ import annotations

import re
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from bastion.evals.aggregate import expected_text, row_problems, suite_of
from bastion.evals.ports import CaseRow, RunInfo
from bastion.evals.report_html import write_html
from bastion.evals.types import Score

__all__ = [
    "md_cell",
    "md_code",
    "render_terminal",
    "write_html",
    "write_junit",
    "write_markdown",
]

_MD_SPECIAL = re.compile(r"([\\`*_\[\]|#~])")
# characters XML 1.0 cannot carry at all (ElementTree would write them and produce a broken file)
_XML_BAD = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff\ud800-\udfff]")


# ---------------------------------------------------------------- shared formatting


def truncate(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters, with an ellipsis when cut."""
    return text if len(text) <= limit else text[: max(0, limit - 1)] + "…"


def md_cell(value: object, limit: int | None = None) -> str:
    """``value`` as text that is safe inside a Markdown table cell.

    Pipes and Markdown punctuation are backslash-escaped, ``<``, ``>`` and
    ``&`` become entities (no raw HTML), newlines become ``<br>``.
    """
    text = str(value)
    if limit is not None:
        text = truncate(text, limit)
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    text = _MD_SPECIAL.sub(r"\\\1", text)
    return text.replace("\r\n", "\n").replace("\r", "\n").replace("\n", "<br>").strip()


def md_code(value: object) -> str:
    """``value`` for an inline code span (backticks and newlines removed)."""
    return str(value).replace("`", "'").replace("\n", " ")


def fmt(v: Any, digits: int = 3) -> str:
    """A summary number for display ("-" for None)."""
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def duration(run: RunInfo) -> float | None:
    return run.finished_at - run.started_at if run.finished_at else None


def _repetitions(run: RunInfo) -> int:
    reps = run.summary.get("repetitions")
    if isinstance(reps, int):
        return reps
    suite = suite_of(run)
    return suite.repetitions if suite else 1


def case_name(row: CaseRow, repetitions: int) -> str:
    """``case id`` or ``case id#repetition`` when the run repeats cases."""
    return f"{row.case_id}#{row.repetition}" if repetitions > 1 else row.case_id


def score_txt(s: Score) -> str:
    return f"{s.scorer}={s.value:.3g}" if s.value is not None else f"{s.scorer}=error"


# ---------------------------------------------------------------- terminal


def render_terminal(run: RunInfo, console: Console) -> None:
    """Print a run: header, one line per scorer, the gate failures."""
    s = run.summary
    status_style = {"passed": "bold green", "failed": "bold red"}.get(run.status, "bold yellow")
    dur = duration(run)
    header = Text.assemble(
        ("Suite    ", "bold"), run.suite, "\n",
        ("Target   ", "bold"), run.target, "\n",
        ("Run      ", "bold"), run.id, "\n",
        ("Status   ", "bold"), (run.status, status_style), "\n",
        ("Started  ", "bold"), time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(run.started_at)),
        "  ", ("duration ", "bold"), "-" if dur is None else f"{dur:.1f}s", "\n",
        ("Cases    ", "bold"),
        f"{s.get('cases', '-')} cases, {s.get('rows', '-')} rows, "
        f"{s.get('repetitions', 1)} repetition(s), {s.get('target_errors', 0)} target error(s)",
        "\n",
        ("Cost     ", "bold"), _cost(s),
        "  ", ("latency ", "bold"),
        f"p50 {fmt(s.get('latency_p50_s'))}s, p95 {fmt(s.get('latency_p95_s'))}s",
    )  # fmt: skip
    console.print(header)
    scorers: dict[str, Any] = s.get("scorers") or {}
    if not scorers:
        console.print(Text("no summary recorded (the run did not finish)", style="yellow"))
        return
    reps = _repetitions(run) > 1
    cols = ["Scorer", "Type", "Mean", "Pass rate", "Scored", "Errors", "Threshold", "OK"]
    table = Table(*cols, *(["Flaky"] if reps else []), title="Scorers")
    for label, e in scorers.items():
        on = e.get("aggregate")
        ok = Text("✓", style="green") if e.get("ok") else Text("✗", style="bold red")
        threshold = fmt(e.get("threshold"), 2)
        if e.get("threshold") is not None:
            threshold += " (pass rate)" if on == "pass_rate" else " (mean)"
        cells = [
            Text(label),
            Text(str(e.get("type", ""))),
            Text(fmt(e.get("mean")), style="bold" if on == "mean" else ""),
            Text(fmt(e.get("pass_rate")), style="bold" if on == "pass_rate" else ""),
            Text(str(e.get("scored", 0))),
            Text(str(e.get("errors", 0)), style="red" if e.get("errors") else ""),
            Text(threshold),
            ok,
        ]
        if reps:
            cells.append(Text(str(e.get("flaky_count", 0))))
        table.add_row(*cells)
    console.print(table)
    for reason in s.get("failures") or []:
        console.print(Text(f"✗ {reason}", style="red"))
    if s.get("passed"):
        console.print(Text("gate passed", style="bold green"))


def _cost(s: dict[str, Any]) -> str:
    cost = s.get("cost_usd")
    text = "-" if cost is None else f"${cost:.4f}"
    unknown = s.get("cost_unknown_rows") or 0
    return text + (f" ({unknown} row(s) of unknown cost)" if unknown else "")


# ---------------------------------------------------------------- markdown


def write_markdown(
    run: RunInfo,
    rows: Iterable[CaseRow],
    path: str | Path,
    *,
    max_cases: int = 50,
    output_chars: int = 300,
) -> Path:
    """Write the run as Markdown: summary table, gate failures, failing and errored cases."""
    s = run.summary
    reps = _repetitions(run)
    failing: list[str] = []
    errored: list[str] = []
    n_failing = n_errored = 0
    for row in rows:
        failed, errors = row_problems(row)
        name = md_cell(case_name(row, reps), 120)
        if errors:
            n_errored += 1
            if len(errored) < max_cases:
                errored.append(f"| {name} | {md_cell('; '.join(errors), output_chars)} |")
        if failed:
            n_failing += 1
            if len(failing) < max_cases:
                verdicts = md_cell(", ".join(score_txt(x) for x in failed))
                failing.append(
                    f"| {name} | {verdicts} | {md_cell(row.input, output_chars)} | "
                    f"{md_cell(expected_text(row.expected), output_chars)} | "
                    f"{md_cell(row.output, output_chars)} |"
                )
    dur = duration(run)
    lines = [
        f"# Eval report: {md_cell(run.suite)}",
        "",
        f"- Run: `{md_code(run.id)}`",
        f"- Target: {md_cell(run.target)}",
        f"- Status: **{md_cell(run.status)}**",
        f"- Duration: {'-' if dur is None else f'{dur:.1f}s'}",
        f"- Cases: {s.get('cases', '-')} ({s.get('rows', '-')} rows, "
        f"{s.get('repetitions', reps)} repetition(s), {s.get('target_errors', 0)} target errors)",
        f"- Cost: {_cost(s)}",
        f"- Latency: p50 {fmt(s.get('latency_p50_s'))}s, p95 {fmt(s.get('latency_p95_s'))}s",
        "",
        "| Scorer | Type | Mean | Pass rate | Scored | Errors | Threshold | OK |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for label, e in (s.get("scorers") or {}).items():
        lines.append(
            f"| {md_cell(label)} | {md_cell(e.get('type', ''))} | {fmt(e.get('mean'))} | "
            f"{fmt(e.get('pass_rate'))} | {e.get('scored', 0)} | {e.get('errors', 0)} | "
            f"{fmt(e.get('threshold'), 2)} | {'✓' if e.get('ok') else '✗'} |"
        )
    if s.get("failures"):
        lines += ["", "## Gate failures", ""]
        lines += [f"- {md_cell(r)}" for r in s["failures"]]
    lines += ["", f"## Failing cases ({n_failing})", ""]
    if failing:
        lines += ["| Case | Failed scorers | Input | Expected | Output |", "|---|---|---|---|---|"]
        lines += failing
        if n_failing > len(failing):
            lines += ["", f"... and {n_failing - len(failing)} more."]
    else:
        lines.append("None.")
    lines += ["", f"## Errored cases ({n_errored})", ""]
    if errored:
        lines += ["| Case | Errors |", "|---|---|", *errored]
        if n_errored > len(errored):
            lines += ["", f"... and {n_errored - len(errored)} more."]
    else:
        lines.append("None.")
    out = Path(path)
    out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return out


# ---------------------------------------------------------------- junit


def xml_text(text: str, limit: int = 4000) -> str:
    """``text`` without the characters XML 1.0 forbids, cut to ``limit``."""
    return _XML_BAD.sub("\ufffd", truncate(text, limit))


def write_junit(run: RunInfo, rows: Iterable[CaseRow], path: str | Path) -> Path:
    """Write JUnit XML: a testcase per (case, repetition) plus a ``gate:SCORER`` per scorer.

    A case gets ``<error>`` when its target or one of its scorers errored
    (scorer failures are then listed in the same element), else ``<failure>``
    when a scorer failed it. One element per testcase keeps the file valid
    against the strict (Ant) JUnit schema as well as the lenient ones.
    """
    reps = _repetitions(run)
    suite_el = ET.Element("testsuite", name=run.suite)
    tests = failures = errors = 0
    for row in rows:
        tests += 1
        case = ET.SubElement(
            suite_el,
            "testcase",
            classname=run.suite,
            name=xml_text(case_name(row, reps), 500),
            time=f"{max(row.latency_s, 0.0):.3f}",
        )
        failed, errs = row_problems(row)
        detail = (
            f"input: {truncate(row.input, 1000)}\n"
            f"expected: {truncate(expected_text(row.expected), 1000)}\n"
            f"output: {truncate(row.output, 2000)}"
        )
        fail_msg = ", ".join(score_txt(x) for x in failed)
        if errs:
            errors += 1
            el = ET.SubElement(case, "error", message=xml_text("; ".join(errs), 1000))
            el.set("type", "target" if row.error else "scorer")
            el.text = xml_text(
                "\n".join(errs) + (f"\nfailed: {fail_msg}" if failed else "") + "\n" + detail
            )
        elif failed:
            failures += 1
            el = ET.SubElement(case, "failure", message=xml_text(fail_msg, 1000), type="scorer")
            el.text = xml_text(
                "\n".join(f"{x.scorer}: {x.explanation or score_txt(x)}" for x in failed)
                + "\n"
                + detail
            )
    for label, e in (run.summary.get("scorers") or {}).items():
        tests += 1
        gate = ET.SubElement(suite_el, "testcase", classname=run.suite, name=f"gate:{label}")
        gate.set("time", "0.000")
        if not e.get("ok"):
            failures += 1
            reason = str(e.get("reason") or "gate failed")
            ET.SubElement(
                gate, "failure", message=xml_text(reason, 1000), type="gate"
            ).text = xml_text(reason)
    dur = duration(run)
    attrs = {
        "tests": str(tests),
        "failures": str(failures),
        "errors": str(errors),
        "skipped": "0",
        "time": f"{dur or 0.0:.3f}",
    }
    for k, v in attrs.items():
        suite_el.set(k, v)
    suite_el.set("timestamp", time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(run.started_at)))
    props = ET.Element("properties")
    for name, value in (("run_id", run.id), ("target", run.target), ("status", run.status)):
        ET.SubElement(props, "property", name=name, value=xml_text(value, 500))
    suite_el.insert(0, props)
    root = ET.Element("testsuites", {"name": run.suite, **attrs})
    root.append(suite_el)
    tree = ET.ElementTree(root)
    ET.indent(tree)
    out = Path(path)
    tree.write(out, encoding="utf-8", xml_declaration=True)
    return out
