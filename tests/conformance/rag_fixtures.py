"""Helpers of the RAG store conformance suite: backends, builders, a reference BM25, corpora.

Every expectation of :mod:`tests.conformance.test_rag_store` is computed here
from the input (never by asking a backend), with the formula of
:mod:`bastion.rag.ports` written out in plain Python.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bastion.rag.ports import (
    BM25_B,
    BM25_K1,
    Access,
    Acl,
    Chunk,
    Collection,
    Document,
    Filters,
    RagStore,
    Vector,
)

TENANT = "tnt_a"
DIMS = 16
ADMIN = Access(TENANT, all_documents=True)
ALICE = Access(TENANT, team_id="team_a", key_id="key_alice")  # team A
BOB = Access(TENANT, team_id="team_b", key_id="key_bob")  # team B
CAROL = Access(TENANT, team_id=None, key_id="key_carol")  # no team
EVERYTHING = Filters()


def collection(
    cid: str = "col_1", name: str = "docs", tenant: str = TENANT, dims: int = DIMS
) -> Collection:
    return Collection(
        id=cid,
        tenant_id=tenant,
        name=name,
        embedding_model="test-embedder",
        dimensions=dims,
        chunk_tokens=128,
        chunk_overlap=16,
        created_at=1_700_000_000.5,
        description=f"{name} of {tenant}",
    )


def unit(values: Sequence[float]) -> Vector:
    v = np.asarray(values, dtype=np.float64)
    out: Vector = (v / np.linalg.norm(v)).astype(np.float32)
    return out


def random_unit(rng: np.random.Generator, dims: int) -> Vector:
    return unit(rng.standard_normal(dims))


@dataclass
class StoredChunk:
    """What a test remembers of a chunk it stored (to compute expectations)."""

    id: str
    document_id: str
    terms: dict[str, int]
    vector: Vector
    acl: Acl
    metadata: dict[str, Any]
    updated_at: float

    @property
    def length(self) -> int:
        return sum(self.terms.values())


@dataclass
class Corpus:
    """A store's content as the test wrote it: documents and their chunks."""

    chunks: dict[str, StoredChunk] = field(default_factory=dict)

    def put(
        self,
        store: RagStore,
        collection_id: str,
        doc_id: str,
        terms: Sequence[Mapping[str, int]],
        *,
        vectors: Sequence[Vector] | None = None,
        acl: Acl | None = None,
        metadata: dict[str, Any] | None = None,
        updated_at: float = 1_700_000_100.0,
        version: int = 1,
        dims: int = DIMS,
        seed: int = 0,
    ) -> Document:
        """Store ``doc_id`` with one chunk per ``terms`` entry (ids ``<doc>#<nn>``)."""
        rng = np.random.default_rng(seed)
        acl = acl or Acl()
        metadata = dict(metadata or {})
        doc = Document(
            id=doc_id,
            collection_id=collection_id,
            source=f"file:///{doc_id}.md",
            content_hash=f"hash-{doc_id}-{version}",
            title=f"Title {doc_id}",
            version=version,
            metadata=metadata,
            acl=acl,
            ingested_at=updated_at + 5.0,
            updated_at=updated_at,
        )
        chunks = []
        for i, t in enumerate(terms):
            vec = vectors[i] if vectors is not None else random_unit(rng, dims)
            chunks.append(
                Chunk(
                    id=f"{doc_id}#{i:02d}",
                    document_id=doc_id,
                    ordinal=i,
                    text=" ".join(w for w, n in t.items() for _ in range(n)),
                    tokens=10 + i,
                    terms=dict(t),
                    embedding=vec,
                    metadata={"page": i + 1, "heading": ["H", doc_id]},
                )
            )
        store.put_document(doc, chunks)
        for old in [c for c in self.chunks.values() if c.document_id == doc_id]:
            del self.chunks[old.id]
        for c in chunks:
            self.chunks[c.id] = StoredChunk(
                c.id, doc_id, dict(c.terms), c.embedding, acl, metadata, updated_at
            )
        return doc

    def delete(self, doc_ids: Sequence[str]) -> None:
        for cid in [c.id for c in self.chunks.values() if c.document_id in doc_ids]:
            del self.chunks[cid]

    def visible(self, access: Access, filters: Filters | None = None) -> list[StoredChunk]:
        filters = filters or Filters()
        return [
            c
            for c in self.chunks.values()
            if c.acl.allows(access) and filters.matches(c.metadata, c.updated_at, c.document_id)
        ]

    def bm25(
        self,
        query: Mapping[str, int],
        access: Access,
        filters: Filters | None = None,
        limit: int = 1000,
    ) -> list[tuple[str, float]]:
        """The reference ranking: the ports' BM25 over the visible, filtered chunks."""
        return bm25_reference(self.visible(access, filters), query, limit)

    def ip(
        self,
        query: Vector,
        access: Access,
        filters: Filters | None = None,
        limit: int = 1000,
    ) -> list[tuple[str, float]]:
        """The reference vector ranking (float64 inner products), ties by id."""
        cands = self.visible(access, filters)
        scored = [
            (c.id, float(np.dot(c.vector.astype(np.float64), query.astype(np.float64))))
            for c in cands
        ]
        scored.sort(key=lambda p: (-p[1], p[0]))
        return scored[:limit]


