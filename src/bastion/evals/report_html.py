"""A run as one self-contained HTML file: inline CSS, inline SVG charts, no external URL.

The page holds the summary, a bar chart of each scorer's aggregate against its
threshold, a latency histogram and the per-case table (filterable with a few
lines of inline JavaScript). Every piece of run data is HTML-escaped: case
inputs and outputs are untrusted text.
"""

from __future__ import annotations

import html
import math
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from bastion.evals.aggregate import expected_text, metric_of, row_problems
from bastion.evals.ports import CaseRow, RunInfo

CELL_CHARS = 500

_CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,sans-serif;margin:24px;color:#1f2328}
h1{font-size:22px;margin:0 0 8px}h2{font-size:17px;margin:24px 0 8px}
dl{display:grid;grid-template-columns:max-content auto;gap:2px 16px;margin:0}
dt{font-weight:600}dd{margin:0}
table{border-collapse:collapse;width:100%;margin:8px 0}
th,td{border:1px solid #d0d7de;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#f6f8fa}td.t{white-space:pre-wrap;word-break:break-word;max-width:32em}
.pass{color:#1a7f37}.fail{color:#cf222e;font-weight:600}.error{color:#9a6700;font-weight:600}
.badge{padding:2px 8px;border-radius:10px;color:#fff}
.badge.passed{background:#1a7f37}.badge.failed{background:#cf222e}
.badge.running,.badge.interrupted{background:#9a6700}
.charts{display:flex;flex-wrap:wrap;gap:24px}svg text{font:12px system-ui,sans-serif}
#filters{margin:8px 0}#filters input{width:20em}
"""

_JS = """
(function(){
var q=document.getElementById('q'),s=document.getElementById('st');
function f(){var t=q.value.toLowerCase(),w=s.value;
document.querySelectorAll('#cases tbody tr').forEach(function(r){
var ok=(w===''||r.dataset.status===w)&&(t===''||r.textContent.toLowerCase().indexOf(t)>=0);
r.style.display=ok?'':'none';});}
q.addEventListener('input',f);s.addEventListener('change',f);})();
"""


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _cut(text: str, limit: int = CELL_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _num(v: Any, digits: int = 3) -> str:
    return "-" if v is None else f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def _threshold(e: dict[str, Any]) -> str:
    t = e.get("threshold")
    return (
        "-" if t is None else f"{_num(t, 2)} ({str(e.get('aggregate', 'mean')).replace('_', ' ')})"
    )


def scorer_chart(scorers: dict[str, Any]) -> str:
    """Horizontal bars: each scorer's aggregate, with its threshold as a tick."""
    items = [
        (label, metric_of(e), e.get("threshold"), bool(e.get("ok"))) for label, e in scorers.items()
    ]
    if not items:
        return ""
    top = max(
        [1.0]
        + [abs(v) for _, v, _, _ in items if v is not None]
        + [abs(t) for _, _, t, _ in items if isinstance(t, int | float)]
    )
    bar_w, left, row_h = 320, 150, 26
    height = row_h * len(items) + 24
    parts = [
        f'<svg width="{left + bar_w + 70}" '
        f'height="{height}" role="img" aria-label="scorer aggregates">'
    ]
    for i, (label, v, thr, ok) in enumerate(items):
        y = 8 + i * row_h
        parts.append(
            f'<text x="{left - 6}" y="{y + 14}" text-anchor="end">{_e(_cut(label, 22))}</text>'
        )
        parts.append(f'<rect x="{left}" y="{y}" width="{bar_w}" height="18" fill="#eaeef2"/>')
        if v is not None:
            w = bar_w * max(0.0, v) / top
            color = "#2da44e" if ok else "#cf222e"
            parts.append(f'<rect x="{left}" y="{y}" width="{w:.1f}" height="18" fill="{color}"/>')
        if isinstance(thr, int | float):
            x = left + bar_w * max(0.0, thr) / top
            parts.append(
                f'<line x1="{x:.1f}" y1="{y - 3}" x2="{x:.1f}" y2="{y + 21}" '
                f'stroke="#1f2328" stroke-width="2"><title>threshold {thr:g}</title></line>'
            )
        parts.append(f'<text x="{left + bar_w + 6}" y="{y + 14}">{_e(_num(v))}</text>')
    parts.append("</svg>")
    return "".join(parts)


def latency_histogram(latencies: list[float], bins: int = 20) -> str:
    """An SVG histogram of per-case latencies (seconds)."""
    if not latencies:
        return "<p>No latencies recorded.</p>"
    counts, edges = np.histogram(np.asarray(latencies, dtype=np.float64), bins=bins)
    width, height, pad = 420, 160, 28
    peak = max(1, int(counts.max()))
    bw = width / len(counts)
    parts = [
        f'<svg width="{width + 2 * pad}" '
        f'height="{height + 2 * pad}" role="img" aria-label="latency histogram">'
    ]
    for i, c in enumerate(counts):
        h = height * int(c) / peak
        x = pad + i * bw
        parts.append(
            f'<rect x="{x:.1f}" y="{pad + height - h:.1f}" width="{max(bw - 1, 1):.1f}" '
            f'height="{h:.1f}" fill="#0969da"><title>{edges[i]:.3f}-{edges[i + 1]:.3f}s: '
            f"{int(c)}</title></rect>"
        )
    base = pad + height
    parts.append(f'<line x1="{pad}" y1="{base}" x2="{pad + width}" y2="{base}" stroke="#57606a"/>')
    parts.append(f'<text x="{pad}" y="{base + 16}">{edges[0]:.3f}s</text>')
    parts.append(
        f'<text x="{pad + width}" y="{base + 16}" text-anchor="end">{edges[-1]:.3f}s</text>'
    )
    parts.append(f'<text x="{pad}" y="{pad - 8}">max {peak} case(s) per bin</text></svg>')
    return "".join(parts)


def _case_row(row: CaseRow, repetitions: int) -> str:
    failed, errors = row_problems(row)
    status = "error" if errors else "fail" if failed else "pass"
    scores = ", ".join(
        f"{s.scorer}={'error' if s.value is None else f'{s.value:.3g}'}"
        + ("" if s.passed is None else " ✓" if s.passed else " ✗")
        for s in row.scores
    )
    name = f"{row.case_id}#{row.repetition}" if repetitions > 1 else row.case_id
    expected = expected_text(row.expected)
    problems = "; ".join(errors)
    cells = [
        name,
        status,
        scores + (f" — {problems}" if problems else ""),
        f"{row.latency_s:.3f}" if math.isfinite(row.latency_s) else "-",
        row.input,
        expected,
        row.output,
    ]
    classes = ["", f' class="{status}"', "", "", ' class="t"', ' class="t"', ' class="t"']
    tds = "".join(f"<td{k}>{_e(_cut(c))}</td>" for k, c in zip(classes, cells, strict=True))
    return f'<tr data-status="{status}">{tds}</tr>'


def write_html(
    run: RunInfo, rows: Iterable[CaseRow], path: str | Path, *, max_rows: int = 5000
) -> Path:
    """Write the run as one self-contained HTML page (rows iterated once)."""
    s = run.summary
    reps = int(s.get("repetitions") or 1)
    latencies: list[float] = []
    table_rows: list[str] = []
    total = 0
    for row in rows:
        total += 1
        if not row.error and math.isfinite(row.latency_s):
            latencies.append(row.latency_s)
        if len(table_rows) < max_rows:
            table_rows.append(_case_row(row, reps))
    scorers: dict[str, Any] = s.get("scorers") or {}
    dur = run.finished_at - run.started_at if run.finished_at else None
    cost = s.get("cost_usd")
    info = [
        ("Target", run.target),
        ("Run", run.id),
        ("Started", time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(run.started_at))),
        ("Duration", "-" if dur is None else f"{dur:.1f}s"),
        (
            "Cases",
            f"{s.get('cases', '-')} ({s.get('rows', total)} rows, {reps} repetition(s), "
            f"{s.get('target_errors', 0)} target errors)",
        ),
        ("Cost", "-" if cost is None else f"${cost:.4f}"),
        ("Latency", f"p50 {_num(s.get('latency_p50_s'))}s, p95 {_num(s.get('latency_p95_s'))}s"),
    ]
    out: list[str] = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>Eval report: {_e(run.suite)}</title><style>{_CSS}</style></head><body>",
        f'<h1>{_e(run.suite)} <span class="badge {_e(run.status)}">{_e(run.status)}</span></h1>',
        "<dl>" + "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in info) + "</dl>",
    ]
    if s.get("failures"):
        out.append(
            "<h2>Gate failures</h2><ul>"
            + "".join(f'<li class="fail">{_e(r)}</li>' for r in s["failures"])
            + "</ul>"
        )
    out.append(
        "<h2>Scorers</h2><table><thead><tr><th>Scorer</th><th>Type</th><th>Mean</th>"
        "<th>Pass rate</th><th>Scored</th><th>Errors</th><th>Threshold</th><th>OK</th>"
        "<th>Flaky</th></tr></thead><tbody>"
    )
    for label, e in scorers.items():
        ok = '<td class="pass">✓</td>' if e.get("ok") else '<td class="fail">✗</td>'
        out.append(
            f"<tr><td>{_e(label)}</td><td>{_e(e.get('type', ''))}</td>"
            f"<td>{_num(e.get('mean'))}</td><td>{_num(e.get('pass_rate'))}</td>"
            f"<td>{_e(e.get('scored', 0))}</td><td>{_e(e.get('errors', 0))}</td>"
            f"<td>{_e(_threshold(e))}</td>"
            f"{ok}<td>{_e(e.get('flaky_count', 0))}</td></tr>"
        )
    out.append("</tbody></table>")
    out.append(
        '<div class="charts"><div><h2>Aggregate vs threshold</h2>'
        f"{scorer_chart(scorers)}</div><div><h2>Latency</h2>"
        f"{latency_histogram(latencies)}</div></div>"
    )
    out.append(f"<h2>Cases ({total})</h2>")
    if total > len(table_rows):
        out.append(f"<p>Showing the first {len(table_rows)} of {total} rows.</p>")
    out.append(
        '<div id="filters"><input id="q" type="search" placeholder="Filter cases…"> '
        '<select id="st"><option value="">all</option><option value="fail">failing</option>'
        '<option value="error">errored</option><option value="pass">passing</option></select>'
        '</div><table id="cases"><thead><tr><th>Case</th><th>Status</th><th>Scores</th>'
        "<th>Latency (s)</th><th>Input</th><th>Expected</th><th>Output</th></tr></thead><tbody>"
    )
    out.extend(table_rows)
    out.append(f"</tbody></table><script>{_JS}</script></body></html>")
    dest = Path(path)
    dest.write_text("\n".join(out) + "\n", encoding="utf-8")
    return dest
