"""RAG store conformance: the embedded store and PgRagStore answer exactly alike.

Every test runs on both backends (``rag_store``): the embedded one (SQLite +
in-memory indexes, skipped while it cannot be imported) and PostgreSQL +
pgvector on a ``pgserver`` started once per session (tables truncated between
tests). Expectations come from :mod:`tests.conformance.rag_fixtures` (a plain
Python BM25 and numpy inner products), never from a backend. The parity test
at the end loads one random corpus into both and compares their answers.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bastion.core.errors import Conflict, InvalidRequest
from bastion.rag.ports import Access, Acl, Filters, RagStore
from tests.conformance.rag_fixtures import (
    ADMIN,
    ALICE,
    BOB,
    CAROL,
    DIMS,
    EVERYTHING,
    FILTERS,
    TENANT,
    VISIBLE,
    Corpus,
    acl_corpus,
    collection,
    embedded_store,
    filter_corpus,
    random_accesses,
    random_corpus,
    random_query,
    random_unit,
    truncate,
    unit,
)


@pytest.fixture(params=["embedded", "postgres"])
def rag_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[RagStore]:
    """Each backend in turn: a new embedded file, or the emptied pgserver database."""
    store: Any
    if request.param == "embedded":
        store = embedded_store(tmp_path / "rag.db")
    else:
        from bastion.store.rag.postgres import PgRagStore

        url = request.getfixturevalue("pg_url")
        truncate(url)
        store = PgRagStore(url)
    yield store
    store.close()


def _ids(hits: list[Any]) -> list[str]:
    return [h.chunk_id for h in hits]


def _text(store: RagStore, query: dict[str, int], access: Access, **kw: Any) -> list[Any]:
    filters = kw.pop("filters", EVERYTHING)
    return store.search_text("col_1", query, access, filters, kw.pop("limit", 100))


def _vec(store: RagStore, vector: Any, access: Access, **kw: Any) -> list[Any]:
    filters = kw.pop("filters", EVERYTHING)
    return store.search_vector("col_1", vector, access, filters, kw.pop("limit", 100))


def _assert_ranking(got: list[Any], want: list[tuple[str, float]], rel: float = 1e-9) -> None:
    assert _ids(got) == [cid for cid, _ in want]
    for hit, (_, score) in zip(got, want, strict=True):
        assert isinstance(hit.score, float)
        assert hit.score == pytest.approx(score, rel=rel, abs=0.0)


# ----------------------------------------------------------------------------- collections


def test_collections_create_get_list_conflict_and_tenants(rag_store: RagStore) -> None:
    docs = rag_store.create_collection(collection("col_1", "docs"))
    assert docs == collection("col_1", "docs")
    rag_store.create_collection(collection("col_2", "archive"))
    rag_store.create_collection(collection("col_3", "docs", tenant="tnt_b"))
    with pytest.raises(Conflict):
        rag_store.create_collection(collection("col_4", "docs"))

    assert rag_store.get_collection(TENANT, "docs") == collection("col_1", "docs")
    assert rag_store.get_collection("tnt_b", "docs") == collection("col_3", "docs", tenant="tnt_b")
    assert rag_store.get_collection("tnt_b", "archive") is None
    assert rag_store.get_collection("tnt_c", "docs") is None
    assert [c.id for c in rag_store.list_collections(TENANT)] == ["col_2", "col_1"]
    assert [c.id for c in rag_store.list_collections("tnt_b")] == ["col_3"]
    assert rag_store.list_collections("tnt_c") == []

    Corpus().put(rag_store, "col_1", "a", [{"x": 1}, {"y": 2}])
    rag_store.delete_collection("col_1")
    assert rag_store.get_collection(TENANT, "docs") is None
    assert [c.id for c in rag_store.list_collections(TENANT)] == ["col_2"]
    assert rag_store.counts("col_1", ADMIN) == (0, 0)
    assert rag_store.document_states("col_1") == {}
    assert _text(rag_store, {"x": 1}, ADMIN) == []
    # The name is free again.
    rag_store.create_collection(collection("col_5", "docs"))
    assert rag_store.counts("col_5", ADMIN) == (0, 0)


# ----------------------------------------------------------------------------- documents


def test_put_replace_delete_and_states(rag_store: RagStore) -> None:
    rag_store.create_collection(collection())
    corpus = Corpus()
    meta = {"lang": "en", "tags": ["a", "b"], "n": 3}
    doc = corpus.put(rag_store, "col_1", "a", [{"x": 1}, {"y": 2}, {"x": 1, "z": 1}], metadata=meta)
    corpus.put(rag_store, "col_1", "b", [{"x": 3}], version=4, updated_at=1_700_000_200.0)
    assert rag_store.counts("col_1", ADMIN) == (2, 4)

    got = rag_store.get_document("col_1", "a", ADMIN)
    assert got is not None
    doc.chunk_count = 3
    assert got == doc
    states = rag_store.document_states("col_1")
    assert set(states) == {"a", "b"}
    assert (states["b"].content_hash, states["b"].version, states["b"].source) == (
        "hash-b-4",
        4,
        "file:///b.md",
    )
    assert states["b"].chunk_count == 1
    assert states["a"].ingested_at == 1_700_000_105.0

    # Replace "a" with two chunks: the third is gone everywhere.
    corpus.put(rag_store, "col_1", "a", [{"y": 1}, {"q": 1}], version=2)
    assert rag_store.counts("col_1", ADMIN) == (2, 3)
    assert rag_store.document_states("col_1")["a"].version == 2
    assert rag_store.chunks("col_1", ["a#02", "a#00"], ADMIN)[0].chunk_id == "a#00"
    assert len(rag_store.chunks("col_1", ["a#02", "a#00"], ADMIN)) == 1
    assert _ids(_text(rag_store, {"x": 1}, ADMIN)) == ["b#00"]
    got = rag_store.get_document("col_1", "a", ADMIN)
    assert got is not None and got.chunk_count == 2 and got.version == 2

    assert rag_store.delete_documents("col_1", ["a", "missing"]) == 1
    assert rag_store.delete_documents("col_1", ["a"]) == 0
    assert rag_store.counts("col_1", ADMIN) == (1, 1)
    assert rag_store.get_document("col_1", "a", ADMIN) is None
    assert set(rag_store.document_states("col_1")) == {"b"}
    assert _text(rag_store, {"y": 1}, ADMIN) == []
    assert _ids(_vec(rag_store, corpus.chunks["b#00"].vector, ADMIN)) == ["b#00"]

    # A document with no chunks is stored and counted.
    corpus.put(rag_store, "col_1", "empty", [])
    assert rag_store.counts("col_1", ADMIN) == (2, 1)


def test_chunks_in_asked_order_with_views(rag_store: RagStore) -> None:
    rag_store.create_collection(collection())
    corpus = Corpus()
    corpus.put(rag_store, "col_1", "a", [{"x": 1}, {"y": 2}], metadata={"lang": "en"})
    corpus.put(rag_store, "col_1", "b", [{"x": 1}], acl=Acl(teams=("team_b",)))
    views = rag_store.chunks("col_1", ["a#01", "nope", "b#00", "a#00"], ADMIN)
    assert [v.chunk_id for v in views] == ["a#01", "b#00", "a#00"]
    v = views[0]
    assert (v.document_id, v.ordinal, v.text, v.tokens) == ("a", 1, "y y", 11)
    assert v.metadata == {"page": 2, "heading": ["H", "a"]}
    assert (v.source, v.title, v.version, v.updated_at) == (
        "file:///a.md",
        "Title a",
        1,
        1_700_000_100.0,
    )
    assert v.document_metadata == {"lang": "en"}
    assert [v.chunk_id for v in rag_store.chunks("col_1", ["b#00", "a#01"], ALICE)] == ["a#01"]
    assert rag_store.chunks("col_1", [], ADMIN) == []
    assert rag_store.chunks("col_other", ["a#00"], ADMIN) == []


# ----------------------------------------------------------------------------- ACL


@pytest.mark.parametrize("access", list(VISIBLE), ids=["admin", "alice", "bob", "carol", "dan"])
def test_acl_applies_to_every_read(rag_store: RagStore, access: Access) -> None:
    corpus = acl_corpus(rag_store)
    docs = VISIBLE[access]
    chunk_ids = sorted(f"{d}#{i:02d}" for d in docs for i in range(2))
    assert rag_store.counts("col_1", access) == (len(docs), 2 * len(docs))
    assert [d.id for d in rag_store.list_documents("col_1", access)] == sorted(docs)
    for doc_id in VISIBLE[ADMIN]:
        got = rag_store.get_document("col_1", doc_id, access)
        assert (got is not None) == (doc_id in docs), doc_id
    every = sorted(corpus.chunks)
    assert sorted(v.chunk_id for v in rag_store.chunks("col_1", every, access)) == chunk_ids
    assert sorted(_ids(_text(rag_store, {"common": 1}, access))) == chunk_ids
    for doc_id in VISIBLE[ADMIN]:
        assert _ids(_text(rag_store, {doc_id: 1}, access)) == (
            [f"{doc_id}#00"] if doc_id in docs else []
        )
    query = random_unit(np.random.default_rng(7), DIMS)
    assert sorted(_ids(_vec(rag_store, query, access))) == chunk_ids
    _assert_ranking(_text(rag_store, {"common": 1}, access), corpus.bm25({"common": 1}, access))
    _assert_ranking(_vec(rag_store, query, access), corpus.ip(query, access), rel=1e-5)


def test_list_documents_pages_by_id(rag_store: RagStore) -> None:
    acl_corpus(rag_store)
    assert [d.id for d in rag_store.list_documents("col_1", ALICE, limit=2)] == [
        "b_or_alice",
        "open",
    ]
    page = rag_store.list_documents("col_1", ALICE, limit=2, after="open")
    assert [d.id for d in page] == ["team_a", "teams_ab"]
    assert rag_store.list_documents("col_1", ALICE, after="teams_ab") == []
    assert [d.id for d in rag_store.list_documents("col_1", BOB, after="b_or_alice")] == [
        "open",
        "team_b",
        "teams_ab",
    ]


def test_bm25_statistics_ignore_invisible_documents(rag_store: RagStore) -> None:
    """Team B's documents change neither team A's scores nor its ranking."""
    rag_store.create_collection(collection())
    corpus = Corpus()
    team_a = Acl(teams=("team_a",))
    corpus.put(
        rag_store, "col_1", "a1", [{"alpha": 2, "beta": 1}, {"alpha": 1, "x": 5}], acl=team_a
    )
    corpus.put(rag_store, "col_1", "a2", [{"beta": 3, "y": 1}, {"gamma": 1}])
    query = {"alpha": 1, "beta": 1, "gamma": 1}
    before_alice = _text(rag_store, query, ALICE)
    before_admin = _text(rag_store, query, ADMIN)
    _assert_ranking(before_alice, corpus.bm25(query, ALICE))
    assert [(h.chunk_id, h.score) for h in before_admin] == [
        (h.chunk_id, h.score) for h in before_alice
    ]

    # Team B adds long chunks full of the query terms: N, avglen and df all change for them.
    team_b = Acl(teams=("team_b",))
    corpus.put(
        rag_store,
        "col_1",
        "b1",
        [{"alpha": 9, "beta": 9, "pad": 40}, {"gamma": 7, "pad": 30}, {"alpha": 1}],
        acl=team_b,
    )
    after_alice = _text(rag_store, query, ALICE)
    assert [(h.chunk_id, h.score) for h in after_alice] == [
        (h.chunk_id, pytest.approx(h.score, rel=1e-12)) for h in before_alice
    ]
    after_admin = _text(rag_store, query, ADMIN)
    _assert_ranking(after_admin, corpus.bm25(query, ADMIN))
    score_a = {h.chunk_id: h.score for h in after_admin}
    assert all(abs(score_a[h.chunk_id] - h.score) > 1e-3 for h in before_alice)


# ----------------------------------------------------------------------------- BM25


def test_bm25_scores_match_the_reference(rag_store: RagStore) -> None:
    rag_store.create_collection(collection())
    corpus = Corpus()
    corpus.put(
        rag_store,
        "col_1",
        "d1",
        [{"cat": 3, "dog": 1, "fish": 2}, {"cat": 1, "mat": 4}, {"dog": 2, "bird": 1}],
    )
    corpus.put(rag_store, "col_1", "d2", [{"cat": 1, "x": 30}, {"fish": 1}, {"mat": 1, "y": 2}])
    corpus.put(rag_store, "col_1", "d3", [{"dog": 5}, {"cat": 2, "dog": 2, "z": 7}])
    for query in ({"cat": 1}, {"cat": 2, "dog": 1}, {"fish": 1, "mat": 3, "bird": 1, "none": 2}):
        _assert_ranking(_text(rag_store, query, ADMIN), corpus.bm25(query, ADMIN))
    query = {"cat": 1, "dog": 1}
    _assert_ranking(_text(rag_store, query, ADMIN, limit=3), corpus.bm25(query, ADMIN, limit=3))
    assert _text(rag_store, {"unknown": 1}, ADMIN) == []
    assert _text(rag_store, {}, ADMIN) == []
    assert _text(rag_store, query, ADMIN, limit=0) == []
    assert _text(rag_store, {"cat": 1}, ALICE, filters=Filters(document_ids=())) == []
    assert rag_store.search_text("col_none", query, ADMIN, EVERYTHING, 10) == []


def test_ties_break_by_chunk_id(rag_store: RagStore) -> None:
    rag_store.create_collection(collection(dims=4))
    corpus = Corpus()
    same = [unit([0.5, 0.5, 0.5, 0.5])]
    # Inserted in reverse id order; every chunk scores exactly alike.
    for doc_id in ("d9", "d5", "d1", "d3"):
        corpus.put(rag_store, "col_1", doc_id, [{"tie": 2, "pad": 1}], vectors=same, dims=4)
    want = ["d1#00", "d3#00", "d5#00", "d9#00"]
    hits = _text(rag_store, {"tie": 1}, ADMIN)
    assert _ids(hits) == want and len({h.score for h in hits}) == 1
    assert _ids(_text(rag_store, {"tie": 1, "pad": 1}, ADMIN, limit=2)) == want[:2]
    hits = _vec(rag_store, unit([1, 1, 1, 1]), ADMIN)
    assert _ids(hits) == want and [h.score for h in hits] == [1.0] * 4
    assert _ids(_vec(rag_store, unit([1, 1, 1, 1]), ADMIN, limit=3)) == want[:3]


# ----------------------------------------------------------------------------- filters


@pytest.mark.parametrize("name", list(FILTERS))
def test_filters_restrict_candidates_and_statistics(rag_store: RagStore, name: str) -> None:
    corpus = filter_corpus(rag_store)
    filters, docs = FILTERS[name]
    want_ids = sorted(f"{d}#{i:02d}" for d in docs for i in range(2))
    hits = _text(rag_store, {"shared": 1}, ADMIN, filters=filters)
    assert sorted(_ids(hits)) == want_ids
    _assert_ranking(hits, corpus.bm25({"shared": 1}, ADMIN, filters))
    query = random_unit(np.random.default_rng(3), DIMS)
    vec = _vec(rag_store, query, ADMIN, filters=filters)
    _assert_ranking(vec, corpus.ip(query, ADMIN, filters), rel=1e-5)
    # ACL and filters together.
    assert sorted(_ids(_text(rag_store, {"shared": 1}, CAROL, filters=filters))) == want_ids


# ----------------------------------------------------------------------------- vectors


def test_vector_ranking_matches_numpy(rag_store: RagStore) -> None:
    rag_store.create_collection(collection(dims=64))
    corpus = Corpus()
    rng = np.random.default_rng(11)
    for d in range(12):
        vecs = [random_unit(rng, 64) for _ in range(4)]
        corpus.put(rag_store, "col_1", f"doc{d:02d}", [{"t": 1}] * 4, vectors=vecs, dims=64)
    for _ in range(5):
        query = random_unit(rng, 64)
        for limit in (1, 7, 100):
            got = _vec(rag_store, query, ADMIN, limit=limit)
            want = corpus.ip(query, ADMIN, limit=limit)
            assert _ids(got) == [cid for cid, _ in want]
            for hit, (_, score) in zip(got, want, strict=True):
                assert hit.score == pytest.approx(score, abs=1e-6)
    assert _vec(rag_store, random_unit(rng, 64), ADMIN, limit=0) == []


def test_worker_threads_write_and_search_at_once(rag_store: RagStore) -> None:
    rag_store.create_collection(collection())

    def work(t: int) -> int:
        corpus = Corpus()
        for d in range(8):
            corpus.put(rag_store, "col_1", f"t{t}d{d}", [{"w": 1, f"t{t}": 1}] * 3, seed=d)
            assert len(_text(rag_store, {f"t{t}": 1}, ADMIN)) == 3 * (d + 1)
            _vec(rag_store, random_unit(np.random.default_rng(d), DIMS), ALICE, limit=5)
        return rag_store.delete_documents("col_1", [f"t{t}d0"])

    with ThreadPoolExecutor(4) as pool:
        assert list(pool.map(work, range(4))) == [1, 1, 1, 1]
    assert rag_store.counts("col_1", ADMIN) == (28, 84)
    assert len(_text(rag_store, {"w": 1}, ADMIN, limit=1000)) == 84


# ----------------------------------------------------------------------------- PostgreSQL only


def test_pg_refuses_a_database_without_the_rag_schema(pg_url: str) -> None:
    import psycopg

    from bastion.store.rag.postgres import PgRagStore, upgrade

    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("DROP DATABASE IF EXISTS rag_fresh")
        conn.execute("CREATE DATABASE rag_fresh")
    fresh = psycopg.conninfo.make_conninfo(pg_url, dbname="rag_fresh")
    with pytest.raises(InvalidRequest, match="bastion db upgrade"):
        PgRagStore(fresh)
    assert upgrade(fresh) == (0, 1)
    assert upgrade(fresh) == (1, 1)
    PgRagStore(fresh).close()
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("DROP DATABASE rag_fresh WITH (FORCE)")


def test_pg_deletes_leave_no_rows_and_keep_counts(pg_url: str) -> None:
    import psycopg

    from bastion.store.rag.postgres import PgRagStore

    truncate(pg_url)
    store = PgRagStore(pg_url)
    tables = ("rag_postings", "rag_chunks", "rag_documents", "rag_collections")

    def rows() -> list[int]:
        with psycopg.connect(pg_url) as conn:
            return [conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in tables]

    def chunk_count() -> int:
        with psycopg.connect(pg_url) as conn:
            return int(conn.execute("SELECT sum(chunk_count) FROM rag_collections").fetchone()[0])

    try:
        for cid in ("col_1", "col_2"):
            store.create_collection(collection(cid, cid))
            corpus = Corpus()
            corpus.put(store, cid, "a", [{"x": 2, "y": 1}, {"x": 1}])
            corpus.put(store, cid, "b", [{"z": 1}])
        assert rows() == [8, 6, 4, 2] and chunk_count() == 6
        Corpus().put(store, "col_1", "a", [{"q": 1, "r": 1, "s": 1}])
        assert rows() == [8, 5, 4, 2] and chunk_count() == 5
        assert store.delete_documents("col_1", ["a"]) == 1
        assert rows() == [5, 4, 3, 2] and chunk_count() == 4
        store.delete_collection("col_1")
        assert rows() == [4, 3, 2, 1] and chunk_count() == 3
    finally:
        store.close()


def test_pg_hnsw_path_filters_and_falls_back_to_exact(pg_url: str) -> None:
    from bastion.store.rag.postgres import PgRagStore

    truncate(pg_url)
    store = PgRagStore(pg_url, exact_below=1)
    try:
        store.create_collection(collection(dims=384))
        corpus = Corpus()
        rng = np.random.default_rng(5)
        target = random_unit(rng, 384)
        # 900 chunks near the query, then 100 (doc "far") pointing away from it.
        for d in range(9):
            vecs = [unit(target + 0.3 * random_unit(rng, 384)) for _ in range(100)]
            corpus.put(store, "col_1", f"near{d}", [{"t": 1}] * 100, vectors=vecs, dims=384)
        far = [unit(-target + 0.3 * random_unit(rng, 384)) for _ in range(100)]
        corpus.put(store, "col_1", "far", [{"t": 1}] * 100, vectors=far, dims=384)

        def check(filters: Filters, limit: int, plan: str) -> None:
            got = store.search_vector("col_1", target, ADMIN, filters, limit)
            assert store.vector_plan == plan
            want = corpus.ip(target, ADMIN, filters, limit)
            assert _ids(got) == [cid for cid, _ in want]

        # Approximate: the right length, candidates only, best first, most of the true top 10.
        got = store.search_vector("col_1", target, ADMIN, EVERYTHING, 10)
        assert store.vector_plan == "hnsw"
        exact = [cid for cid, _ in corpus.ip(target, ADMIN, EVERYTHING, 10)]
        assert len(got) == 10 and len(set(_ids(got)) & set(exact)) >= 8
        assert [h.score for h in got] == sorted((h.score for h in got), reverse=True)
        # "far" is 10% of the index: 2 x 5 x 10 = 100 neighbours, none of them
        # from "far", so the filtered answer is short -> rerun exactly.
        check(Filters(document_ids=("far",)), 5, "hnsw+exact")
        # 60 would need 1,200 neighbours (ef_search stops at 1,000): exact at once.
        check(Filters(document_ids=("far",)), 60, "exact")
        store.exact_below = 20_000
        check(EVERYTHING, 10, "exact")
    finally:
        store.close()


# ----------------------------------------------------------------------------- parity


def test_embedded_and_postgres_agree_on_a_random_corpus(tmp_path: Path, pg_url: str) -> None:
    from bastion.store.rag.postgres import PgRagStore

    embedded = embedded_store(tmp_path / "rag.db")
    truncate(pg_url)
    pg = PgRagStore(pg_url)
    try:
        stores = (embedded, pg)
        for store in stores:
            store.create_collection(collection(dims=384))
        corpora = [random_corpus(s, "col_1", chunks=300, dims=384, seed=42) for s in stores]
        assert len(corpora[0].chunks) == 300
        rnd = random.Random(9)
        rng = np.random.default_rng(9)
        accesses = random_accesses()
        for i in range(20):
            query, vector = random_query(rnd), random_unit(rng, 384)
            access = accesses[i % len(accesses)]
            filters = Filters(metadata={"kind": ["faq", "note"]}) if i % 5 == 4 else EVERYTHING
            text = [_text(s, query, access, filters=filters, limit=10) for s in stores]
            assert text[0], query
            assert _ids(text[0]) == _ids(text[1])
            for a, b in zip(*text, strict=True):
                assert a.score == pytest.approx(b.score, rel=1e-6)
            _assert_ranking(text[1], corpora[1].bm25(query, access, filters, 10))
            vec = [_vec(s, vector, access, filters=filters, limit=10) for s in stores]
            assert len(vec[0]) == 10 and _ids(vec[0]) == _ids(vec[1])
            for a, b in zip(*vec, strict=True):
                assert a.score == pytest.approx(b.score, rel=1e-6, abs=1e-6)
    finally:
        embedded.close()
        pg.close()


def test_vectors_are_returned_for_visible_chunks_only(rag_store: RagStore) -> None:
    rag_store.create_collection(collection(dims=4))
    corpus = Corpus()
    corpus.put(rag_store, "col_1", "open", [{"a": 1}], vectors=[unit([1, 0, 0, 0])], dims=4)
    corpus.put(
        rag_store,
        "col_1",
        "team_b",
        [{"a": 1}],
        vectors=[unit([0, 1, 0, 0])],
        acl=Acl(teams=("team_b",)),
        dims=4,
    )
    got = rag_store.vectors("col_1", ["open#00", "team_b#00", "missing"], ADMIN)
    assert set(got) == {"open#00", "team_b#00"}
    np.testing.assert_allclose(got["team_b#00"], [0, 1, 0, 0], atol=1e-6)
    assert set(rag_store.vectors("col_1", ["open#00", "team_b#00"], ALICE)) == {"open#00"}


def test_hybrid_retrieval_with_feedback_is_identical_on_both_backends(
    tmp_path: Path, pg_url: str
) -> None:
    """The whole retriever (both searches, fusion, pseudo-relevance feedback with
    fractional term weights and stored vectors) gives the same ranking on both."""
    import asyncio

    from bastion.rag.retrieve import RetrievalSettings, Retriever
    from bastion.store.rag.postgres import PgRagStore

    embedded = embedded_store(tmp_path / "rag.db")
    truncate(pg_url)
    pg = PgRagStore(pg_url)
    try:
        stores = (embedded, pg)
        colls = [s.create_collection(collection(dims=384)) for s in stores]
        for s in stores:
            random_corpus(s, "col_1", chunks=300, dims=384, seed=7)
        rnd = random.Random(5)
        rng = np.random.default_rng(5)
        settings = RetrievalSettings(feedback_chunks=5, candidates=50)
        for i in range(10):
            words = " ".join(w for w, n in random_query(rnd).items() for _ in range(n))
            vector = random_unit(rng, 384)

            async def embed(alias: str, text: str, v: Any = vector) -> Any:
                return v

            access = random_accesses()[i % 4]
            ranked = [
                asyncio.run(Retriever(s, embed, settings).search(c, words, access, top_k=10))
                for s, c in zip(stores, colls, strict=True)
            ]
            assert [r.chunk.chunk_id for r in ranked[0]] == [r.chunk.chunk_id for r in ranked[1]]
            for a, b in zip(*ranked, strict=True):
                assert a.score == pytest.approx(b.score, rel=1e-5, abs=1e-6)
    finally:
        embedded.close()
        pg.close()