def bm25_reference(
    chunks: Sequence[StoredChunk], query: Mapping[str, int], limit: int
) -> list[tuple[str, float]]:
    n = len(chunks)
    if n == 0:
        return []
    avglen = sum(c.length for c in chunks) / n
    df = {t: sum(1 for c in chunks if c.terms.get(t, 0) > 0) for t in query}
    scored = []
    for c in chunks:
        score, matched = 0.0, False
        for t, qtf in query.items():
            tf = c.terms.get(t, 0)
            if tf <= 0:
                continue
            matched = True
            idf = math.log(1.0 + (n - df[t] + 0.5) / (df[t] + 0.5))
            norm = tf + BM25_K1 * (1.0 - BM25_B + BM25_B * c.length / avglen)
            score += qtf * idf * tf * (BM25_K1 + 1.0) / norm
        if matched:
            scored.append((c.id, score))
    scored.sort(key=lambda p: (-p[1], p[0]))
    return scored[:limit]


# ----------------------------------------------------------------------------- fixed corpora


def acl_corpus(store: RagStore) -> Corpus:
    """Six documents, one per kind of ACL, two chunks each."""
    store.create_collection(collection())
    corpus = Corpus()
    acls = {
        "open": Acl(),
        "team_a": Acl(teams=("team_a",)),
        "team_b": Acl(teams=("team_b",)),
        "teams_ab": Acl(teams=("team_a", "team_b")),
        "carol": Acl(keys=("key_carol",)),
        "b_or_alice": Acl(teams=("team_b",), keys=("key_alice",)),
    }
    for i, (doc_id, acl) in enumerate(acls.items()):
        corpus.put(
            store, "col_1", doc_id, [{"common": 1, doc_id: 1}, {"common": 2}], acl=acl, seed=i
        )
    return corpus


VISIBLE = {
    ADMIN: {"b_or_alice", "carol", "open", "team_a", "team_b", "teams_ab"},
    ALICE: {"b_or_alice", "open", "team_a", "teams_ab"},
    BOB: {"b_or_alice", "open", "team_b", "teams_ab"},
    CAROL: {"carol", "open"},
    Access(TENANT, team_id="team_c", key_id="key_dan"): {"open"},
}


def filter_corpus(store: RagStore) -> Corpus:
    """Five documents with different metadata and update times."""
    store.create_collection(collection())
    corpus = Corpus()
    specs: list[tuple[str, dict[str, Any], float]] = [
        ("faq1", {"kind": "faq", "lang": "en"}, 100.0),
        ("faq2", {"kind": "faq", "lang": "de"}, 200.0),
        ("man1", {"kind": "manual", "lang": "en", "n": 2}, 300.0),
        ("note", {"kind": "note"}, 400.0),
        ("bare", {}, 500.0),
    ]
    for i, (doc_id, meta, ts) in enumerate(specs):
        terms = [{"shared": 1 + i, "pad": 3 * i}, {"shared": 1, doc_id: 2}]
        corpus.put(store, "col_1", doc_id, terms, metadata=meta, updated_at=ts, seed=i)
    return corpus


