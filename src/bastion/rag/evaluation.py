"""Offline retrieval evaluation over BEIR-format test collections.

A BEIR folder holds ``corpus.jsonl`` (``{"_id", "title", "text"}``),
``queries.jsonl`` (``{"_id", "text"}``) and ``qrels/<split>.tsv``
(``query-id<TAB>corpus-id<TAB>score`` with a header line). :func:`load_beir`
reads one into a :class:`BeirDataset`; :func:`evaluate` scores a run (query id
to doc ids, best first) against the qrels; :func:`evaluate_retriever` runs a
search callable over every query and scores it; :func:`paired_bootstrap`
compares two systems' per-query scores.

The metrics follow trec_eval (and so pytrec_eval, ir-measures and BEIR):

* ``ndcg@k`` is trec_eval's ``ndcg_cut.k``: gain is the grade itself
  (linear), the discount is ``1 / log2(rank + 1)``, and the ideal DCG ranks
  every judged doc with a grade > 0, best grade first, cut at ``k``.
* ``recall@k``, ``precision@k`` (always divided by ``k``), ``mrr@k`` and
  ``map@k`` (trec_eval's ``map_cut.k``: divided by the number of relevant docs,
  not by ``min(k, R)``) are binary: a grade > 0 is relevant.

Identical query and doc ids are **never** dropped (BEIR's evaluator does so by
default, which silently removes a relevant pair on collections such as
Cranfield). A ranking keeps the first occurrence of a repeated doc id.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

Ranking = Sequence[str]
"""Doc ids, best first. A repeated id counts at its first position only."""

METRICS: tuple[str, ...] = ("ndcg", "recall", "mrr", "map", "precision")
"""The metric names :func:`evaluate` knows; each is reported as ``name@k``."""


class BeirFormatError(ValueError):
    """A BEIR file is malformed; the message names the file and the line."""

    def __init__(self, path: Path, line: int | None, problem: str) -> None:
        where = f"{path}:{line}" if line is not None else str(path)
        super().__init__(f"{where}: {problem}")
        self.path = path
        self.line = line
        self.problem = problem


@dataclass(slots=True)
class BeirDataset:
    """One split of a BEIR test collection.

    ``queries`` holds only the queries that have at least one judgment with a
    grade > 0 in the split, and ``qrels`` only those judgments. A judged doc id
    missing from the corpus is kept (it counts as relevant but unreachable,
    as in trec_eval).
    """

    name: str
    corpus: dict[str, tuple[str, str]]
    queries: dict[str, str]
    qrels: dict[str, dict[str, int]]

    @property
    def judgments(self) -> int:
        """The number of (query, doc) pairs with a grade > 0."""
        return sum(len(docs) for docs in self.qrels.values())


def _json_lines(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(line number, object)`` for each non-blank line of a JSONL file."""
    with path.open(encoding="utf-8-sig") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError as exc:
                raise BeirFormatError(path, number, f"invalid JSON ({exc.msg})") from None
            if not isinstance(value, dict):
                raise BeirFormatError(path, number, "expected a JSON object")
            yield number, value


def _records(path: Path, fields: tuple[str, ...]) -> dict[str, tuple[str, ...]]:
    """Read a JSONL file into ``_id -> (field, ...)``; an absent or null field reads as empty."""
    records: dict[str, tuple[str, ...]] = {}
    for line, record in _json_lines(path):
        raw = record.get("_id")
        if isinstance(raw, bool) or not isinstance(raw, str | int) or str(raw) == "":
            raise BeirFormatError(path, line, 'missing or invalid "_id"')
        if str(raw) in records:
            raise BeirFormatError(path, line, f"repeated id {str(raw)!r}")
        values = tuple("" if record.get(key) is None else record[key] for key in fields)
        if not all(isinstance(value, str) for value in values):
            raise BeirFormatError(path, line, f"fields {list(fields)} must be strings")
        records[str(raw)] = values
    return records


