"""Retrieval quality on a BEIR-format collection (default: Cranfield).

Ingests the corpus into an embedded RAG store (real chunker, analyser and
bundled MiniLM embedder), then evaluates BM25 alone, dense alone and the
hybrid fusions with :mod:`bastion.rag.evaluation` (nDCG@10, Recall@10,
Recall@100, MRR@10). Chunk hits are mapped to documents (first occurrence).

The fused weight is not tuned on the test queries: ``--cv`` reports a 2-fold
cross-validated hybrid (the weight picked on one half of the queries, scored
on the other, and the other way round) next to the fixed default.

    .venv/bin/python bench/rag/cranfield.py [--data ../shared/data/ir/cranfield]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from bastion.providers.local_embed import OnnxEmbedder
from bastion.rag.chunk import WordPieceCounter
from bastion.rag.evaluation import BeirDataset, RetrievalReport, evaluate, load_beir
from bastion.rag.extract import Section, SourceDocument
from bastion.rag.ingest import Ingestor
from bastion.rag.ports import Access, Collection
from bastion.rag.retrieve import RetrievalSettings, Retriever
from bastion.store.rag.embedded import EmbeddedRagStore

DEFAULT_DATA = Path(__file__).resolve().parents[3] / "shared" / "data" / "ir" / "cranfield"
ACCESS = Access("bench", all_documents=True)


async def build(
    data: BeirDataset, folder: Path, embedder: OnnxEmbedder
) -> tuple[EmbeddedRagStore, Collection, float]:
    store = EmbeddedRagStore(folder / "rag.db")
    coll = store.create_collection(
        Collection("col_bench", "bench", "cranfield", "local-embed", 384, created_at=time.time())
    )

    async def embed(alias: str, texts: list[str]) -> tuple[NDArray[np.float32], int]:
        vectors, counts = await asyncio.to_thread(embedder.embed_with_counts, texts)
        return vectors, sum(counts)

    docs = [
        SourceDocument(
            id=doc_id,
            title=title,
            source=f"cranfield:{doc_id}",
            sections=[Section(text)] if text.strip() else [],
            metadata={},
        )
        for doc_id, (title, text) in data.corpus.items()
    ]
    t0 = time.perf_counter()
    report = await Ingestor(store, embed, WordPieceCounter()).ingest(coll, docs)
    took = time.perf_counter() - t0
    print(
        f"ingested {len(docs)} docs -> {report.chunks_added} chunks, "
        f"{report.tokens} tokens in {took:.1f} s ({report.tokens / took:,.0f} tokens/s)"
    )
    return store, coll, took


async def run_queries(
    retriever: Retriever, coll: Collection, data: BeirDataset, settings: RetrievalSettings
) -> dict[str, list[str]]:
    run: dict[str, list[str]] = {}
    for qid, text in data.queries.items():
        results = await retriever.search(coll, text, ACCESS, top_k=150, settings=settings)
        ranking = list(dict.fromkeys(r.chunk.document_id for r in results))
        run[qid] = ranking[:100]
    return run


def subset(data: BeirDataset, ids: set[str]) -> dict[str, dict[str, int]]:
    return {q: r for q, r in data.qrels.items() if q in ids}


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--cv", action="store_true", help="2-fold cross-validated fusion weight")
    ap.add_argument("--store", type=Path, help="reuse (or create) the ingested store here")
    args = ap.parse_args()
    data = load_beir(args.data)
    print(f"{data.name}: {len(data.corpus)} docs, {len(data.queries)} queries")
    embedder = OnnxEmbedder()
    vec_cache: dict[str, NDArray[np.float32]] = {}

    async def embed_query(alias: str, text: str) -> NDArray[np.float32]:
        if text not in vec_cache:
            vec_cache[text] = (await asyncio.to_thread(embedder.embed, [text]))[0]
        return vec_cache[text]

    with tempfile.TemporaryDirectory() as tmp:
        folder = args.store or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        if (folder / "rag.db").exists():
            store = EmbeddedRagStore(folder / "rag.db")
            found = store.get_collection("bench", "cranfield")
            assert found is not None, "the store holds no cranfield collection"
            coll = found
        else:
            store, coll, _ = await build(data, folder, embedder)
        retriever = Retriever(store, embed_query)
        base = RetrievalSettings()
        systems = {
            "BM25 (k1 1.2, b 0.75, Snowball, stop words)": replace(base, mode="bm25"),
            "dense (bundled all-MiniLM-L6-v2)": replace(base, mode="dense"),
            "hybrid, RRF k=60 (equal weights)": replace(base, fusion="rrf", text_weight=0.5),
            f"hybrid, weighted z-scores (default, BM25 weight {base.text_weight})": base,
            "hybrid + pseudo-relevance feedback (5 chunks)": replace(base, feedback_chunks=5),
        }
        reports: dict[str, RetrievalReport] = {}
        for label, settings in systems.items():
            t0 = time.perf_counter()
            run = await run_queries(retriever, coll, data, settings)
            took = (time.perf_counter() - t0) / len(data.queries) * 1000
            reports[label] = evaluate(run, data.qrels)
            print(f"  {label}: {took:.2f} ms/query")
        if args.cv:
            weights = [round(w, 2) for w in np.arange(0.1, 0.75, 0.05)]
            runs = {}
            for w in weights:
                runs[w] = await run_queries(retriever, coll, data, replace(base, text_weight=w))
            qids = sorted(data.qrels, key=int)
            folds = [set(qids[0::2]), set(qids[1::2])]
            merged: dict[str, list[str]] = {}
            picks = []
            for train, test in ((folds[0], folds[1]), (folds[1], folds[0])):
                best = max(
                    weights,
                    key=lambda w: evaluate(runs[w], subset(data, train)).metrics["ndcg@10"],
                )
                picks.append(best)
                merged.update({q: runs[best][q] for q in test})
            reports[f"hybrid, weighted, 2-fold CV weight (picked {picks})"] = evaluate(
                merged, data.qrels
            )
        store.close()
    first = next(iter(reports.values()))
    print()
    print(first.table_header("system"))
    for label, report in reports.items():
        print(report.table_row(label))


if __name__ == "__main__":
    asyncio.run(main())