FILTERS = {
    "eq": (Filters(metadata={"kind": "faq"}), {"faq1", "faq2"}),
    "eq2": (Filters(metadata={"kind": "faq", "lang": "en"}), {"faq1"}),
    "list": (Filters(metadata={"kind": ["manual", "note"]}), {"man1", "note"}),
    "number": (Filters(metadata={"n": 2}), {"man1"}),
    "missing": (Filters(metadata={"lang": "fr"}), set()),
    "after": (Filters(updated_after=300.0), {"man1", "note", "bare"}),
    "ids": (Filters(document_ids=("note", "faq2", "nope")), {"note", "faq2"}),
    "all": (
        Filters(
            metadata={"lang": ["en", "de"]}, updated_after=150.0, document_ids=("faq2", "man1")
        ),
        {"faq2", "man1"},
    ),
}


# ----------------------------------------------------------------------------- backends


def embedded_store(path: Path) -> Any:
    """An EmbeddedRagStore on ``path``; skips the test while that backend cannot be imported."""
    try:
        from bastion.store.rag.embedded import EmbeddedRagStore
    except ImportError as exc:  # the embedded backend lands separately
        pytest.skip(f"embedded RAG store not importable: {exc}")
    return EmbeddedRagStore(path)


def truncate(url: str) -> None:
    """Empty the RAG tables (between tests on the session's server)."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "TRUNCATE rag_postings, rag_chunks, rag_documents, rag_collections RESTART IDENTITY"
        )


# ----------------------------------------------------------------------------- random corpora

VOCAB = [f"w{i:03d}" for i in range(200)]
TEAMS = ("team_a", "team_b", "team_c")
KEYS = ("key_1", "key_2", "key_3")


def random_acl(rnd: random.Random) -> Acl:
    pick = rnd.random()
    if pick < 0.4:
        return Acl()
    if pick < 0.8:
        return Acl(teams=tuple(sorted(rnd.sample(TEAMS, rnd.randint(1, 2)))))
    return Acl(teams=(rnd.choice(TEAMS),), keys=(rnd.choice(KEYS),))


def random_corpus(
    store: RagStore, collection_id: str, *, chunks: int, dims: int, seed: int
) -> Corpus:
    """``chunks`` chunks over documents of 1-6 chunks, Zipf-ish terms, mixed ACLs."""
    rnd = random.Random(seed)
    rng = np.random.default_rng(seed)
    corpus = Corpus()
    weights = [1.0 / (i + 1) ** 0.8 for i in range(len(VOCAB))]
    made, d = 0, 0
    while made < chunks:
        size = min(rnd.randint(1, 6), chunks - made)
        terms = []
        for _ in range(size):
            words = rnd.choices(VOCAB, weights=weights, k=rnd.randint(5, 60))
            counts: dict[str, int] = {}
            for w in words:
                counts[w] = counts.get(w, 0) + 1
            terms.append(counts)
        corpus.put(
            store,
            collection_id,
            f"doc{d:04d}",
            terms,
            vectors=[random_unit(rng, dims) for _ in range(size)],
            acl=random_acl(rnd),
            metadata={"kind": rnd.choice(["faq", "manual", "note"]), "n": d % 7},
            updated_at=1_700_000_000.0 + d,
            dims=dims,
        )
        made += size
        d += 1
    return corpus


def random_accesses() -> list[Access]:
    return [
        Access(TENANT, all_documents=True),
        Access(TENANT, team_id="team_a", key_id="key_1"),
        Access(TENANT, team_id="team_b", key_id="key_2"),
        Access(TENANT, team_id=None, key_id="key_3"),
    ]


def random_query(rnd: random.Random) -> dict[str, int]:
    query: dict[str, int] = {}
    for w in rnd.sample(VOCAB[:120], rnd.randint(1, 4)):
        query[w] = rnd.choice([1, 1, 1, 2])
    return query