def _parse_grade(raw: str) -> int | None:
    """An integer grade, also from an integral float such as ``"1.0"``; None if not one."""
    try:
        number = float(raw)
    except ValueError:
        return None
    return int(number) if number.is_integer() else None


def _load_qrels(path: Path) -> dict[str, dict[str, int]]:
    """Read a qrels TSV: an optional header line, then ``query-id, corpus-id, score`` rows."""
    graded: dict[str, dict[str, int]] = {}
    first = True
    with path.open(encoding="utf-8-sig") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            fields = line.rstrip("\r\n").split("\t")
            if len(fields) != 3:
                fields = line.split()
            is_first, first = first, False
            if len(fields) == 3 and is_first and _parse_grade(fields[2].strip()) is None:
                continue  # the header line ("query-id  corpus-id  score")
            if len(fields) != 3:
                raise BeirFormatError(path, number, "expected query-id, corpus-id, score")
            query_id, doc_id, score = (f.strip() for f in fields)
            grade = _parse_grade(score)
            if not query_id or not doc_id or grade is None:
                raise BeirFormatError(path, number, f"invalid row {line.strip()!r}")
            judged = graded.setdefault(query_id, {})
            if judged.get(doc_id, grade) != grade:
                raise BeirFormatError(path, number, f"conflicting grade for ({query_id}, {doc_id})")
            judged[doc_id] = grade
    return {
        query_id: {doc: g for doc, g in docs.items() if g > 0}
        for query_id, docs in graded.items()
        if any(g > 0 for g in docs.values())
    }


def load_beir(folder: str | Path, split: str = "test") -> BeirDataset:
    """Load one split of a BEIR-format folder.

    Raises :class:`FileNotFoundError` for a missing file and
    :class:`BeirFormatError` (a :class:`ValueError`) for a malformed line, a
    repeated id, or a qrels query absent from ``queries.jsonl``.
    """
    root = Path(folder)
    corpus_path, queries_path = root / "corpus.jsonl", root / "queries.jsonl"
    qrels_path = root / "qrels" / f"{split}.tsv"
    for path in (corpus_path, queries_path, qrels_path):
        if not path.is_file():
            raise FileNotFoundError(f"BEIR folder {root}: missing {path.relative_to(root)}")

    corpus = {doc: (f[0], f[1]) for doc, f in _records(corpus_path, ("title", "text")).items()}
    all_queries = {query: text for query, (text,) in _records(queries_path, ("text",)).items()}
    qrels = _load_qrels(qrels_path)
    missing = [q for q in qrels if q not in all_queries]
    if missing:
        raise BeirFormatError(
            qrels_path, None, f"{len(missing)} judged queries not in queries.jsonl: {missing[:5]}"
        )
    queries = {q: text for q, text in all_queries.items() if q in qrels}
    return BeirDataset(name=root.name, corpus=corpus, queries=queries, qrels=qrels)


def _check_k(k: int) -> None:
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")


def _top(ranking: Ranking, k: int | None) -> list[str]:
    """The first ``k`` distinct doc ids of a ranking (all of them for ``k=None``)."""
    if isinstance(ranking, str):
        raise TypeError("a ranking is a sequence of doc ids, not a string")
    seen: set[str] = set()
    top: list[str] = []
    for doc_id in ranking:
        if doc_id not in seen:
            seen.add(doc_id)
            top.append(doc_id)
            if k is not None and len(top) >= k:
                break
    return top


def _relevant(qrel: Mapping[str, int]) -> int:
    return sum(1 for grade in qrel.values() if grade > 0)


def _dcg(gains: Sequence[float]) -> float:
    return sum(gain / math.log2(rank + 1) for rank, gain in enumerate(gains, start=1) if gain)


