"""The embedded store's filtered HNSW graph (faiss): ACL inside the walk, recall, upkeep."""

from __future__ import annotations

import numpy as np
import pytest

from bastion.rag.ports import Access, Acl, Filters
from bastion.store.rag import ann
from bastion.store.rag.memory import CollectionIndex, DocInfo, IndexedChunk

pytestmark = pytest.mark.skipif(not ann.available(), reason="faiss (rag extra) not installed")

DIMS = 32


def clustered(rng: np.random.Generator, n: int) -> np.ndarray:
    centres = rng.standard_normal((40, DIMS))
    x = centres[rng.integers(0, 40, n)] + 0.3 * rng.standard_normal((n, DIMS))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32)


def build(n: int, seed: int = 0) -> tuple[CollectionIndex, np.ndarray]:
    rng = np.random.default_rng(seed)
    vecs = clustered(rng, n)
    index = CollectionIndex(DIMS, ann_min_rows=1000, exact_max=50)
    docs = []
    for d in range(n // 2):
        acl = Acl() if d % 2 == 0 else Acl(teams=("beta",))
        info = DocInfo(f"d{d}", acl, {}, 0.0)
        chunks = [
            IndexedChunk(f"c{2 * d + o}", f"d{d}", {"w": 1}, vecs[2 * d + o]) for o in range(2)
        ]
        docs.append((info, chunks))
    index.load(docs)
    return index, vecs


def exact_top(vecs: np.ndarray, q: np.ndarray, allowed: np.ndarray, k: int) -> set[str]:
    scores = vecs @ q
    scores[~allowed] = -np.inf
    return {f"c{i}" for i in np.argsort(-scores)[:k]}


def test_graph_search_keeps_the_acl_inside_and_finds_the_exact_neighbours() -> None:
    index, vecs = build(4000)
    assert index.wait_for_graph(60)
    team_a = Access("t", team_id="alpha")
    rows = np.arange(len(vecs))
    visible = (rows // 2) % 2 == 0  # documents with an even number are open to the tenant
    rng = np.random.default_rng(7)
    recall = []
    for _ in range(40):
        q = vecs[rng.integers(0, len(vecs))] + 0.05 * rng.standard_normal(DIMS).astype(np.float32)
        q /= np.linalg.norm(q)
        hits = index.search_vector(q, team_a, Filters(), 10)
        assert len(hits) == 10
        ids = {h.chunk_id for h in hits}
        assert all(visible[int(c[1:])] for c in ids), "a hidden chunk left the graph walk"
        recall.append(len(ids & exact_top(vecs, q, visible, 10)) / 10)
        scores = [h.score for h in hits]
        assert scores == sorted(scores, reverse=True)
    assert float(np.mean(recall)) >= 0.95


def test_rows_added_after_the_build_are_searchable_and_compaction_rebuilds() -> None:
    index, _ = build(3000)
    assert index.wait_for_graph(60)
    new = np.zeros(DIMS, dtype=np.float32)
    new[0] = 1.0
    index.put("fresh", Acl(), {}, 0.0, [IndexedChunk("fresh-0", "fresh", {"w": 1}, new)])
    hits = index.search_vector(new, Access("t"), Filters(), 5)
    assert hits[0].chunk_id == "fresh-0"
    # deleting over a third of the rows compacts (renumbers) and rebuilds the graph
    index.remove([f"d{d}" for d in range(0, 550)])
    assert index.wait_for_graph(60)
    hits = index.search_vector(new, Access("t"), Filters(), 5)
    assert hits[0].chunk_id == "fresh-0"
    assert all(int(h.chunk_id[1:]) >= 1100 for h in hits if h.chunk_id != "fresh-0")


def test_small_collections_and_narrow_filters_stay_exact() -> None:
    index, _ = build(600)  # below ann_min_rows: no graph at all
    assert not index.wait_for_graph(1)
    big, bvecs = build(3000)
    assert big.wait_for_graph(60)
    only = Filters(document_ids=("d10", "d11"))  # 4 candidates: exact scan
    q = bvecs[21]
    hits = big.search_vector(q, Access("t", all_documents=True), only, 3)
    assert hits[0].chunk_id == "c21"
    assert {h.chunk_id for h in hits} <= {"c20", "c21", "c22", "c23"}
