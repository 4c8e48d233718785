"""Compare two stored runs: per-scorer deltas, a paired significance test, per-case changes.

``a`` is the baseline and ``b`` the candidate. For each scorer both runs
have, the compared figure is the one its threshold applies to (the mean, or
the pass rate of the per-case bar for latency and cost), taken over all of
each run's rows. It is a **regression** when the candidate is worse than the
baseline by more than ``tolerance`` (worse respects the scorer's direction).
That alone decides the CI gate; the paired test only qualifies it.

The test pairs the cases scored in both runs (a case's figure is its mean
over repetitions): pass/fail figures (every paired value 0 or 1) get the
exact sign test on the discordant pairs (McNemar's exact test); other values
the Wilcoxon signed-rank test (exact up to 50 non-zero differences, normal
approximation with tie correction beyond). A regression found on fewer than
30 paired cases, or with p >= 0.05, carries the note "too few cases to call
a difference": it still fails the gate, the note says how sure to be.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from rich.console import Console
from rich.table import Table
from rich.text import Text

from bastion.core.errors import NotFound
from bastion.evals.aggregate import Aggregate, mean_ci, sign_test, suite_of, wilcoxon
from bastion.evals.ports import CaseRow, ResultStore, RunInfo
from bastion.evals.report import md_cell, md_code
from bastion.evals.scorers import aggregate_on, higher_is_better
from bastion.evals.suite import ScorerSpec, Suite

MIN_CASES = 30
ALPHA = 0.05
_EPS = 1e-12
_RUNS = ("baseline", "candidate")

ChangeKind = Literal["regression", "fix", "changed"]


@dataclass(frozen=True, slots=True)
class ScorerDelta:
    """One scorer, baseline against candidate. ``delta`` is candidate minus baseline."""

    scorer: str
    metric: Aggregate
    higher_is_better: bool
    baseline: float | None
    candidate: float | None
    delta: float | None
    baseline_ci: tuple[float, float] | None
    candidate_ci: tuple[float, float] | None
    paired_n: int  # cases scored in both runs
    better: int  # paired cases where the candidate is better
    worse: int  # ... and where it is worse
    test: str  # "sign" | "wilcoxon" | "none"
    p_value: float | None
    regression: bool
    note: str | None = None


@dataclass(frozen=True, slots=True)
class CaseChange:
    """A case whose verdict (or value) for one scorer differs between the runs."""

    case_id: str
    scorer: str
    kind: ChangeKind
    before: str
    after: str


@dataclass(frozen=True, slots=True)
class Comparison:
    baseline: RunInfo
    candidate: RunInfo
    tolerance: float
    scorers: list[ScorerDelta]
    changes: list[CaseChange]  # regressions first, then fixes, then value changes
    only_baseline: list[str] = field(default_factory=list)  # case ids
    only_candidate: list[str] = field(default_factory=list)
    scorers_only_baseline: list[str] = field(default_factory=list)
    scorers_only_candidate: list[str] = field(default_factory=list)

    @property
    def regressions(self) -> list[ScorerDelta]:
        return [d for d in self.scorers if d.regression]

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form: run ids instead of runs, dataclasses as dicts."""
        out = {k: getattr(self, k) for k in self.__dataclass_fields__ if k not in _RUNS}
        out.update(baseline=self.baseline.id, candidate=self.candidate.id)
        out.update(
            scorers=[asdict(d) for d in self.scorers], changes=[asdict(c) for c in self.changes]
        )
        return {**out, "regressions": [d.scorer for d in self.regressions]}


# ---------------------------------------------------------------- collection


@dataclass(slots=True)
class _Cell:
    """One scorer on one case of one run, over its repetitions."""

    value_sum: float = 0.0
    value_n: int = 0
    pass_sum: int = 0
    pass_n: int = 0
    errors: int = 0

    def figure(self, metric: Aggregate) -> float | None:
        if metric == "pass_rate":
            return self.pass_sum / self.pass_n if self.pass_n else None
        return self.value_sum / self.value_n if self.value_n else None


def _collect(rows: Iterable[CaseRow]) -> tuple[dict[str, dict[str, _Cell]], set[str]]:
    """Per scorer label, per case id: the run's cells; and the run's case ids."""
    cells: dict[str, dict[str, _Cell]] = {}
    cases: set[str] = set()
    for row in rows:
        cases.add(row.case_id)
        for score in row.scores:
            cell = cells.setdefault(score.scorer, {}).setdefault(row.case_id, _Cell())
            if score.error is not None or score.value is None:
                cell.errors += 1
                continue
            cell.value_sum += score.value
            cell.value_n += 1
            if score.passed is not None:
                cell.pass_sum += int(score.passed)
                cell.pass_n += 1
    return cells, cases


