"""Turn a run's rows into its summary: per-scorer aggregates, the gate verdict, cost, latency.

:func:`summarize` reads the rows once and keeps per scorer a handful of
running sums, the pass/fail flags of the current case only (rows of a case
arrive together, as :meth:`ResultStore.rows` yields them, in (case,
repetition) order) and 8 bytes per row (latencies, for percentiles), so
memory stays flat as suites grow.
The summary it returns is plain JSON (no NaN, no infinity): the runner
stores it with the run and every report reads it back.

Aggregation rules:

* A scorer's ``mean`` is over the values it could score; a :class:`Score`
  with ``error`` set (or a row with no score from that scorer) counts in
  ``errors`` and never enters a mean or a pass rate. When nothing could be
  scored, ``mean`` is None and the scorer fails: "no case could be scored".
* ``pass_rate`` is the share of scored values whose ``passed`` flag is True,
  over the values that carry a flag (None when none does).
* The suite threshold applies to the aggregate
  :func:`bastion.evals.scorers.aggregate_on` names: the pass rate of the
  per-case bar for latency and cost, the mean for everything else (compared
  with ``>=``, or ``<=`` for a scorer where lower is better).
* A scorer without a threshold is ok unless ``errors > max_errors``.
* With ``repetitions > 1`` every (case, repetition) row counts once in the
  aggregates (a case run three times weighs three rows), and ``flaky_cases``
  lists the cases whose pass/fail verdicts differ across repetitions.

The statistics the comparison and the reports use live here too:
:func:`mean_ci` (Wilson or bootstrap interval), :func:`sign_test` (exact
binomial, McNemar's exact test on discordant pairs) and :func:`wilcoxon`
(signed-rank). numpy only; scipy is not a dependency.
"""

from __future__ import annotations

import json
import math
from array import array
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from bastion.evals.ports import CaseRow, RunInfo
from bastion.evals.scorers import aggregate_on, higher_is_better
from bastion.evals.suite import ScorerSpec, Suite
from bastion.evals.types import Score

Aggregate = Literal["mean", "pass_rate"]
FLAKY_LISTED = 50  # flaky case ids kept per scorer (the count is always exact)
BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_MAX_N = 10_000  # above this the normal approximation is as good and far cheaper
Z95 = 1.959963984540054
EXACT_WILCOXON_MAX_N = 50
EXACT_SIGN_MAX_N = 1000


@dataclass(slots=True)
class _Acc:
    """Running totals for one scorer."""

    spec: ScorerSpec
    aggregate: Aggregate
    higher: bool
    index: int
    total: float = 0.0
    scored: int = 0
    errors: int = 0
    flagged: int = 0
    passed: int = 0
    error_examples: list[str] = field(default_factory=list)


def _fmt(v: float) -> str:
    return f"{v:.2f}" if abs(v) >= 0.01 or v == 0 else f"{v:.4g}"


def finite_or_none(v: float | None) -> float | None:
    """``v`` when it is a finite float, else None (summaries never carry NaN)."""
    return float(v) if v is not None and math.isfinite(v) else None


def percentile(values: Sequence[float], q: float) -> float | None:
    """The ``q``-th percentile (linear interpolation), None for no values."""
    if not values:
        return None
    return finite_or_none(float(np.percentile(np.asarray(values, dtype=np.float64), q)))


