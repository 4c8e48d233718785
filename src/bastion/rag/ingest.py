"""Incremental ingestion: parse -> chunk -> embed (through the gateway) -> index.

A document is re-embedded only when its content hash (title, text, metadata
and ACL) changed since the stored version; then its old chunks are replaced
atomically and its version goes up by one. Documents that were under a
*replace scope* of this run (a folder or file that was ingested again) but
did not come back are deleted with their chunks.

Chunks of many documents are embedded together in batches of about
``batch_chunks``, so the embedder always runs full, length-sorted batches.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from bastion.rag.chunk import ChunkDraft, TokenCounter, chunk_document
from bastion.rag.extract import ExtractFailure, SourceDocument
from bastion.rag.lexical import analyze
from bastion.rag.ports import Acl, Chunk, Collection, Document, RagStore

BatchEmbedder = Callable[[str, list[str]], Awaitable[tuple[NDArray[np.float32], int]]]
"""``(embedding model alias, texts) -> (unit vectors (n, d), tokens billed)``."""

Progress = Callable[[int, int], None]


@dataclass(slots=True)
class IngestReport:
    added: int = 0
    updated: int = 0
    unchanged: int = 0
    deleted: int = 0
    chunks_added: int = 0
    chunks_removed: int = 0
    tokens: int = 0
    """Tokens of the embedded chunk texts (as the embedding model counted them)."""
    seconds: float = 0.0
    failures: list[ExtractFailure] = field(default_factory=list)

    def to_json(self) -> dict[str, object]:
        return {
            "documents": {
                "added": self.added,
                "updated": self.updated,
                "unchanged": self.unchanged,
                "deleted": self.deleted,
                "failed": len(self.failures),
            },
            "chunks": {"added": self.chunks_added, "removed": self.chunks_removed},
            "tokens": self.tokens,
            "seconds": round(self.seconds, 3),
            "failures": [{"source": f.source, "reason": f.reason} for f in self.failures],
        }


def stored_hash(doc: SourceDocument, acl: Acl) -> str:
    """What decides whether a document changed: its content and its ACL."""
    h = hashlib.sha256(doc.content_hash().encode())
    h.update(repr((acl.teams, acl.keys)).encode())
    return h.hexdigest()


def chunk_id(collection_id: str, doc_id: str, version: int, ordinal: int) -> str:
    digest = hashlib.sha1(f"{collection_id}\x00{doc_id}\x00{version}\x00{ordinal}".encode())
    return "chk_" + digest.hexdigest()[:24]


def embed_input(doc: SourceDocument, draft: ChunkDraft) -> str:
    """What the embedder sees: the title and heading path give a chunk its context."""
    head = " / ".join(p for p in (doc.title, *draft.heading_path) if p)
    return f"{head}\n{draft.text}" if head else draft.text


@dataclass(slots=True)
class _Pending:
    doc: SourceDocument
    drafts: list[ChunkDraft]
    version: int
    ingested_at: float
    hash: str
    old_chunks: int


@dataclass(slots=True)
class Ingestor:
    store: RagStore
    embed: BatchEmbedder
    counter: TokenCounter
    batch_chunks: int = 64
    clock: Callable[[], float] = time.time

    async def ingest(
        self,
        collection: Collection,
        docs: Iterable[SourceDocument],
        *,
        acl: Acl | None = None,
        replace_scopes: Sequence[str] = (),
        failures: Sequence[ExtractFailure] = (),
        total: int | None = None,
        progress: Progress | None = None,
    ) -> IngestReport:
        """Bring ``collection`` in line with ``docs``; see the module docstring."""
        started = time.perf_counter()
        acl = acl or Acl()
        report = IngestReport(failures=list(failures))
        states = await asyncio.to_thread(self.store.document_states, collection.id)
        seen: set[str] = set()
        pending: list[_Pending] = []
        queued = 0
        done = 0
        for doc in docs:
            done += 1
            if doc.id in seen:
                report.failures.append(
                    ExtractFailure(doc.source, f"duplicate document id {doc.id!r} in this batch")
                )
                continue
            seen.add(doc.id)
            digest = stored_hash(doc, acl)
            old = states.get(doc.id)
            if old is not None and old.content_hash == digest:
                report.unchanged += 1
            else:
                drafts = await asyncio.to_thread(
                    chunk_document,
                    doc,
                    self.counter,
                    size=collection.chunk_tokens,
                    overlap=collection.chunk_overlap,
                )
                pending.append(
                    _Pending(
                        doc,
                        drafts,
                        old.version + 1 if old else 1,
                        old.ingested_at if old else self.clock(),
                        digest,
                        old.chunk_count if old else 0,
                    )
                )
                queued += len(drafts)
                if old is None:
                    report.added += 1
                else:
                    report.updated += 1
                if queued >= self.batch_chunks:
                    await self._flush(collection, pending, acl, report)
                    pending, queued = [], 0
            if progress is not None:
                progress(done, total or done)
        if pending:
            await self._flush(collection, pending, acl, report)
        gone = [
            s.id
            for s in states.values()
            if s.id not in seen and any(_under(s.source, scope) for scope in replace_scopes)
        ]
        if gone:
            report.chunks_removed += sum(states[i].chunk_count for i in gone)
            report.deleted = await asyncio.to_thread(
                self.store.delete_documents, collection.id, gone
            )
        report.seconds = time.perf_counter() - started
        return report

    async def _flush(
        self, collection: Collection, batch: list[_Pending], acl: Acl, report: IngestReport
    ) -> None:
        texts = [embed_input(p.doc, d) for p in batch for d in p.drafts]
        if texts:
            vectors, tokens = await self.embed(collection.embedding_model, texts)
            report.tokens += tokens
        else:
            vectors = np.zeros((0, collection.dimensions), dtype=np.float32)
        now = self.clock()
        at = 0
        for p in batch:
            chunks = []
            for d in p.drafts:
                chunks.append(
                    Chunk(
                        id=chunk_id(collection.id, p.doc.id, p.version, d.ordinal),
                        document_id=p.doc.id,
                        ordinal=d.ordinal,
                        text=d.text,
                        tokens=d.tokens,
                        terms=analyze(" ".join((p.doc.title, *d.heading_path, d.text))),
                        embedding=vectors[at],
                        metadata={
                            "heading_path": list(d.heading_path),
                            "page": d.page,
                            "start": d.start,
                            "end": d.end,
                        },
                    )
                )
                at += 1
            document = Document(
                id=p.doc.id,
                collection_id=collection.id,
                source=p.doc.source,
                content_hash=p.hash,
                title=p.doc.title,
                version=p.version,
                metadata=dict(p.doc.metadata),
                acl=acl,
                ingested_at=p.ingested_at,
                updated_at=now,
                chunk_count=len(chunks),
            )
            await asyncio.to_thread(self.store.put_document, document, chunks)
            report.chunks_removed += p.old_chunks
            report.chunks_added += len(chunks)


def _under(source: str, scope: str) -> bool:
    """Whether ``source`` was produced by ingesting ``scope`` (a folder or file URI)."""
    if source == scope:
        return True
    if scope.endswith("/"):
        return source.startswith(scope)
    return source.startswith(scope + "#") or source.startswith(scope + "/")