def _spec(label: str, suites: list[Suite]) -> ScorerSpec | None:
    """The scorer's spec from the runs' suites (candidate first), or one guessed from its label."""
    for suite in suites:
        for s in suite.scorers:
            if s.label == label:
                return s
    try:  # no suite on record: a label that is a plain scorer type still says what it is
        return ScorerSpec.model_validate({"type": label})
    except ValueError:
        return None


def _metric(spec: ScorerSpec | None, by_case: Iterable[_Cell]) -> Aggregate:
    metric: Aggregate = aggregate_on(spec) if spec is not None else "mean"
    if metric == "pass_rate" and not any(c.pass_n for c in by_case):
        return "mean"  # no per-case bar on record: compare the values themselves
    return metric


def _status(cell: _Cell, reps: bool, values: bool = False) -> str:
    """How a case stood for one scorer: its verdict, or its mean value with ``values``."""
    if cell.pass_n and not values:
        if not reps and cell.pass_n == 1 and not cell.errors:
            return "passed" if cell.pass_sum else "failed"
        return f"{cell.pass_sum}/{cell.pass_n} passed"
    if cell.value_n:
        return f"{cell.value_sum / cell.value_n:.3g}"
    return "error"


# ---------------------------------------------------------------- comparison


def compare_runs(store: ResultStore, a: str, b: str, *, tolerance: float = 0.0) -> Comparison:
    """Compare run ``a`` (baseline) with run ``b`` (candidate); see the module doc.

    Ids are resolved by :meth:`ResultStore.get_run` (full id, unique prefix or
    ``SUITE@latest``); raises :class:`NotFound` when either is missing.
    """
    if tolerance < 0 or not math.isfinite(tolerance):
        raise ValueError("tolerance must be a finite number >= 0")
    runs: list[RunInfo] = []
    for ref in (a, b):
        run = store.get_run(ref)
        if run is None:
            raise NotFound(f"no eval run {ref!r}")
        runs.append(run)
    base, cand = runs
    base_cells, base_cases = _collect(store.rows(base.id))
    cand_cells, cand_cases = _collect(store.rows(cand.id))
    suites = [s for r in (cand, base) if (s := suite_of(r)) is not None]
    reps = any(s.repetitions > 1 for s in suites)
    deltas: list[ScorerDelta] = []
    changes: list[CaseChange] = []
    order = [sc.label for s in suites for sc in s.scorers] + list(cand_cells)
    for label in dict.fromkeys(x for x in order if x in cand_cells and x in base_cells):
        spec = _spec(label, suites)
        bc, cc = base_cells[label], cand_cells[label]
        metric = _metric(spec, [*bc.values(), *cc.values()])
        higher = True if metric == "pass_rate" else (higher_is_better(spec) if spec else True)
        deltas.append(_delta(label, metric, higher, bc, cc, tolerance))
        changes.extend(_changes(label, bc, cc, reps))
    rank = {"regression": 0, "fix": 1, "changed": 2}
    changes.sort(key=lambda c: (rank[c.kind], c.case_id, c.scorer))
    return Comparison(
        baseline=base,
        candidate=cand,
        tolerance=tolerance,
        scorers=deltas,
        changes=changes,
        only_baseline=sorted(base_cases - cand_cases),
        only_candidate=sorted(cand_cases - base_cases),
        scorers_only_baseline=sorted(set(base_cells) - set(cand_cells)),
        scorers_only_candidate=sorted(set(cand_cells) - set(base_cells)),
    )


def _overall(cells: dict[str, _Cell], metric: Aggregate) -> float | None:
    """The run-level figure over all rows (every repetition weighs one row)."""
    if metric == "pass_rate":
        num = float(sum(c.pass_sum for c in cells.values()))
        den = sum(c.pass_n for c in cells.values())
    else:
        num = sum(c.value_sum for c in cells.values())
        den = sum(c.value_n for c in cells.values())
    return num / den if den else None