def summarize(suite: Suite, rows: Iterable[CaseRow]) -> dict[str, Any]:
    """The run summary (JSON-safe) of ``rows`` scored by ``suite``'s scorers; see the module doc."""
    accs = {
        s.label: _Acc(s, aggregate_on(s), higher_is_better(s), i)
        for i, s in enumerate(suite.scorers)
    }
    cases = _Cases(len(accs))
    latencies = array("d")
    n_rows = target_errors = unknown_cost = 0
    cost = 0.0
    for row in rows:
        n_rows += 1
        flags = 0
        if row.error:
            target_errors += 1
        elif math.isfinite(row.latency_s):
            latencies.append(float(row.latency_s))
        if row.cost_usd is None or not math.isfinite(row.cost_usd):
            unknown_cost += 1
        else:
            cost += row.cost_usd
        seen: set[str] = set()
        for score in row.scores:
            acc = accs.get(score.scorer)
            if acc is None or score.scorer in seen:
                continue
            seen.add(score.scorer)
            if score.error is not None or score.value is None:
                acc.errors += 1
                if len(acc.error_examples) < 3:
                    acc.error_examples.append(f"{row.case_id}: {score.error}")
                continue
            acc.scored += 1
            acc.total += score.value
            if score.passed is not None:
                acc.flagged += 1
                acc.passed += int(score.passed)
                flags |= 1 << (2 * acc.index + (0 if score.passed else 1))
        for label, acc in accs.items():
            if label not in seen:  # no score at all from this scorer: unscorable
                acc.errors += 1
                if len(acc.error_examples) < 3:
                    acc.error_examples.append(f"{row.case_id}: no score recorded")
        cases.add(row.case_id, flags)
    cases.close()

    scorers: dict[str, Any] = {}
    failures: list[str] = []
    for label, acc in accs.items():
        entry = _scorer_summary(acc, cases, suite.repetitions)
        scorers[label] = entry
        if not entry["ok"]:
            failures.extend(f"{label}: {r}" for r in entry["reasons"])
        del entry["reasons"]
    return {
        "cases": cases.count,
        "rows": n_rows,
        "repetitions": suite.repetitions,
        "target_errors": target_errors,
        "cost_usd": finite_or_none(cost),
        "cost_unknown_rows": unknown_cost,
        "latency_p50_s": percentile(latencies, 50),
        "latency_p95_s": percentile(latencies, 95),
        "scorers": scorers,
        "passed": not failures,
        "failures": failures,
    }


class _Cases:
    """Per-scorer case counts, streamed over rows grouped by case.

    Only the current case's flags are held (bit ``2i``: scorer ``i`` passed
    a repetition, bit ``2i+1``: it failed one); a case is folded into the
    counts when the next one starts.
    """

    def __init__(self, scorers: int) -> None:
        self.count = 0
        self.passed = [0] * scorers
        self.flaky_count = [0] * scorers
        self.flaky: list[list[str]] = [[] for _ in range(scorers)]
        self._current: str | None = None
        self._flags = 0

    def add(self, case_id: str, flags: int) -> None:
        if case_id != self._current:
            self.close()
            self._current = case_id
            self.count += 1
        self._flags |= flags

    def close(self) -> None:
        """Fold the current case in (call once more after the last row)."""
        if self._current is None:
            return
        for i in range(len(self.passed)):
            passed, failed = self._flags >> (2 * i) & 1, self._flags >> (2 * i + 1) & 1
            if passed and not failed:
                self.passed[i] += 1
            elif passed and failed:
                self.flaky_count[i] += 1
                if len(self.flaky[i]) < FLAKY_LISTED:
                    self.flaky[i].append(self._current)
        self._current = None
        self._flags = 0


