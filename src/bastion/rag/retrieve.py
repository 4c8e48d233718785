"""Hybrid retrieval: BM25 and dense candidates fused into one ranking.

Both retrievers run over the same candidate set (the caller's ACL and the
filters are applied inside each store query). Fusion methods:

* ``rrf``: reciprocal-rank fusion, ``Σ w / (k + rank)``.
* ``weighted`` (default): a convex combination of per-query standardised
  scores: each list's scores become z-scores over its candidates, shifted so
  its weakest candidate is 0 (a chunk missing from one list gets 0 there).
  Unlike RRF it keeps *how much* better one chunk is than the next.

Optional pseudo-relevance feedback (``feedback_chunks``) runs a second pass
with the query vector moved toward the top chunks' vectors (Rocchio) and the
most frequent new terms of those chunks added to the BM25 query; see
``docs/benchmarks.md`` for what each stage buys on Cranfield.

Freshness: ``recency_half_life_days`` multiplies each fused score by
``1 - recency_weight + recency_weight * 0.5 ** (age / half_life)``;
``max_age_s`` is a hard filter applied in the store.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

from bastion.rag.lexical import analyze
from bastion.rag.ports import Access, ChunkView, Collection, Filters, Hit, RagStore, Vector

QueryEmbedder = Callable[[str, str], Awaitable[Vector]]
"""``(embedding model alias, text) -> unit vector``, through the gateway."""

Reranker = Callable[[str, str, list[str]], Awaitable[list[float]]]
"""``(rerank model alias, query, texts) -> a relevance score per text``, through the gateway."""

Mode = Literal["hybrid", "bm25", "dense"]

_SIDE = ThreadPoolExecutor(max_workers=4, thread_name_prefix="bastion-rag-vector")
"""Runs a hybrid query's vector search beside its BM25 scoring."""


@dataclass(frozen=True, slots=True)
class RetrievalSettings:
    """How a query is answered from a collection (policy ``rag.retrieval``)."""

    mode: Mode = "hybrid"
    fusion: Literal["weighted", "rrf"] = "weighted"
    text_weight: float = 0.45
    """Weight of BM25 in the fusion (dense gets the rest)."""
    rrf_k: int = 60
    candidates: int = 100
    """Chunks each retriever contributes before fusion."""
    recency_half_life_days: float | None = None
    recency_weight: float = 0.2
    max_age_s: float | None = None
    rerank_model: str | None = None
    """A rerank model alias: the top ``rerank_candidates`` fused chunks are reordered."""
    rerank_candidates: int = 30
    feedback_chunks: int = 0
    """Pseudo-relevance feedback from this many top chunks (0: one pass only)."""
    feedback_terms: int = 10
    feedback_term_weight: float = 0.3
    feedback_vector_weight: float = 1.0


@dataclass(slots=True)
class Scored:
    chunk_id: str
    score: float
    text_score: float | None = None
    vector_score: float | None = None
    text_rank: int | None = None
    vector_rank: int | None = None


@dataclass(slots=True)
class Result:
    """One ranked chunk with its provenance."""

    chunk: ChunkView
    score: float
    text_score: float | None = None
    vector_score: float | None = None
    collection: str = ""
    fused_score: float | None = None
    """The hybrid score before a rerank replaced ``score``."""

    def to_json(self) -> dict[str, object]:
        c = self.chunk
        return {
            "chunk_id": c.chunk_id,
            "document_id": c.document_id,
            "collection": self.collection,
            "score": round(self.score, 6),
            "text": c.text,
            "source": c.source,
            "title": c.title,
            "metadata": {
                **c.document_metadata,
                **c.metadata,
                "version": c.version,
                "updated_at": c.updated_at,
                "bm25": None if self.text_score is None else round(self.text_score, 6),
                "similarity": None if self.vector_score is None else round(self.vector_score, 6),
                "fused": None if self.fused_score is None else round(self.fused_score, 6),
            },
        }


