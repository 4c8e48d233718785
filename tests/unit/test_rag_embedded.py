"""The embedded store's in-memory index: bulk load, change log, compaction."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np

from bastion.rag.ports import Access, Acl, Chunk, Collection, Document, Filters
from bastion.store.rag.embedded import EmbeddedRagStore

ADMIN = Access("t", all_documents=True)
TEAM = Access("t", team_id="red")


def put(store: EmbeddedRagStore, doc: int, rnd: random.Random, rng: np.random.Generator) -> None:
    chunks = []
    for o in range(rnd.randint(1, 4)):
        words = rnd.choices([f"w{i}" for i in range(60)], k=rnd.randint(5, 30))
        terms: dict[str, int] = {}
        for w in words:
            terms[w] = terms.get(w, 0) + 1
        vec = rng.standard_normal(16).astype(np.float32)
        chunks.append(
            Chunk(
                f"d{doc}-{o}",
                f"d{doc}",
                o,
                " ".join(words),
                len(words),
                terms,
                vec / np.linalg.norm(vec),
            )
        )
    acl = Acl(teams=("red",)) if doc % 3 == 0 else Acl()
    store.put_document(Document(f"d{doc}", "c1", f"s:{doc}", str(doc), acl=acl), chunks)


def searches(store: EmbeddedRagStore) -> list[object]:
    rng = np.random.default_rng(1)
    out: list[object] = []
    for i in range(8):
        q = {f"w{i}": 1, f"w{i + 7}": 2}
        v = rng.standard_normal(16).astype(np.float32)
        for access in (ADMIN, TEAM, Access("t", team_id="blue")):
            out.append(store.search_text("c1", q, access, Filters(), 10))
            out.append(store.search_vector("c1", v / np.linalg.norm(v), access, Filters(), 10))
    return out


def test_a_fresh_process_sees_what_another_one_wrote(tmp_path: Path) -> None:
    rnd, rng = random.Random(3), np.random.default_rng(3)
    writer = EmbeddedRagStore(tmp_path / "rag.db")
    writer.create_collection(Collection("c1", "t", "docs", "m", 16))
    for d in range(40):
        put(writer, d, rnd, rng)
    before = searches(writer)  # the writer's index: built, then fed by the change log
    reader = EmbeddedRagStore(tmp_path / "rag.db")  # bulk-loaded from the file
    assert searches(reader) == before
    # more writes (replacements and deletions, enough to compact) reach the reader too
    for d in range(0, 40, 2):
        put(writer, d, rnd, rng)
    writer.delete_documents("c1", [f"d{d}" for d in range(1, 30, 2)])
    after = searches(writer)
    assert after != before
    assert searches(reader) == after
    assert reader.counts("c1", ADMIN) == writer.counts("c1", ADMIN)
    assert EmbeddedRagStore(tmp_path / "rag.db").counts("c1", TEAM) == reader.counts("c1", TEAM)