def _ci(cells: dict[str, _Cell], metric: Aggregate) -> tuple[float, float] | None:
    """An interval for the run-level figure: Wilson for pass rates, else bootstrap over cases."""
    if metric == "pass_rate":
        den = sum(c.pass_n for c in cells.values())
        if not den:
            return None
        vals = [1.0] * sum(c.pass_sum for c in cells.values())
        vals += [0.0] * (den - len(vals))
    else:
        vals = [f for c in cells.values() if (f := c.figure(metric)) is not None]
    if not vals:
        return None
    _, lo, hi = mean_ci(vals)
    return (lo, hi)


def _delta(
    label: str,
    metric: Aggregate,
    higher: bool,
    bc: dict[str, _Cell],
    cc: dict[str, _Cell],
    tolerance: float,
) -> ScorerDelta:
    base_v = _overall(bc, metric)
    cand_v = _overall(cc, metric)
    pairs = [
        (fb, fc)
        for case_id in bc.keys() & cc.keys()
        if (fb := bc[case_id].figure(metric)) is not None
        and (fc := cc[case_id].figure(metric)) is not None
    ]
    diffs = [(fc - fb) if higher else (fb - fc) for fb, fc in pairs]  # > 0: candidate better
    better = sum(1 for x in diffs if x > _EPS)
    worse = sum(1 for x in diffs if x < -_EPS)
    binary = all(v in (0.0, 1.0) for p in pairs for v in p)
    test = "none" if not pairs else ("sign" if binary else "wilcoxon")
    p = None if not pairs else (sign_test(better, worse) if binary else wilcoxon(diffs))
    delta = cand_v - base_v if base_v is not None and cand_v is not None else None
    regression = False
    note = None
    if base_v is not None and cand_v is None:
        regression, note = True, "the candidate could not score any case"
    elif delta is not None:
        worse_by = -delta if higher else delta
        regression = worse_by > tolerance + _EPS
    if regression and note is None and (len(pairs) < MIN_CASES or p is None or p >= ALPHA):
        p_txt = "n/a" if p is None else f"{p:.3g}"
        note = f"too few cases to call a difference (n={len(pairs)}, p={p_txt})"
    return ScorerDelta(
        scorer=label,
        metric=metric,
        higher_is_better=higher,
        baseline=base_v,
        candidate=cand_v,
        delta=delta,
        baseline_ci=_ci(bc, metric),
        candidate_ci=_ci(cc, metric),
        paired_n=len(pairs),
        better=better,
        worse=worse,
        test=test,
        p_value=p,
        regression=regression,
        note=note,
    )


def _changes(
    label: str, bc: dict[str, _Cell], cc: dict[str, _Cell], reps: bool
) -> list[CaseChange]:
    out: list[CaseChange] = []
    for case_id in bc.keys() & cc.keys():
        b, c = bc[case_id], cc[case_id]
        kind: ChangeKind | None = None
        pb = b.pass_sum / b.pass_n if b.pass_n else None
        pc = c.pass_sum / c.pass_n if c.pass_n else None
        if pb is not None and pc is not None and abs(pb - pc) > _EPS:
            kind = "regression" if pc < pb else "fix"
        elif b.value_n and not c.value_n:
            kind = "regression"  # newly unscorable
        elif c.value_n and not b.value_n:
            kind = "fix"
        elif b.value_n and c.value_n:
            vb, vc = b.value_sum / b.value_n, c.value_sum / c.value_n
            if abs(vb - vc) > 1e-9:
                kind = "changed"
        if kind is not None:
            values = kind == "changed"
            out.append(
                CaseChange(case_id, label, kind, _status(b, reps, values), _status(c, reps, values))
            )
    return out


# ---------------------------------------------------------------- rendering

_HEAD = ("Scorer", "Metric", "Baseline [95% CI]", "Candidate [95% CI]", "Δ", "Paired n", "Test",
         "p", "Verdict")  # fmt: skip


def _num(v: float | None, ci: tuple[float, float] | None = None) -> str:
    return ("-" if v is None else f"{v:.3f}") + (
        "" if ci is None else f" [{ci[0]:.3f}, {ci[1]:.3f}]"
    )


def _row(d: ScorerDelta) -> list[str]:
    gain = None if d.delta is None else (d.delta if d.higher_is_better else -d.delta)
    verdict = "REGRESSION" if d.regression else "improved" if (gain or 0) > _EPS else "ok"
    p = "-" if d.p_value is None else f"{d.p_value:.3g}"
    delta = "-" if d.delta is None else f"{d.delta:+.3f}"
    base, cand = _num(d.baseline, d.baseline_ci), _num(d.candidate, d.candidate_ci)
    return [d.scorer, d.metric.replace("_", " "), base, cand, delta, str(d.paired_n), d.test, p,
            verdict]  # fmt: skip


