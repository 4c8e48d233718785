"""Incremental ingestion on the embedded store, with a deterministic fake embedder."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import numpy as np
import pytest
from numpy.typing import NDArray

from bastion.rag.chunk import WordPieceCounter
from bastion.rag.extract import discover, extract_file
from bastion.rag.ingest import Ingestor, IngestReport
from bastion.rag.ports import Access, Acl, Collection, Filters
from bastion.store.rag.embedded import EmbeddedRagStore

ADMIN = Access("t1", all_documents=True)


class HashEmbedder:
    """Bag-of-words vectors: texts sharing words are close. Counts every call."""

    def __init__(self) -> None:
        self.texts: list[str] = []

    async def __call__(self, alias: str, texts: list[str]) -> tuple[NDArray[np.float32], int]:
        self.texts.extend(texts)
        out = np.zeros((len(texts), 64), dtype=np.float32)
        for i, t in enumerate(texts):
            for w in t.lower().split():
                out[i, int(hashlib.md5(w.encode()).hexdigest(), 16) % 64] += 1.0
        out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-9)
        return out, sum(len(t.split()) for t in texts)


def paragraph(seed: int, words: int = 120) -> str:
    rng = np.random.default_rng(seed)
    vocab = [f"word{i}" for i in range(400)]
    sentences = []
    for _ in range(words // 12):
        sentences.append(" ".join(rng.choice(vocab, 12)).capitalize() + ".")
    return " ".join(sentences)


@pytest.fixture
def setup(tmp_path: Path) -> tuple[EmbeddedRagStore, Collection, Ingestor, HashEmbedder, Path]:
    store = EmbeddedRagStore(tmp_path / "rag.db")
    coll = store.create_collection(
        Collection("col_1", "t1", "docs", "fake-embed", 64, chunk_tokens=128, chunk_overlap=16)
    )
    emb = HashEmbedder()
    folder = tmp_path / "docs"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.md").write_text("# Alpha\n\n" + paragraph(1, 400))
    (folder / "b.txt").write_text(paragraph(2, 60))
    (folder / "sub" / "c.md").write_text("# Gamma\n\n## One\n\n" + paragraph(3, 200))
    (folder / "rows.jsonl").write_text(
        '{"id": "r1", "title": "Row one", "text": "The first row text."}\n'
        '{"id": "r2", "title": "Row two", "text": "The second row text."}\n'
    )
    return store, coll, Ingestor(store, emb, WordPieceCounter(), batch_chunks=8), emb, folder


def scope_of(folder: Path) -> str:
    return folder.resolve().as_uri() + "/"


async def ingest_folder(ing: Ingestor, coll: Collection, folder: Path) -> IngestReport:
    docs = [d for path, root in discover([folder]) for d in extract_file(path, root)]
    return await ing.ingest(coll, docs, replace_scopes=[scope_of(folder)])


def stored_chunks(store: EmbeddedRagStore, coll: Collection) -> int:
    return store.counts(coll.id, ADMIN)[1]


async def test_three_ingests_with_an_edit_and_a_delete_count_chunks_exactly(
    setup: tuple[EmbeddedRagStore, Collection, Ingestor, HashEmbedder, Path],
) -> None:
    store, coll, ing, emb, folder = setup
    first = await ingest_folder(ing, coll, folder)
    assert (first.added, first.updated, first.unchanged, first.deleted) == (5, 0, 0, 0)
    per_doc = {d.id: d.chunk_count for d in store.list_documents(coll.id, ADMIN)}
    assert set(per_doc) == {"a.md", "b.txt", "sub/c.md", "r1", "r2"}
    assert per_doc["a.md"] > 1  # 400 words in 128-token chunks
    total = sum(per_doc.values())
    assert first.chunks_added == total == stored_chunks(store, coll) == len(emb.texts)

    second = await ingest_folder(ing, coll, folder)
    assert (second.added, second.updated, second.unchanged, second.deleted) == (0, 0, 5, 0)
    assert second.chunks_added == second.chunks_removed == 0
    assert len(emb.texts) == total  # nothing re-embedded
    assert stored_chunks(store, coll) == total

    (folder / "b.txt").write_text(paragraph(9, 300))
    (folder / "sub" / "c.md").unlink()
    embedded_before = len(emb.texts)
    third = await ingest_folder(ing, coll, folder)
    assert (third.added, third.updated, third.unchanged, third.deleted) == (0, 1, 3, 1)
    after = {d.id: d for d in store.list_documents(coll.id, ADMIN)}
    assert set(after) == {"a.md", "b.txt", "r1", "r2"}
    assert after["b.txt"].version == 2 and after["a.md"].version == 1
    new_b = after["b.txt"].chunk_count
    assert len(emb.texts) - embedded_before == new_b  # only the edited file
    assert third.chunks_added == new_b
    assert third.chunks_removed == per_doc["b.txt"] + per_doc["sub/c.md"]
    expected = total - per_doc["b.txt"] - per_doc["sub/c.md"] + new_b
    assert stored_chunks(store, coll) == expected
    # the deleted document's chunks are gone from search too
    hits = store.search_text(coll.id, {"gamma": 1}, ADMIN, Filters(), 50)
    assert hits == []


async def test_ingested_and_updated_times_and_the_acl(
    setup: tuple[EmbeddedRagStore, Collection, Ingestor, HashEmbedder, Path],
) -> None:
    store, coll, ing, _, folder = setup
    t0 = time.time()
    docs = [d for path, root in discover([folder / "b.txt"]) for d in extract_file(path, root)]
    await ing.ingest(coll, docs, acl=Acl(teams=("red",)))
    doc = store.get_document(coll.id, "b.txt", ADMIN)
    assert doc is not None and doc.acl.teams == ("red",)
    assert doc.ingested_at >= t0 and doc.updated_at >= doc.ingested_at
    assert store.get_document(coll.id, "b.txt", Access("t1", team_id="blue")) is None
    # an ACL change alone is a change: the document is re-written with the new ACL
    report = await ing.ingest(coll, docs, acl=Acl())
    assert report.updated == 1
    again = store.get_document(coll.id, "b.txt", Access("t1", team_id="blue"))
    assert again is not None and again.ingested_at == doc.ingested_at and again.version == 2


async def test_duplicate_ids_in_one_batch_are_reported(
    setup: tuple[EmbeddedRagStore, Collection, Ingestor, HashEmbedder, Path],
) -> None:
    store, coll, ing, _, folder = setup
    docs = extract_file(folder / "rows.jsonl", folder)
    report = await ing.ingest(coll, [*docs, docs[0]])
    assert report.added == 2
    assert len(report.failures) == 1 and "duplicate" in report.failures[0].reason
    assert store.counts(coll.id, ADMIN)[0] == 2
