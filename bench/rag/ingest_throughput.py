"""End-to-end ingestion throughput: parse, chunk, embed (through the gateway), index.

Writes a folder of Markdown files (Cranfield abstracts joined into ~2,000-word
documents with headings, or synthetic prose when the data is absent), then
runs what ``bastion ingest FOLDER`` runs: discover and parse the files, chunk
them into ~256-token chunks, embed every chunk with the bundled MiniLM
through a :class:`~bastion.gateway.service.Gateway` on the embedded policy,
and write chunks, terms and vectors to the embedded store. Prints tokens/s
(the embedder's token count of the chunk texts) and chunks/s, and a second
run over the unchanged folder (which must embed nothing).

    .venv/bin/python bench/rag/ingest_throughput.py [--docs 120]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from bastion.config.defaults import embedded_policy
from bastion.core.types import EmbeddingRequest
from bastion.gateway.service import Gateway
from bastion.providers.base import CallContext
from bastion.rag.chunk import WordPieceCounter
from bastion.rag.extract import discover, extract_file
from bastion.rag.ingest import Ingestor
from bastion.rag.ports import Collection
from bastion.rag.retrieve import embedding_vectors
from bastion.store.rag.embedded import EmbeddedRagStore

CRANFIELD = Path(__file__).resolve().parents[3] / "shared/data/ir/cranfield/corpus.jsonl"


def paragraphs() -> list[str]:
    if CRANFIELD.exists():
        rows = [json.loads(line) for line in CRANFIELD.open()]
        return [f"{r['title']} . {r['text']}" for r in rows if r["text"].strip()]
    rng = random.Random(0)
    words = ["flow", "pressure", "wing", "boundary", "layer", "shock", "heat", "transfer"]
    return [" ".join(rng.choice(words) for _ in range(160)) + " ." for _ in range(1400)]


def write_corpus(folder: Path, docs: int) -> None:
    paras = paragraphs()
    for d in range(docs):
        lines = [f"# Report {d}", ""]
        for s in range(4):
            lines += [f"## Section {s}", ""]
            for p in range(3):
                lines += [paras[(d * 12 + s * 3 + p) % len(paras)], ""]
        (folder / f"report-{d:04d}.md").write_text("\n".join(lines))


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--docs", type=int, default=120)
    args = ap.parse_args()
    gateway = Gateway(embedded_policy())
    plan = gateway.rt.plans["local-embed"]

    async def embed(alias: str, texts: list[str]) -> tuple[NDArray[np.float32], int]:
        ctx = CallContext("bench-" + uuid.uuid4().hex[:8])
        _, body = await gateway.embed(plan, EmbeddingRequest(model=alias, input=texts), ctx)
        return embedding_vectors(body, len(texts)), int(body["usage"]["prompt_tokens"])

    await embed("local-embed", ["warm up the model"])  # load outside the timing
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "docs"
        root.mkdir()
        write_corpus(root, args.docs)
        store = EmbeddedRagStore(Path(tmp) / "rag.db")
        coll = store.create_collection(
            Collection("col_ingest", "bench", "ingest", "local-embed", 384, created_at=time.time())
        )
        ingestor = Ingestor(store, embed, WordPieceCounter())
        for label in ("first ingest", "unchanged re-ingest"):
            t0 = time.perf_counter()
            docs = [d for path, r in discover([root]) for d in extract_file(path, r)]
            report = await ingestor.ingest(
                coll, docs, replace_scopes=[root.resolve().as_uri() + "/"]
            )
            took = time.perf_counter() - t0
            chunks = report.chunks_added
            avg = report.tokens / chunks if chunks else 0
            print(
                f"{label}: {len(docs)} docs, {chunks} chunks (avg {avg:.0f} tokens), "
                f"{report.tokens:,} tokens in {took:.2f} s -> "
                f"{report.tokens / took:,.0f} tokens/s, {chunks / took:.1f} chunks/s"
            )
        store.close()
    await gateway.aclose()


if __name__ == "__main__":
    asyncio.run(main())