def ndcg_at_k(ranking: Ranking, qrel: Mapping[str, int], k: int) -> float:
    """Graded nDCG@k with linear gain (trec_eval ``ndcg_cut``); 0 when nothing is relevant."""
    _check_k(k)
    ideal = _dcg(sorted((g for g in qrel.values() if g > 0), reverse=True)[:k])
    if ideal == 0:
        return 0.0
    return _dcg([max(qrel.get(d, 0), 0) for d in _top(ranking, k)]) / ideal


def recall_at_k(ranking: Ranking, qrel: Mapping[str, int], k: int) -> float:
    """The share of relevant docs found in the top ``k``."""
    _check_k(k)
    total = _relevant(qrel)
    if total == 0:
        return 0.0
    return sum(1 for d in _top(ranking, k) if qrel.get(d, 0) > 0) / total


def precision_at_k(ranking: Ranking, qrel: Mapping[str, int], k: int) -> float:
    """Relevant docs in the top ``k`` divided by ``k`` (also when fewer were ranked)."""
    _check_k(k)
    return sum(1 for d in _top(ranking, k) if qrel.get(d, 0) > 0) / k


def mrr_at_k(ranking: Ranking, qrel: Mapping[str, int], k: int) -> float:
    """The reciprocal rank of the first relevant doc within ``k``; 0 if none."""
    _check_k(k)
    for rank, doc_id in enumerate(_top(ranking, k), start=1):
        if qrel.get(doc_id, 0) > 0:
            return 1.0 / rank
    return 0.0


def average_precision(ranking: Ranking, qrel: Mapping[str, int], k: int | None = None) -> float:
    """Average precision over the top ``k`` (all ranks for None), divided by all relevant docs.

    This is trec_eval's ``map_cut.k`` per query (``map`` for ``k=None``).
    """
    if k is not None:
        _check_k(k)
    total = _relevant(qrel)
    if total == 0:
        return 0.0
    hits = 0
    summed = 0.0
    for rank, doc_id in enumerate(_top(ranking, k), start=1):
        if qrel.get(doc_id, 0) > 0:
            hits += 1
            summed += hits / rank
    return summed / total


_METRIC_FUNCTIONS: dict[str, Callable[[Ranking, Mapping[str, int], int], float]] = {
    "ndcg": ndcg_at_k,
    "recall": recall_at_k,
    "mrr": mrr_at_k,
    "map": average_precision,
    "precision": precision_at_k,
}


@dataclass(slots=True)
class RetrievalReport:
    """Mean metrics over the evaluated queries, and each query's scores.

    ``missing`` counts evaluated queries that the run did not answer (they
    score 0 on every metric and are included in the means).
    """

    metrics: dict[str, float]
    per_query: dict[str, dict[str, float]]
    queries: int
    missing: int = 0

    def table_header(self, label: str = "system") -> str:
        """The markdown header and separator lines matching :meth:`table_row`."""
        head = "| " + " | ".join([label, *self.metrics]) + " |"
        return head + "\n|" + " --- |" * (len(self.metrics) + 1)

    def table_row(self, label: str, digits: int = 3) -> str:
        """One markdown table row: ``| label | value | ... |`` in metric order."""
        cells = [f"{value:.{digits}f}" for value in self.metrics.values()]
        return "| " + " | ".join([label, *cells]) + " |"

    def scores(self, metric: str) -> list[float]:
        """One metric's per-query values in query order (for :func:`paired_bootstrap`)."""
        return [values[metric] for values in self.per_query.values()]

    def to_json(self, per_query: bool = True) -> dict[str, Any]:
        """A JSON-ready dict: ``queries``, ``missing``, ``metrics`` and optionally ``per_query``."""
        out: dict[str, Any] = {
            "queries": self.queries,
            "missing": self.missing,
            "metrics": dict(self.metrics),
        }
        if per_query:
            out["per_query"] = {q: dict(v) for q, v in self.per_query.items()}
        return out


