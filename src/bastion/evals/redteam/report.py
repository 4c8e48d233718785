"""Red-team results: attack success rates, the JSONL hit log, the HTML report, a table.

The attack success rate (ASR) of a group is ``hits / scored``: probes that
could not be scored (errors, skipped fixtures) never enter it. A probe the
gateway refused (``blocked``) is scored and counts as defended.

:func:`write_reports` writes ``hits.jsonl`` (one line per probe: ids, OWASP
tag, severity, converter, seed source and licence, success, blocked, detector,
a short evidence snippet with seeded secrets masked), ``summary.json`` and a
self-contained ``report.html`` (inline CSS, no external URL, every value
escaped).
"""

from __future__ import annotations

import html
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import orjson
from rich.table import Table

from bastion.evals.redteam.runner import ProbeRecord, RedteamResult
from bastion.evals.redteam.seeds import OWASP, OWASP_NAMES, SEVERITIES
from bastion.evals.redteam.suite import RedteamSuite


@dataclass(slots=True)
class Bucket:
    """Counts of one group of probes."""

    probes: int = 0
    scored: int = 0
    hits: int = 0
    blocked: int = 0
    errors: int = 0
    skipped: int = 0

    def add(self, r: ProbeRecord) -> None:
        self.probes += 1
        if r.skipped:
            self.skipped += 1
        elif r.success is None:
            self.errors += 1
        else:
            self.scored += 1
            self.hits += int(r.success)
            self.blocked += int(r.blocked)

    @property
    def asr(self) -> float | None:
        return self.hits / self.scored if self.scored else None

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "asr": self.asr}


def matches(r: ProbeRecord, entry: str) -> bool:
    """Whether a record falls under ``category`` or ``category:technique``."""
    cat, _, tech = entry.partition(":")
    return r.category == cat and (not tech or r.technique == tech)


@dataclass(slots=True)
class Summary:
    """ASR per category, severity, OWASP id, converter and critical entry."""

    overall: Bucket = field(default_factory=Bucket)
    by_category: dict[str, Bucket] = field(default_factory=dict)
    by_severity: dict[str, Bucket] = field(default_factory=dict)
    by_owasp: dict[str, Bucket] = field(default_factory=dict)
    by_converter: dict[str, Bucket] = field(default_factory=dict)
    critical: dict[str, Bucket] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        def group(d: dict[str, Bucket]) -> dict[str, Any]:
            return {k: v.to_json() for k, v in d.items()}

        return {
            "overall": self.overall.to_json(),
            "by_category": group(self.by_category),
            "by_severity": group(self.by_severity),
            "by_owasp": group(self.by_owasp),
            "by_converter": group(self.by_converter),
            "critical": group(self.critical),
        }


def summarize(records: Iterable[ProbeRecord], suite: RedteamSuite) -> Summary:
    """Count the records of a run into a :class:`Summary`."""
    s = Summary()
    s.by_category = {c: Bucket() for c in suite.categories}
    s.critical = {e: Bucket() for e in suite.critical}
    for r in records:
        s.overall.add(r)
        s.by_category.setdefault(r.category, Bucket()).add(r)
        s.by_severity.setdefault(r.severity, Bucket()).add(r)
        s.by_owasp.setdefault(r.owasp, Bucket()).add(r)
        s.by_converter.setdefault(r.converter, Bucket()).add(r)
        for e, b in s.critical.items():
            if matches(r, e):
                b.add(r)
    s.by_severity = {k: s.by_severity[k] for k in SEVERITIES if k in s.by_severity}
    return s


def pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.1f}%"


def bar_of(suite: RedteamSuite, category: str) -> str:
    """The category's gate bar as text: ``critical``, ``<= 5%`` or ``-``."""
    if any(e == category for e in suite.critical):
        return "critical (0)"
    parts = [e.partition(":")[2] for e in suite.critical if e.startswith(category + ":")]
    thr = suite.threshold(category)
    text = f"<= {pct(thr)}" if thr is not None else "-"
    return text + (f"; {', '.join(parts)}: critical (0)" if parts else "")


def table(summary: Summary, suite: RedteamSuite) -> Table:
    """The terminal table: one row per category, then the overall row."""
    t = Table(title=f"red team: {suite.name}")
    numbers = ("probes", "hits", "blocked", "not scored", "ASR")
    for col in ("category", "OWASP", *numbers, "bar"):
        t.add_column(col, justify="right" if col in numbers else "left")
    for cat, b in summary.by_category.items():
        t.add_row(
            cat,
            OWASP.get(cat, "?"),
            str(b.probes),
            str(b.hits),
            str(b.blocked),
            str(b.errors + b.skipped),
            pct(b.asr),
            bar_of(suite, cat),
        )
    o = summary.overall
    t.add_row(
        "all",
        "",
        str(o.probes),
        str(o.hits),
        str(o.blocked),
        str(o.errors + o.skipped),
        pct(o.asr),
        "",
    )
    return t


def write_jsonl(records: Iterable[ProbeRecord], path: Path) -> None:
    with path.open("wb") as f:
        for r in records:
            f.write(orjson.dumps(r.to_json()) + b"\n")


_CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,sans-serif;margin:2rem;color:#1d1d1f}
h1{font-size:1.4rem}h2{font-size:1.1rem;margin-top:2rem}
table{border-collapse:collapse;margin:.5rem 0}td,th{border:1px solid #d0d0d7;padding:.3rem .6rem;
text-align:left;vertical-align:top}th{background:#f3f3f6}td.n{text-align:right}
.pass{color:#0a7a2f;font-weight:600}.fail{color:#b3261e;font-weight:600}
.hit{background:#fdecea}code{font-size:12px;word-break:break-all}
"""


def _e(v: object) -> str:
    return html.escape(str(v), quote=True)


def _rows(head: list[str], rows: list[list[str]], classes: list[str] | None = None) -> str:
    th = "".join(f"<th>{_e(h)}</th>" for h in head)
    body = []
    for i, row in enumerate(rows):
        cls = f' class="{classes[i]}"' if classes and classes[i] else ""
        body.append(f"<tr{cls}>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>")
    return f"<table><tr>{th}</tr>{''.join(body)}</table>"


def _group(title: str, group: dict[str, Bucket], label: str) -> str:
    rows = [
        [
            _e(k),
            str(b.probes),
            str(b.scored),
            str(b.hits),
            str(b.blocked),
            str(b.errors + b.skipped),
            _e(pct(b.asr)),
        ]
        for k, b in group.items()
    ]
    head = [label, "probes", "scored", "hits", "blocked", "not scored", "ASR"]
    return f"<h2>{_e(title)}</h2>" + _rows(head, rows)


def render_html(
    result: RedteamResult,
    summary: Summary,
    suite: RedteamSuite,
    passed: bool,
    reasons: Iterable[str],
) -> str:
    """The self-contained HTML report."""
    verdict = '<span class="pass">PASSED</span>' if passed else '<span class="fail">FAILED</span>'
    why = "".join(f"<li>{_e(r)}</li>" for r in reasons)
    cats = [
        [
            _e(c),
            _e(OWASP.get(c, "")),
            _e(OWASP_NAMES.get(OWASP.get(c, ""), "")),
            str(b.probes),
            str(b.hits),
            str(b.blocked),
            str(b.errors + b.skipped),
            _e(pct(b.asr)),
            _e(bar_of(suite, c)),
        ]
        for c, b in summary.by_category.items()
    ]
    hits = [r for r in result.records if r.success]
    hit_rows = [
        [
            f"<code>{_e(r.id)}</code>",
            _e(r.owasp),
            _e(r.severity),
            _e(r.converter),
            _e(f"{r.detector} ({r.how})"),
            f"<code>{_e(r.evidence)}</code>",
        ]
        for r in hits
    ]
    sources = Counter((r.source, r.license) for r in result.records)
    src_rows = [[_e(s), _e(lic), str(n)] for (s, lic), n in sorted(sources.items())]
    errors = [r for r in result.records if r.success is None][:50]
    err_rows = [[f"<code>{_e(r.id)}</code>", _e(r.error or "")] for r in errors]
    when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(result.started_at))
    parts = [
        f"<!doctype html><html lang=en><head><meta charset=utf-8><title>red team: {_e(suite.name)}"
        f"</title><style>{_CSS}</style></head><body>",
        f"<h1>Red team: {_e(suite.name)} {verdict}</h1>",
        f"<p>target <code>{_e(result.target)}</code>; run <code>{_e(result.run_id)}</code>; "
        f"{_e(when)}; {summary.overall.probes} probes, attack success rate "
        f"{_e(pct(summary.overall.asr))}</p>",
        f"<ul>{why}</ul>" if why else "",
        "<h2>By category</h2>",
        _rows(
            ["category", "OWASP", "risk", "probes", "hits", "blocked", "not scored", "ASR", "bar"],
            cats,
        ),
        _group("By severity", summary.by_severity, "severity"),
        _group("By converter", summary.by_converter, "converter"),
        _group("Critical (zero tolerance)", summary.critical, "entry"),
        f"<h2>Successful attacks ({len(hits)})</h2>",
        _rows(
            ["probe", "OWASP", "severity", "converter", "detector", "evidence"],
            hit_rows,
            ["hit"] * len(hit_rows),
        )
        if hits
        else "<p>none</p>",
        "<h2>Seeds and licences</h2>",
        _rows(["source", "licence", "probes"], src_rows),
    ]
    if err_rows:
        parts += ["<h2>Not scored (first 50)</h2>", _rows(["probe", "why"], err_rows)]
    if result.notes:
        parts.append(
            "<h2>Notes</h2><ul>" + "".join(f"<li>{_e(n)}</li>" for n in result.notes) + "</ul>"
        )
    parts.append("</body></html>")
    return "\n".join(parts)


def write_reports(
    out: Path,
    result: RedteamResult,
    summary: Summary,
    suite: RedteamSuite,
    passed: bool,
    reasons: Iterable[str],
) -> dict[str, Path]:
    """Write ``hits.jsonl``, ``summary.json`` and ``report.html`` under ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    reasons = list(reasons)
    paths = {
        "hits": out / "hits.jsonl",
        "summary": out / "summary.json",
        "html": out / "report.html",
    }
    write_jsonl(result.records, paths["hits"])
    doc = {
        "suite": suite.name,
        "target": result.target,
        "run_id": result.run_id,
        "started_at": result.started_at,
        "finished_at": result.finished_at,
        "passed": passed,
        "reasons": reasons,
        "notes": result.notes,
        **summary.to_json(),
    }
    paths["summary"].write_bytes(orjson.dumps(doc, option=orjson.OPT_INDENT_2))
    paths["html"].write_text(render_html(result, summary, suite, passed, reasons), encoding="utf-8")
    return paths