def _notes(cmp: Comparison, limit: int) -> list[str]:
    """Plain-text lines: each regression with its note, one-sided cases and scorers, verdict."""
    out = [f"regression: {d.scorer} {_num(d.baseline)} -> {_num(d.candidate)}"
           + (f" ({d.note})" if d.note else "") for d in cmp.regressions]  # fmt: skip
    for what, ids, noun in (("baseline", cmp.only_baseline, "case(s)"),
                            ("candidate", cmp.only_candidate, "case(s)"),
                            ("baseline", cmp.scorers_only_baseline, "scorer(s)"),
                            ("candidate", cmp.scorers_only_candidate, "scorer(s)")):  # fmt: skip
        if ids:
            more = " ..." if len(ids) > limit else ""
            out.append(f"{len(ids)} {noun} only in the {what}: {', '.join(ids[:limit])}{more}")
    n = len(cmp.regressions)
    out.append(f"{n} regression(s) beyond tolerance" if n else "no regression beyond tolerance")
    return out


def render_comparison(cmp: Comparison, console: Console, *, max_changes: int = 20) -> None:
    """Print a comparison: the per-scorer table, changed cases, regressions with notes."""
    b, c = cmp.baseline, cmp.candidate
    console.print(Text.assemble(
        ("Baseline  ", "bold"), f"{b.id}  {b.suite} -> {b.target}\n",
        ("Candidate ", "bold"), f"{c.id}  {c.suite} -> {c.target}\n",
        ("Tolerance ", "bold"), f"{cmp.tolerance:g}",
    ))  # fmt: skip
    table = Table(*_HEAD, title="Scorers")
    style = {"REGRESSION": "bold red", "improved": "green", "ok": ""}
    for d in cmp.scorers:
        cells = _row(d)
        table.add_row(*map(Text, cells[:-1]), Text(cells[-1], style=style[cells[-1]]))
    console.print(table)
    if cmp.changes:
        ch = Table("Case", "Scorer", "Change", "Before", "After", title="Changed cases")
        for x in cmp.changes[:max_changes]:
            ch.add_row(*map(Text, (x.case_id, x.scorer, x.kind, x.before, x.after)))
        console.print(ch)
        if len(cmp.changes) > max_changes:
            console.print(f"... and {len(cmp.changes) - max_changes} more changed cases")
    *lines, verdict = _notes(cmp, 10)
    for line in lines:
        console.print(Text(line, style="red" if line.startswith("regression") else ""))
    console.print(Text(verdict, style="bold red" if cmp.regressions else "bold green"))


def comparison_markdown(cmp: Comparison, *, max_changes: int = 50) -> str:
    """The comparison as a Markdown document (a PR comment, a CI job summary)."""
    b, c = cmp.baseline, cmp.candidate
    lines = [
        f"## Eval comparison: {md_cell(c.suite)}",
        "",
        f"- Baseline: `{md_code(b.id)}` ({md_cell(b.target)})",
        f"- Candidate: `{md_code(c.id)}` ({md_cell(c.target)})",
        f"- Tolerance: {cmp.tolerance:g}",
        "",
        "| " + " | ".join(_HEAD) + " |",
        "|" + "---|" * len(_HEAD),
    ]
    for d in cmp.scorers:
        cells = [md_cell(x) for x in _row(d)]
        cells[-1] = "**REGRESSION**" if d.regression else cells[-1]
        lines.append("| " + " | ".join(cells) + " |")
    if cmp.changes:
        lines += ["", "### Changed cases", "", "| Case | Scorer | Change | Before | After |",
                  "|---|---|---|---|---|"]  # fmt: skip
        for x in cmp.changes[:max_changes]:
            cells = [md_cell(v) for v in (x.case_id, x.scorer, x.kind, x.before, x.after)]
            lines.append("| " + " | ".join(cells) + " |")
        if len(cmp.changes) > max_changes:
            lines += ["", f"... and {len(cmp.changes) - max_changes} more."]
    lines += ["", *(f"- {md_cell(x)}" for x in _notes(cmp, max_changes))]
    return "\n".join(lines) + "\n"