def _scorer_summary(acc: _Acc, cases: _Cases, repetitions: int) -> dict[str, Any]:
    spec = acc.spec
    mean = finite_or_none(acc.total / acc.scored) if acc.scored else None
    pass_rate = acc.passed / acc.flagged if acc.flagged else None
    passed_cases = cases.passed[acc.index]
    flaky_count = cases.flaky_count[acc.index]
    flaky = cases.flaky[acc.index]
    reasons: list[str] = []
    metric = pass_rate if acc.aggregate == "pass_rate" else mean
    # a pass rate is always "higher is better"; a mean follows the scorer's direction
    higher = True if acc.aggregate == "pass_rate" else acc.higher
    what = "pass rate" if acc.aggregate == "pass_rate" else "mean"
    if acc.scored == 0:
        reasons.append("no case could be scored")
    elif spec.threshold is not None:
        if metric is None:
            reasons.append(
                f"no case has a pass/fail verdict to compare with threshold {_fmt(spec.threshold)}"
            )
        elif higher and metric < spec.threshold:
            reasons.append(f"{what} {_fmt(metric)} < threshold {_fmt(spec.threshold)}")
        elif not higher and metric > spec.threshold:
            reasons.append(f"{what} {_fmt(metric)} > threshold {_fmt(spec.threshold)}")
    if acc.errors > spec.max_errors:
        noun = "scoring error" if acc.errors == 1 else "scoring errors"
        reasons.append(f"{acc.errors} {noun} > max_errors {spec.max_errors}")
    return {
        "type": spec.type,
        "aggregate": acc.aggregate,
        "higher_is_better": higher,
        "mean": mean,
        "pass_rate": pass_rate,
        "scored": acc.scored,
        "errors": acc.errors,
        "error_examples": acc.error_examples,
        "passed_cases": passed_cases,
        "threshold": finite_or_none(spec.threshold),
        "max_errors": spec.max_errors,
        "flaky_count": flaky_count if repetitions > 1 else 0,
        "flaky_cases": sorted(flaky) if repetitions > 1 else [],
        "ok": not reasons,
        "reason": "; ".join(reasons) or None,
        "reasons": reasons,
    }


def row_problems(row: CaseRow) -> tuple[list[Score], list[str]]:
    """A row's failed scores (``passed`` False) and its errors (target's, then scorers')."""
    failed = [s for s in row.scores if s.error is None and s.passed is False]
    errors = [f"target: {row.error}"] if row.error else []
    errors += [f"{s.scorer}: {s.error}" for s in row.scores if s.error is not None]
    return failed, errors


def expected_text(v: Any) -> str:
    """A case's expected answer as display text (JSON for non-strings, "" for None)."""
    if v is None:
        return ""
    return v if isinstance(v, str) else json.dumps(v, ensure_ascii=False, default=str)


def metric_of(entry: dict[str, Any]) -> float | None:
    """The value a scorer summary's threshold applies to (its ``aggregate``)."""
    v = entry.get("pass_rate") if entry.get("aggregate") == "pass_rate" else entry.get("mean")
    return float(v) if isinstance(v, int | float) else None


def suite_of(run: RunInfo) -> Suite | None:
    """The suite a run was made with (from ``run.config``), or None when it cannot be read."""
    if not run.config:
        return None
    try:
        return Suite.model_validate(run.config)
    except ValueError:
        return None