def fuse(text: Sequence[Hit], vector: Sequence[Hit], settings: RetrievalSettings) -> list[Scored]:
    """One ranking from the two candidate lists (best first, ties by chunk id)."""
    table: dict[str, Scored] = {}
    for rank, h in enumerate(text):
        table[h.chunk_id] = Scored(h.chunk_id, 0.0, text_score=h.score, text_rank=rank)
    for rank, h in enumerate(vector):
        s = table.setdefault(h.chunk_id, Scored(h.chunk_id, 0.0))
        s.vector_score, s.vector_rank = h.score, rank
    wt = settings.text_weight
    if settings.fusion == "rrf":
        k = settings.rrf_k
        for s in table.values():
            s.score = (wt / (k + s.text_rank + 1) if s.text_rank is not None else 0.0) + (
                (1 - wt) / (k + s.vector_rank + 1) if s.vector_rank is not None else 0.0
            )
    else:
        t_norm = _standardise([h.score for h in text])
        v_norm = _standardise([h.score for h in vector])
        for s in table.values():
            t = t_norm[s.text_rank] if s.text_rank is not None else 0.0
            v = v_norm[s.vector_rank] if s.vector_rank is not None else 0.0
            s.score = wt * t + (1 - wt) * v
    return sorted(table.values(), key=lambda s: (-s.score, s.chunk_id))


def _standardise(scores: Sequence[float]) -> list[float]:
    """z-scores shifted so the weakest candidate is 0 (a chunk one list lacks scores 0)."""
    if not scores:
        return []
    arr = np.asarray(scores, dtype=np.float64)
    z = (arr - arr.mean()) / (float(arr.std()) or 1.0)
    return [float(x) for x in z - z.min()]


@dataclass(slots=True)
class Retriever:
    """Searches one or more collections of a tenant for a query."""

    store: RagStore
    embed: QueryEmbedder
    settings: RetrievalSettings = field(default_factory=RetrievalSettings)
    clock: Callable[[], float] = time.time
    rerank: Reranker | None = None

    async def search(
        self,
        collection: Collection,
        query: str,
        access: Access,
        *,
        top_k: int = 8,
        filters: Filters | None = None,
        settings: RetrievalSettings | None = None,
    ) -> list[Result]:
        cfg = settings or self.settings
        filters = filters or Filters()
        if cfg.max_age_s is not None:
            floor = self.clock() - cfg.max_age_s
            after = filters.updated_after
            filters = replace(filters, updated_after=max(floor, after or floor))
        n = max(cfg.candidates, top_k)
        terms: dict[str, float] = dict(analyze(query)) if cfg.mode != "dense" else {}
        vec = await self.embed(collection.embedding_model, query) if cfg.mode != "bm25" else None
        ranked = await asyncio.to_thread(
            self._rank, collection.id, terms, vec, access, filters, n, cfg
        )
        if cfg.feedback_chunks and ranked:
            ranked = await asyncio.to_thread(
                self._feedback, collection.id, terms, vec, ranked, access, filters, n, cfg
            )
        reranking = cfg.rerank_model is not None and self.rerank is not None
        if cfg.recency_half_life_days:  # a recency boost may reorder: keep every candidate
            ranked = ranked[: max(n, top_k)]
        elif reranking:
            ranked = ranked[: max(cfg.rerank_candidates, top_k)]
        else:
            ranked = ranked[:top_k]
        views = await asyncio.to_thread(
            self.store.chunks, collection.id, [s.chunk_id for s in ranked], access
        )
        by_id = {v.chunk_id: v for v in views}
        results = [
            Result(by_id[s.chunk_id], s.score, s.text_score, s.vector_score, collection.name)
            for s in ranked
            if s.chunk_id in by_id
        ]
        if cfg.recency_half_life_days:
            now = self.clock()
            half = cfg.recency_half_life_days * 86400.0
            w = cfg.recency_weight
            for r in results:
                age = max(0.0, now - r.chunk.updated_at)
                r.score *= 1 - w + w * 0.5 ** (age / half)
            results.sort(key=lambda r: (-r.score, r.chunk.chunk_id))
            results = results[: max(cfg.rerank_candidates, top_k) if reranking else top_k]
        if reranking and results and self.rerank is not None and cfg.rerank_model:
            scores = await self.rerank(cfg.rerank_model, query, [r.chunk.text for r in results])
            for r, s in zip(results, scores, strict=True):
                r.fused_score, r.score = r.score, s
            results.sort(key=lambda r: (-r.score, r.chunk.chunk_id))
        return results[:top_k]

    def _rank(
        self,
        collection_id: str,
        terms: dict[str, float],
        vec: Vector | None,
        access: Access,
        filters: Filters,
        n: int,
        cfg: RetrievalSettings,
    ) -> list[Scored]:
        """One retrieval pass (in a worker thread): both retrievers, then fusion.

        In hybrid mode the vector search runs in a second thread while this one
        scores BM25 (numpy and faiss release the GIL), so a query costs about
        the slower of the two rather than their sum.
        """
        want_text = bool(terms) and cfg.mode != "dense"
        want_vec = vec is not None and cfg.mode != "bm25"
        pending = (
            _SIDE.submit(self.store.search_vector, collection_id, vec, access, filters, n)
            if want_vec and want_text and vec is not None
            else None
        )
        text_hits = (
            self.store.search_text(collection_id, terms, access, filters, n) if want_text else []
        )
        if pending is not None:
            vector_hits = pending.result()
        elif want_vec and vec is not None:
            vector_hits = self.store.search_vector(collection_id, vec, access, filters, n)
        else:
            vector_hits = []
        if cfg.mode == "bm25":
            return [Scored(h.chunk_id, h.score, text_score=h.score) for h in text_hits]
        if cfg.mode == "dense":
            return [Scored(h.chunk_id, h.score, vector_score=h.score) for h in vector_hits]
        return fuse(text_hits, vector_hits, cfg)

    def _feedback(
        self,
        collection_id: str,
        terms: dict[str, float],
        vec: Vector | None,
        ranked: list[Scored],
        access: Access,
        filters: Filters,
        n: int,
        cfg: RetrievalSettings,
    ) -> list[Scored]:
        """Pseudo-relevance feedback: a second pass with the query moved toward the
        top chunks (Rocchio on the vector, expansion terms for BM25)."""
        top = [s.chunk_id for s in ranked[: cfg.feedback_chunks]]
        if terms:
            views = self.store.chunks(collection_id, top, access)
            terms = {**terms, **expansion_terms(views, terms, cfg)}
        if vec is not None:
            vectors = list(self.store.vectors(collection_id, top, access).values())
            if vectors:
                moved = vec + cfg.feedback_vector_weight * np.mean(vectors, axis=0)
                vec = unit(moved)
        return self._rank(collection_id, terms, vec, access, filters, n, cfg)

    async def search_many(
        self,
        collections: Sequence[Collection],
        query: str,
        access: Access,
        *,
        top_k: int = 8,
        filters: Filters | None = None,
    ) -> list[Result]:
        """Search several collections and merge by score (each normalised to its best)."""
        if len(collections) == 1:
            return await self.search(collections[0], query, access, top_k=top_k, filters=filters)
        merged: list[Result] = []
        for c in collections:
            part = await self.search(c, query, access, top_k=top_k, filters=filters)
            if part:
                best = part[0].score or 1.0
                for r in part:
                    r.score /= best
                merged.extend(part)
        merged.sort(key=lambda r: (-r.score, r.chunk.chunk_id))
        return merged[:top_k]


