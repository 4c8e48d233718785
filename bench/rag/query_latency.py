"""Hybrid retrieval latency at 10k and 100k chunks (synthetic corpus, rerank excluded).

Chunks get ~150 distinct terms drawn from a Zipf-distributed 50k-term
vocabulary (the shape of ~256-token English chunks after stop words) and
unit 384-dim vectors drawn around 2,000 topic centres (sentence embeddings
cluster by topic; uniformly random vectors would make every neighbour
equally near and any approximate index look wrong). Documents carry a mix
of ACLs: half open to the tenant, a quarter per team, so every query also
builds the ACL mask. Queries have 12 Zipf terms and a vector near a random
chunk; the query vector is precomputed (the embedder's own latency is
measured by ``embed_throughput.py``).

Each size is timed end to end through :class:`bastion.rag.retrieve.Retriever`
(BM25 + vector + fusion + fetching the top 10 chunks with their documents)
on the embedded store, after the index is loaded and, above 30k chunks, its
HNSW graph built (:mod:`bastion.store.rag.ann`). The dense top-10 recall of
the graph against an exact scan of the same visible rows is printed too.

    .venv/bin/python bench/rag/query_latency.py [--sizes 10000 100000] [--queries 300]
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import pstats
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from bastion.rag.ports import Access, Acl, Chunk, Collection, Document, Filters
from bastion.rag.retrieve import RetrievalSettings, Retriever
from bastion.store.rag.embedded import EmbeddedRagStore
from bastion.store.rag.memory import CollectionIndex

VOCAB = 50_000
DIMS = 384
CHUNKS_PER_DOC = 4


def zipf_terms(rng: np.random.Generator, n: int) -> NDArray[np.int64]:
    ranks = rng.zipf(1.1, size=n * 3)
    ranks = ranks[ranks <= VOCAB]
    return ranks[:n]


CENTRES = np.random.default_rng(99).standard_normal((2000, DIMS)).astype(np.float32)


def topic_vector(rng: np.random.Generator) -> NDArray[np.float32]:
    vec = CENTRES[rng.integers(0, len(CENTRES))] + 0.6 * rng.standard_normal(DIMS).astype(
        np.float32
    )
    out: NDArray[np.float32] = vec / np.linalg.norm(vec)
    return out


def fill(store: EmbeddedRagStore, coll: Collection, size: int, seed: int = 0) -> float:
    rng = np.random.default_rng(seed)
    t0 = time.perf_counter()
    acls = [Acl(), Acl(), Acl(teams=("alpha",)), Acl(teams=("beta",))]
    for d in range(size // CHUNKS_PER_DOC):
        chunks = []
        for o in range(CHUNKS_PER_DOC):
            ids, counts = np.unique(zipf_terms(rng, 256), return_counts=True)
            vec = topic_vector(rng)
            chunks.append(
                Chunk(
                    id=f"c{d}-{o}",
                    document_id=f"d{d}",
                    ordinal=o,
                    text=f"synthetic chunk {d}-{o}",
                    tokens=256,
                    terms={f"t{i}": int(c) for i, c in zip(ids, counts, strict=True)},
                    embedding=vec,
                )
            )
        store.put_document(
            Document(
                id=f"d{d}",
                collection_id=coll.id,
                source=f"synthetic:{d}",
                content_hash=str(d),
                acl=acls[d % 4],
                updated_at=time.time(),
            ),
            chunks,
        )
    return time.perf_counter() - t0


def pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


def recall(index: CollectionIndex, qs: list[tuple[dict[str, int], NDArray[np.float32]]]) -> float:
    """Top-10 overlap of the graph's answers with an exact scan of the same rows."""
    access = Access("bench", team_id="alpha", key_id="k1")
    graph = index._graph
    found = []
    for _, vec in qs[:100]:
        approx = {h.chunk_id for h in index.search_vector(vec, access, Filters(), 10)}
        index._graph = None
        exact = {h.chunk_id for h in index.search_vector(vec, access, Filters(), 10)}
        index._graph = graph
        found.append(len(approx & exact) / 10)
    return float(np.mean(found))


async def measure(
    size: int, queries: int, tmp: Path, profile: bool = False
) -> list[tuple[str, float, float]]:
    store = EmbeddedRagStore(tmp / f"rag-{size}.db")
    found = store.get_collection("bench", f"syn{size}")
    if found is None:
        coll = store.create_collection(Collection("col_lat", "bench", f"syn{size}", "x", DIMS))
        took = fill(store, coll, size)
        print(f"{size:,} chunks written in {took:.1f} s")
    else:
        coll = found
    rng = np.random.default_rng(1)
    qs = []
    for _ in range(queries):
        ids, counts = np.unique(zipf_terms(rng, 12), return_counts=True)
        vec = topic_vector(rng)
        terms = {f"t{i}": int(c) for i, c in zip(ids, counts, strict=True)}
        qs.append((terms, vec))
    current: dict[str, NDArray[np.float32]] = {}

    async def embed(alias: str, text: str) -> NDArray[np.float32]:
        return current["v"]

    base = RetrievalSettings()
    retriever = Retriever(store, embed, base)
    t0 = time.perf_counter()
    store.search_text(coll.id, {"t1": 1}, Access("bench"), Filters(), 1)
    print(f"  index load: {time.perf_counter() - t0:.2f} s")
    index = store._index(coll.id)
    t0 = time.perf_counter()
    if index.wait_for_graph():
        print(f"  HNSW graph build: {time.perf_counter() - t0:.1f} s")
        print(f"  dense recall@10 vs exact: {recall(index, qs):.3f}")
    rows = []
    for label, access in (
        ("hybrid, team key (ACL mask)", Access("bench", team_id="alpha", key_id="k1")),
        ("hybrid, tenant admin", Access("bench", all_documents=True)),
    ):
        for mode in ("hybrid", "bm25", "dense"):
            if mode != "hybrid" and "admin" in label:
                continue
            settings = replace(base, mode=mode)  # type: ignore[arg-type]
            times = []
            prof = cProfile.Profile() if profile and mode == "hybrid" else None
            if prof is not None:
                prof.enable()
            for terms, vec in qs:
                current["v"] = vec
                query = " ".join(" ".join([t] * n) for t, n in terms.items())
                t1 = time.perf_counter()
                await retriever.search(coll, query, access, top_k=10, settings=settings)
                times.append((time.perf_counter() - t1) * 1000)
            if prof is not None:
                prof.disable()
                pstats.Stats(prof).sort_stats("cumulative").print_stats(25)
            name = label if mode == "hybrid" else f"{mode} only, team key"
            rows.append((name, statistics.median(times), pct(times, 95)))
    store.close()
    return rows


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    ap.add_argument("--queries", type=int, default=300)
    ap.add_argument("--store", type=Path, help="keep the stores in this folder and reuse them")
    ap.add_argument("--profile", action="store_true", help="print a cProfile of the hybrid runs")
    args = ap.parse_args()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.store or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        for size in args.sizes:
            results[size] = await measure(size, args.queries, folder, args.profile)
    print("\n| chunks | query | p50 ms | p95 ms |\n| --- | --- | --- | --- |")
    for size, rows in results.items():
        for name, p50, p95 in rows:
            print(f"| {size:,} | {name} | {p50:.2f} | {p95:.2f} |")


if __name__ == "__main__":
    asyncio.run(main())