def evaluate(
    run: Mapping[str, Ranking],
    qrels: Mapping[str, Mapping[str, int]],
    *,
    ks: Sequence[int] = (10, 100),
    metrics: Sequence[str] = METRICS,
) -> RetrievalReport:
    """Score a run against qrels; metric names are ``f"{metric}@{k}"``.

    Evaluated queries are those of ``qrels`` with at least one grade > 0, in
    sorted id order; a query missing from ``run`` scores 0 and still counts.
    Run queries absent from ``qrels`` are ignored.
    """
    unknown = [m for m in metrics if m not in _METRIC_FUNCTIONS]
    if unknown or not metrics:
        raise ValueError(f"unknown metrics {unknown}; known: {list(METRICS)}")
    if not ks:
        raise ValueError("ks must not be empty")
    for k in ks:
        _check_k(k)
    names = [f"{m}@{k}" for m in metrics for k in ks]
    deepest = max(ks)
    per_query: dict[str, dict[str, float]] = {}
    missing = 0
    for query_id in sorted(qrels):
        qrel = qrels[query_id]
        if _relevant(qrel) == 0:
            continue
        if query_id not in run:
            missing += 1
        top = _top(run.get(query_id, ()), deepest)
        per_query[query_id] = {
            f"{m}@{k}": _METRIC_FUNCTIONS[m](top, qrel, k) for m in metrics for k in ks
        }
    count = len(per_query)
    means = {
        name: (sum(v[name] for v in per_query.values()) / count if count else 0.0) for name in names
    }
    return RetrievalReport(metrics=means, per_query=per_query, queries=count, missing=missing)


def evaluate_retriever(
    dataset: BeirDataset,
    search: Callable[[str], Ranking],
    *,
    ks: Sequence[int] = (10, 100),
    metrics: Sequence[str] = METRICS,
    progress: Callable[[int, int], None] | None = None,
) -> RetrievalReport:
    """Call ``search(query_text)`` for every query of ``dataset`` and evaluate the run.

    ``progress(done, total)`` is called after each query.
    """
    run: dict[str, Ranking] = {}
    total = len(dataset.queries)
    for done, (query_id, text) in enumerate(dataset.queries.items(), start=1):
        run[query_id] = list(search(text))
        if progress is not None:
            progress(done, total)
    return evaluate(run, dataset.qrels, ks=ks, metrics=metrics)


def paired_bootstrap(
    a: Sequence[float], b: Sequence[float], *, samples: int = 2000, seed: int = 0
) -> tuple[float, float]:
    """Paired bootstrap test of system ``b`` against system ``a`` over the same queries.

    Returns ``(mean(b - a), p)``, where ``p`` is the two-sided p-value estimate
    under the null hypothesis of no difference: the share (with +1 smoothing)
    of bootstrap means of the null-shifted differences at least as far from 0
    as the observed mean. Deterministic for a given ``seed``.
    """
    if len(a) != len(b):
        raise ValueError(f"paired samples differ in length: {len(a)} vs {len(b)}")
    if not a:
        raise ValueError("paired_bootstrap needs at least one pair")
    if samples < 1:
        raise ValueError("samples must be >= 1")
    diffs = np.asarray(b, dtype=np.float64) - np.asarray(a, dtype=np.float64)
    n = diffs.size
    observed = float(diffs.mean())
    shifted = diffs - observed
    rng = np.random.default_rng(seed)
    tolerance = 1e-12 * max(1.0, abs(observed))
    chunk = max(1, 4_000_000 // n)  # bound memory to ~32 MB of indices at a time
    extreme = 0
    done = 0
    while done < samples:
        size = min(chunk, samples - done)
        means = shifted[rng.integers(0, n, size=(size, n))].mean(axis=1)
        extreme += int(np.count_nonzero(np.abs(means) >= abs(observed) - tolerance))
        done += size
    return observed, (extreme + 1) / (samples + 1)