def expansion_terms(
    views: Sequence[ChunkView], query_terms: Mapping[str, float], cfg: RetrievalSettings
) -> dict[str, float]:
    """The terms most frequent (relative to chunk length) in the feedback chunks,
    not already in the query, each weighted ``feedback_term_weight``."""
    weight: dict[str, float] = {}
    for v in views:
        tf = analyze(v.text)
        length = sum(tf.values()) or 1
        for term, count in tf.items():
            if term not in query_terms:
                weight[term] = weight.get(term, 0.0) + count / length
    best = sorted(weight.items(), key=lambda kv: (-kv[1], kv[0]))[: cfg.feedback_terms]
    return {term: cfg.feedback_term_weight for term, _ in best}


def embedding_vectors(body: Mapping[str, Any], count: int) -> NDArray[np.float32]:
    """Unit vectors, in input order, from an OpenAI ``/embeddings`` answer for ``count``
    texts (``ValueError`` when it holds another number of vectors)."""
    data = sorted(body.get("data") or [], key=lambda d: int(d.get("index", 0)))
    vectors = np.asarray([d["embedding"] for d in data], dtype=np.float32)
    if vectors.shape[0] != count:
        raise ValueError(f"expected {count} embeddings, got {vectors.shape[0]}")
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    out: NDArray[np.float32] = (vectors / np.maximum(norms, 1e-12)).astype(np.float32)
    return out


def unit(vec: Sequence[float] | Vector) -> Vector:
    """A float32 unit vector."""
    v = np.asarray(vec, dtype=np.float32)
    norm = float(np.linalg.norm(v))
    out: Vector = v / norm if norm > 0 else v
    return out
