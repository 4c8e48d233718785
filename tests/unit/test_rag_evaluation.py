"""The IR evaluator: hand-computed metrics, BEIR loading, and the Cranfield collection."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest

from bastion.rag.evaluation import (
    BeirDataset,
    BeirFormatError,
    average_precision,
    evaluate,
    evaluate_retriever,
    load_beir,
    mrr_at_k,
    ndcg_at_k,
    paired_bootstrap,
    precision_at_k,
    recall_at_k,
)


def find_cranfield() -> Path | None:
    """The Cranfield folder: under $BASTION_SHARED, else under a ``shared/`` beside an ancestor."""
    env = os.environ.get("BASTION_SHARED")
    roots = [Path(env)] if env else [p / "shared" for p in Path(__file__).resolve().parents]
    for root in roots:
        if (root / "data/ir/cranfield/corpus.jsonl").is_file():
            return root / "data/ir/cranfield"
    return None


def d(rank: int) -> float:
    """The nDCG discount at a 1-based rank."""
    return 1.0 / math.log2(rank + 1)


# --- metrics ---------------------------------------------------------------------


def test_ndcg_uses_linear_grades_and_the_ideal_order() -> None:
    qrel = {"a": 3, "b": 2, "c": 1, "z": 0}
    dcg = 1 * d(1) + 3 * d(3)  # c at 1, x at 2 (unjudged), a at 3
    ideal = 3 * d(1) + 2 * d(2) + 1 * d(3)
    assert ndcg_at_k(["c", "x", "a"], qrel, 3) == pytest.approx(dcg / ideal, abs=1e-12)
    assert ndcg_at_k(["a", "b", "c"], qrel, 3) == pytest.approx(1.0)
    assert ndcg_at_k(["a", "b", "c"], qrel, 10) == pytest.approx(1.0)
    assert ndcg_at_k(["z", "x"], qrel, 10) == 0.0


def test_ndcg_ideal_is_cut_at_k_when_more_docs_are_relevant() -> None:
    qrel = {"a": 3, "b": 3, "c": 2, "d": 1}
    dcg = 2 * d(1) + 3 * d(2)
    ideal = 3 * d(1) + 3 * d(2)  # only the two best grades fit in k=2
    assert ndcg_at_k(["c", "a", "b"], qrel, 2) == pytest.approx(dcg / ideal, abs=1e-12)
    assert ndcg_at_k(["b", "a"], qrel, 2) == pytest.approx(1.0)
    # at k=4 the full ideal (3, 3, 2, 1) applies
    full = 3 * d(1) + 3 * d(2) + 2 * d(3) + 1 * d(4)
    assert ndcg_at_k(["b", "a"], qrel, 4) == pytest.approx((3 * d(1) + 3 * d(2)) / full)


def test_negative_grades_gain_nothing() -> None:
    qrel = {"a": -1, "b": 2}
    assert ndcg_at_k(["a", "b"], qrel, 2) == pytest.approx(2 * d(2) / (2 * d(1)))
    assert recall_at_k(["a"], qrel, 1) == 0.0
    assert mrr_at_k(["a", "b"], qrel, 10) == 0.5


def test_binary_metrics() -> None:
    qrel = {"a": 1, "b": 2, "c": 1}
    ranking = ["x", "a", "y", "b"]
    assert recall_at_k(ranking, qrel, 2) == pytest.approx(1 / 3)
    assert recall_at_k(ranking, qrel, 4) == pytest.approx(2 / 3)
    assert precision_at_k(ranking, qrel, 2) == pytest.approx(1 / 2)
    assert precision_at_k(ranking, qrel, 4) == pytest.approx(2 / 4)
    assert mrr_at_k(ranking, qrel, 10) == pytest.approx(1 / 2)
    assert mrr_at_k(ranking, qrel, 1) == 0.0
    assert average_precision(ranking, qrel) == pytest.approx((1 / 2 + 2 / 4) / 3)
    assert average_precision(ranking, qrel, 2) == pytest.approx((1 / 2) / 3)
    assert average_precision(["a", "b", "c"], qrel, 2) == pytest.approx(2 / 3)


def test_duplicates_count_at_their_first_position_only() -> None:
    qrel = {"b": 1}
    ranking = ["a", "a", "a", "b"]
    assert mrr_at_k(ranking, qrel, 2) == 0.5
    assert recall_at_k(ranking, qrel, 2) == 1.0
    assert precision_at_k(ranking, qrel, 2) == 0.5
    assert ndcg_at_k(ranking, qrel, 2) == pytest.approx(d(2))
    assert average_precision(ranking, qrel, 2) == 0.5
    # a repeated relevant doc is not counted twice
    assert precision_at_k(["b", "b"], qrel, 2) == 0.5
    assert average_precision(["b", "b"], qrel) == 1.0


def test_empty_ranking_scores_zero() -> None:
    qrel = {"a": 2}
    for value in (
        ndcg_at_k([], qrel, 10),
        recall_at_k([], qrel, 10),
        precision_at_k([], qrel, 10),
        mrr_at_k([], qrel, 10),
        average_precision([], qrel),
    ):
        assert value == 0.0


def test_k_larger_than_the_ranking() -> None:
    qrel = {"a": 1, "b": 1}
    assert precision_at_k(["a"], qrel, 10) == pytest.approx(0.1)
    assert recall_at_k(["a"], qrel, 10) == 0.5
    assert ndcg_at_k(["a"], qrel, 10) == pytest.approx(d(1) / (d(1) + d(2)))
    assert average_precision(["a"], qrel, 10) == 0.5
    assert mrr_at_k(["a"], qrel, 10) == 1.0


def test_no_relevant_docs_scores_zero_and_bad_k_is_rejected() -> None:
    assert ndcg_at_k(["a"], {"a": 0}, 10) == 0.0
    assert recall_at_k(["a"], {}, 10) == 0.0
    assert average_precision(["a"], {}) == 0.0
    with pytest.raises(ValueError, match="k must be"):
        ndcg_at_k(["a"], {"a": 1}, 0)
    with pytest.raises(TypeError, match="not a string"):
        recall_at_k("abc", {"a": 1}, 10)


# --- evaluate ----------------------------------------------------------------------


def test_evaluate_skips_unjudged_counts_missing_and_ignores_extra() -> None:
    qrels = {"q1": {"a": 1}, "q2": {"b": 0}, "q3": {"c": 2}, "q4": {}}
    run = {"q1": ["a"], "q2": ["b"], "q9": ["z"]}
    report = evaluate(run, qrels, ks=(1, 10), metrics=("ndcg", "recall", "mrr"))
    assert report.queries == 2  # q2 and q4 have nothing relevant
    assert report.missing == 1  # q3 is not in the run: scores 0 and counts
    assert list(report.metrics) == [
        "ndcg@1",
        "ndcg@10",
        "recall@1",
        "recall@10",
        "mrr@1",
        "mrr@10",
    ]
    assert all(value == 0.5 for value in report.metrics.values())
    assert report.per_query["q3"] == dict.fromkeys(report.metrics, 0.0)
    assert set(report.per_query) == {"q1", "q3"}
    assert report.scores("ndcg@10") == [1.0, 0.0]


def test_evaluate_defaults_and_report_helpers() -> None:
    report = evaluate({"q": ["x", "a"]}, {"q": {"a": 1}})
    assert set(report.metrics) == {
        f"{m}@{k}" for m in ("ndcg", "recall", "mrr", "map", "precision") for k in (10, 100)
    }
    assert report.metrics["mrr@10"] == 0.5
    assert report.metrics["precision@10"] == pytest.approx(0.1)
    row = report.table_row("bm25")
    assert row.startswith("| bm25 | ") and row.endswith(" |")
    assert row.count("|") == len(report.metrics) + 2
    assert "0.500" in row
    header, separator = report.table_header().splitlines()
    assert header.count("|") == separator.count("|") == row.count("|")
    payload = report.to_json()
    assert json.loads(json.dumps(payload)) == payload
    assert payload["queries"] == 1 and payload["per_query"]["q"]["mrr@10"] == 0.5
    assert "per_query" not in report.to_json(per_query=False)


def test_evaluate_with_nothing_to_evaluate_and_bad_arguments() -> None:
    report = evaluate({}, {"q": {"a": 0}}, ks=(5,), metrics=("recall",))
    assert report.queries == 0 and report.metrics == {"recall@5": 0.0}
    with pytest.raises(ValueError, match="unknown metrics"):
        evaluate({}, {}, metrics=("bleu",))
    with pytest.raises(ValueError, match="k must be"):
        evaluate({}, {}, ks=(0,))


def test_evaluate_retriever_calls_search_per_query_with_progress() -> None:
    dataset = BeirDataset(
        name="toy",
        corpus={"1": ("", "alpha"), "2": ("", "beta")},
        queries={"q1": "alpha", "q2": "beta"},
        qrels={"q1": {"1": 1}, "q2": {"2": 3}},
    )
    seen: list[tuple[int, int]] = []

    def search(text: str) -> list[str]:
        return [doc for doc, (_, body) in dataset.corpus.items() if body == text]

    report = evaluate_retriever(dataset, search, ks=(1,), progress=lambda *a: seen.append(a))
    assert seen == [(1, 2), (2, 2)]
    assert report.queries == 2 and report.metrics["ndcg@1"] == 1.0


def test_paired_bootstrap() -> None:
    a = [0.1 * (i % 7) for i in range(60)]
    same = paired_bootstrap(a, a)
    assert same == (0.0, 1.0)
    better = [x + 0.2 for x in a]
    diff, p = paired_bootstrap(a, better, samples=500)
    assert diff == pytest.approx(0.2) and p < 0.01
    noisy = [x + (0.05 if i % 2 else -0.05) for i, x in enumerate(a)]
    diff, p = paired_bootstrap(a, noisy, samples=500, seed=3)
    assert abs(diff) < 1e-9 and p > 0.5
    assert paired_bootstrap(a, noisy, seed=7) == paired_bootstrap(a, noisy, seed=7)
    with pytest.raises(ValueError):
        paired_bootstrap([1.0], [1.0, 2.0])
    with pytest.raises(ValueError):
        paired_bootstrap([], [])


# --- load_beir ------------------------------------------------------------------------


def write_beir(root: Path, qrels: str, *, corpus: list[str] | None = None) -> Path:
    """Write a tiny BEIR folder."""
    (root / "qrels").mkdir(parents=True, exist_ok=True)
    docs = corpus or [
        json.dumps({"_id": "1", "title": "One", "text": "first doc"}),
        json.dumps({"_id": 2, "title": None, "text": "second doc"}),  # numeric id
        json.dumps({"_id": "d3", "text": "third doc"}),  # no title
        "",
    ]
    (root / "corpus.jsonl").write_text("\n".join(docs), encoding="utf-8")
    queries = [
        {"_id": "1", "text": "query one", "metadata": {"x": 1}},
        {"_id": 2, "text": "query two"},
        {"_id": "3", "text": "query three"},
        {"_id": "4", "text": "not judged"},
    ]
    (root / "queries.jsonl").write_text("\n".join(json.dumps(q) for q in queries) + "\n")
    (root / "qrels" / "test.tsv").write_text(qrels, encoding="utf-8")
    return root


def test_load_beir_reads_a_folder(tmp_path: Path) -> None:
    qrels = "query-id\tcorpus-id\tscore\n1\t1\t2\n1\t2\t0\n2\t2\t1\n2\td3\t-1\n3\t1\t0\n\n"
    dataset = load_beir(write_beir(tmp_path / "toy", qrels))
    assert dataset.name == "toy"
    assert dataset.corpus == {
        "1": ("One", "first doc"),
        "2": ("", "second doc"),
        "d3": ("", "third doc"),
    }
    # grades <= 0 are dropped; query 3 has nothing relevant, query 4 is not judged
    assert dataset.qrels == {"1": {"1": 2}, "2": {"2": 1}}
    assert dataset.queries == {"1": "query one", "2": "query two"}
    assert dataset.judgments == 2
    # query 1 -> doc 1: identical ids are kept and evaluated
    report = evaluate({"1": ["1"], "2": ["2"]}, dataset.qrels, ks=(10,))
    assert report.metrics["ndcg@10"] == 1.0


def test_load_beir_without_header_and_with_other_split(tmp_path: Path) -> None:
    root = write_beir(tmp_path, "1\t1\t1\n2\t2\t3.0\n")
    (root / "qrels" / "dev.tsv").write_text("query-id\tcorpus-id\tscore\n2\td3\t1\n")
    assert load_beir(root).qrels == {"1": {"1": 1}, "2": {"2": 3}}
    dev = load_beir(root, split="dev")
    assert dev.qrels == {"2": {"d3": 1}} and dev.queries == {"2": "query two"}


@pytest.mark.parametrize(
    ("qrels", "line", "problem"),
    [
        ("query-id\tcorpus-id\tscore\n1\t1\t2\n1\t2\n", 3, "expected query-id"),
        ("query-id\tcorpus-id\tscore\n1\t1\thigh\n", 2, "invalid row"),
        ("1\t1\t1\n1\t1\t2\n", 2, "conflicting grade"),
        ("query-id\tcorpus-id\tscore\n\t1\t1\n", 2, "invalid row"),
    ],
)
def test_load_beir_malformed_qrels_name_file_and_line(
    tmp_path: Path, qrels: str, line: int, problem: str
) -> None:
    root = write_beir(tmp_path, qrels)
    with pytest.raises(BeirFormatError, match=problem) as caught:
        load_beir(root)
    assert caught.value.line == line
    assert str(caught.value).startswith(f"{root / 'qrels' / 'test.tsv'}:{line}: ")
    assert isinstance(caught.value, ValueError)


@pytest.mark.parametrize(
    ("doc", "problem"),
    [
        ('{"_id": "1", "text": "ok"', "invalid JSON"),
        ('["1", "text"]', "JSON object"),
        ('{"title": "t", "text": "no id"}', '"_id"'),
        ('{"_id": "1", "text": 5}', "must be strings"),
        ('{"_id": "2", "text": "again"}', "repeated id"),
    ],
)
def test_load_beir_malformed_corpus(tmp_path: Path, doc: str, problem: str) -> None:
    lines = [json.dumps({"_id": "2", "text": "two"}), doc]
    root = write_beir(tmp_path, "1\t2\t1\n", corpus=lines)
    with pytest.raises(BeirFormatError, match=problem) as caught:
        load_beir(root)
    assert caught.value.line == 2 and "corpus.jsonl:2: " in str(caught.value)


def test_load_beir_missing_files_and_unknown_queries(tmp_path: Path) -> None:
    root = write_beir(tmp_path, "7\t1\t1\n")
    with pytest.raises(BeirFormatError, match=r"not in queries\.jsonl"):
        load_beir(root)
    with pytest.raises(FileNotFoundError, match=r"dev\.tsv"):
        load_beir(root, split="dev")


# --- the real Cranfield collection -------------------------------------------------------


@pytest.fixture(scope="module")
def cranfield() -> BeirDataset:
    folder = find_cranfield()
    if folder is None:
        pytest.skip("shared/data/ir/cranfield not found (set BASTION_SHARED)")
    return load_beir(folder)


def test_cranfield_counts_match_its_readme(cranfield: BeirDataset) -> None:
    assert len(cranfield.corpus) == 1400
    assert len(cranfield.queries) == 225
    assert cranfield.judgments == 1612
    assert set(cranfield.corpus) == {str(i) for i in range(1, 1401)}
    assert set(cranfield.queries) == {str(i) for i in range(1, 226)}
    sizes = [len(docs) for docs in cranfield.qrels.values()]
    assert min(sizes) == 1 and max(sizes) == 39
    grades = [g for docs in cranfield.qrels.values() for g in docs.values()]
    assert {g: grades.count(g) for g in (4, 3, 2, 1)} == {4: 128, 3: 387, 2: 734, 1: 363}
    assert cranfield.corpus["471"] == ("", "")
    # the pair with the same id on both sides is kept (BEIR would drop it)
    assert any(q in docs for q, docs in cranfield.qrels.items())


def test_cranfield_perfect_run_scores_one(cranfield: BeirDataset) -> None:
    run = {
        q: sorted(docs, key=lambda doc: (-docs[doc], doc)) for q, docs in cranfield.qrels.items()
    }
    report = evaluate(run, cranfield.qrels, ks=(10, 100))
    assert report.queries == 225 and report.missing == 0
    for name in ("ndcg@10", "ndcg@100", "recall@100", "mrr@10", "map@100"):
        assert report.metrics[name] == pytest.approx(1.0), name
    # with at most 39 relevant docs per query, recall@100 is 1 but recall@10 is not
    assert report.metrics["recall@10"] < 1.0
    reversed_run = {q: list(reversed(ranking)) for q, ranking in run.items()}
    worse = evaluate(reversed_run, cranfield.qrels, ks=(10,))
    assert worse.metrics["ndcg@10"] < 1.0