def mean_ci(
    values: Sequence[float], *, confidence: float = 0.95, seed: int = 0
) -> tuple[float, float, float]:
    """``(mean, low, high)``: a 95% interval for the mean of ``values``.

    Values that are all 0 or 1 are pass/fail verdicts and get the Wilson score
    interval; others a percentile bootstrap (2,000 resamples, fixed seed so
    reports are reproducible), or the normal approximation above 10,000
    values. Raises ValueError for no values.
    """
    arr = np.asarray(values, dtype=np.float64)
    n = arr.size
    if n == 0:
        raise ValueError("mean_ci needs at least one value")
    if not np.all(np.isfinite(arr)):
        raise ValueError("mean_ci needs finite values")
    mean = float(arr.mean())
    z = Z95 if confidence == 0.95 else _z(confidence)
    if np.all((arr == 0.0) | (arr == 1.0)):
        lo, hi = wilson(int(arr.sum()), n, z=z)
        return mean, lo, hi
    if n == 1 or float(arr.min()) == float(arr.max()):
        return mean, mean, mean
    if n > BOOTSTRAP_MAX_N:
        half = z * float(arr.std(ddof=1)) / math.sqrt(n)
        return mean, mean - half, mean + half
    rng = np.random.default_rng(seed)
    chunk = max(1, 2_000_000 // n)
    means: list[np.ndarray[Any, np.dtype[np.float64]]] = []
    left = BOOTSTRAP_RESAMPLES
    while left > 0:
        b = min(chunk, left)
        means.append(arr[rng.integers(0, n, size=(b, n))].mean(axis=1))
        left -= b
    boot = np.concatenate(means)
    alpha = (1 - confidence) / 2
    lo, hi = np.quantile(boot, [alpha, 1 - alpha])
    return mean, min(float(lo), mean), max(float(hi), mean)


def wilson(successes: int, n: int, *, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval for a proportion ``successes / n``."""
    if n <= 0:
        raise ValueError("wilson needs n > 0")
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def _z(confidence: float) -> float:
    """The two-sided normal quantile for ``confidence`` (bisection on erf)."""
    if not 0 < confidence < 1:
        raise ValueError("confidence must be in (0, 1)")
    target = 1 - (1 - confidence) / 2
    lo, hi = 0.0, 10.0
    for _ in range(80):
        mid = (lo + hi) / 2
        if 0.5 * (1 + math.erf(mid / math.sqrt(2))) < target:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def sign_test(positive: int, negative: int) -> float:
    """Two-sided exact sign test (binomial, p = 1/2) on the non-tied pairs.

    With pass/fail pairs this is McNemar's exact test: ``positive`` and
    ``negative`` are the two kinds of discordant pairs. 1.0 for no pairs.
    Integer arithmetic up to 1,000 pairs, the same sum in log space beyond.
    """
    n = positive + negative
    if n == 0:
        return 1.0
    k = min(positive, negative)
    if n <= EXACT_SIGN_MAX_N:  # exact integer arithmetic
        tail = sum(math.comb(n, i) for i in range(k + 1))
        return min(1.0, 2 * tail / (1 << n))
    # the same sum in log space: log C(n, i+1) = log C(n, i) + log(n - i) - log(i + 1)
    i = np.arange(k, dtype=np.float64)
    logs = np.concatenate(([0.0], np.cumsum(np.log(n - i) - np.log(i + 1)))) - n * math.log(2)
    top = float(logs.max())
    return min(1.0, 2 * math.exp(top) * float(np.exp(logs - top).sum()))


def wilcoxon(diffs: Iterable[float]) -> float:
    """Two-sided Wilcoxon signed-rank p-value of paired differences (zeros dropped)."""
    d = [x for x in (round(v, 12) for v in diffs) if x != 0]
    n = len(d)
    if n == 0:
        return 1.0
    order = sorted(range(n), key=lambda i: abs(d[i]))
    ranks2 = [0] * n  # doubled average ranks: integers even with ties
    ties: list[int] = []
    i = 0
    while i < n:
        j = i
        while j + 1 < n and abs(d[order[j + 1]]) == abs(d[order[i]]):
            j += 1
        for k in range(i, j + 1):
            ranks2[order[k]] = i + j + 2  # 2 * mean of ranks i+1 .. j+1
        ties.append(j - i + 1)
        i = j + 1
    w2 = sum(r for r, x in zip(ranks2, d, strict=True) if x > 0)
    if n <= EXACT_WILCOXON_MAX_N:
        counts = [0] * (sum(ranks2) + 1)  # counts[s]: sign assignments with doubled W+ = s
        counts[0] = 1
        for r in ranks2:
            for s in range(len(counts) - 1, r - 1, -1):
                counts[s] += counts[s - r]
        total = 1 << n
        low = sum(counts[: w2 + 1]) / total
        high = sum(counts[w2:]) / total
        return min(1.0, 2 * min(low, high))
    mu = n * (n + 1) / 4
    var = n * (n + 1) * (2 * n + 1) / 24 - sum(t**3 - t for t in ties) / 48
    if var <= 0:
        return 1.0
    dev = w2 / 2 - mu
    z = (abs(dev) - 0.5) / math.sqrt(var) if abs(dev) >= 0.5 else 0.0
    return min(1.0, math.erfc(z / math.sqrt(2)))
