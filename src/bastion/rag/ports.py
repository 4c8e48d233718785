"""The RAG storage ports: what retrieval needs from a store, and the records it keeps.

Three ports, implemented together by each backend (:mod:`bastion.store.rag`:
embedded SQLite + in-memory indexes, and PostgreSQL + pgvector):

* :class:`DocumentStore` keeps collections, documents (with version, content
  hash, metadata and ACL) and their chunks; replacing a document's chunks is
  atomic.
* :class:`TextIndex` ranks chunks by BM25 over pre-analysed terms
  (:mod:`bastion.rag.lexical` analyses text the same way for both backends).
* :class:`VectorIndex` ranks chunks by inner product of unit vectors.

**Access control is part of every query.** Each search takes an
:class:`Access` and a :class:`Filters`; an implementation applies both while
scoring, so a chunk the caller may not see is never scored, counted or
returned, and BM25's corpus statistics (document count, average length,
document frequencies) are computed over the visible chunks only: scores leak
nothing about documents the caller cannot read.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray

Vector = NDArray[np.float32]

BM25_K1 = 1.2
BM25_B = 0.75


@dataclass(frozen=True, slots=True)
class Acl:
    """Who may read a document beyond the owning tenant's admins.

    Empty ``teams`` and ``keys``: every key of the owning tenant. Otherwise a
    key may read the document when its team or its own id is listed.
    """

    teams: tuple[str, ...] = ()
    keys: tuple[str, ...] = ()

    @property
    def open(self) -> bool:
        return not self.teams and not self.keys

    def allows(self, access: Access) -> bool:
        if access.all_documents or self.open:
            return True
        return (access.team_id is not None and access.team_id in self.teams) or (
            access.key_id is not None and access.key_id in self.keys
        )

    def to_json(self) -> dict[str, list[str]]:
        return {"teams": list(self.teams), "keys": list(self.keys)}

    @classmethod
    def from_json(cls, raw: Mapping[str, Any] | None) -> Acl:
        raw = raw or {}
        return cls(
            teams=tuple(sorted(str(t) for t in raw.get("teams") or ())),
            keys=tuple(sorted(str(k) for k in raw.get("keys") or ())),
        )


@dataclass(frozen=True, slots=True)
class Access:
    """The caller a search runs for: its tenant, team and key.

    ``all_documents`` (tenant admins, ingestion jobs) ignores document ACLs
    inside the tenant; the tenant boundary itself is never crossed, because a
    collection belongs to one tenant.
    """

    tenant_id: str
    team_id: str | None = None
    key_id: str | None = None
    all_documents: bool = False


@dataclass(frozen=True, slots=True)
class Filters:
    """Conditions on documents, applied inside the query.

    ``metadata``: each key must equal the value, or be one of the values when
    a list is given. ``updated_after``: documents updated at or after this
    Unix time (the ``max_age`` filter). ``document_ids``: only these documents.
    """

    metadata: Mapping[str, Any] = field(default_factory=dict)
    updated_after: float | None = None
    document_ids: tuple[str, ...] | None = None

    def matches(self, doc_metadata: Mapping[str, Any], updated_at: float, doc_id: str) -> bool:
        if self.updated_after is not None and updated_at < self.updated_after:
            return False
        if self.document_ids is not None and doc_id not in self.document_ids:
            return False
        for key, want in self.metadata.items():
            have = doc_metadata.get(key)
            if isinstance(want, list):
                if have not in want:
                    return False
            elif have != want:
                return False
        return True


@dataclass(frozen=True, slots=True)
class Collection:
    id: str
    tenant_id: str
    name: str
    embedding_model: str
    dimensions: int
    chunk_tokens: int = 256
    chunk_overlap: int = 32
    created_at: float = 0.0
    description: str = ""


@dataclass(slots=True)
class Document:
    """One source document; ``id`` is unique within its collection."""

    id: str
    collection_id: str
    source: str
    content_hash: str
    title: str = ""
    version: int = 1
    metadata: dict[str, Any] = field(default_factory=dict)
    acl: Acl = field(default_factory=Acl)
    ingested_at: float = 0.0
    updated_at: float = 0.0
    chunk_count: int = 0


@dataclass(slots=True)
class Chunk:
    """A piece of a document as stored and indexed.

    ``terms`` are the BM25 terms (analysed by :mod:`bastion.rag.lexical`) with
    their counts; ``length`` is their sum. ``metadata`` holds the heading path,
    page number and character offsets in the source text.
    """

    id: str
    document_id: str
    ordinal: int
    text: str
    tokens: int
    terms: dict[str, int]
    embedding: Vector
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def length(self) -> int:
        return sum(self.terms.values())


@dataclass(frozen=True, slots=True)
class Hit:
    chunk_id: str
    score: float


@dataclass(slots=True)
class ChunkView:
    """A stored chunk with its document, as a search result shows it."""

    chunk_id: str
    document_id: str
    ordinal: int
    text: str
    tokens: int
    metadata: dict[str, Any]
    source: str
    title: str
    version: int
    updated_at: float
    document_metadata: dict[str, Any]


@dataclass(frozen=True, slots=True)
class DocumentState:
    """What incremental ingestion compares: a stored document's hash and version."""

    id: str
    content_hash: str
    version: int
    source: str
    chunk_count: int = 0
    ingested_at: float = 0.0


class DocumentStore(Protocol):
    """Collections, documents and chunks of every tenant."""

    def create_collection(self, collection: Collection) -> Collection:
        """Store a new collection (``Conflict`` when the tenant has one by that name)."""
        ...

    def get_collection(self, tenant_id: str, name: str) -> Collection | None: ...

    def list_collections(self, tenant_id: str) -> list[Collection]: ...

    def delete_collection(self, collection_id: str) -> None:
        """Remove the collection with all its documents and chunks."""
        ...

    def document_states(self, collection_id: str) -> dict[str, DocumentState]:
        """Every document's id, hash, version and source (for incremental ingestion)."""
        ...

    def put_document(self, document: Document, chunks: Sequence[Chunk]) -> None:
        """Insert or replace a document and all its chunks, atomically."""
        ...

    def delete_documents(self, collection_id: str, ids: Sequence[str]) -> int:
        """Remove documents and their chunks; returns how many documents went."""
        ...

    def get_document(self, collection_id: str, doc_id: str, access: Access) -> Document | None:
        """A document the caller may read, else ``None``."""
        ...

    def list_documents(
        self, collection_id: str, access: Access, *, limit: int = 100, after: str | None = None
    ) -> list[Document]: ...

    def chunks(self, collection_id: str, ids: Sequence[str], access: Access) -> list[ChunkView]:
        """The given chunks the caller may read, in the order asked."""
        ...

    def counts(self, collection_id: str, access: Access) -> tuple[int, int]:
        """Visible documents and chunks."""
        ...

    def close(self) -> None: ...


class TextIndex(Protocol):
    def search_text(
        self,
        collection_id: str,
        terms: Mapping[str, float],
        access: Access,
        filters: Filters,
        limit: int,
    ) -> list[Hit]:
        """Top ``limit`` visible chunks by BM25 (k1 1.2, b 0.75), best first.

        ``terms`` maps each query term to its weight: how often the query has it
        (query-term frequency multiplies the term's contribution), or a fraction
        for expansion terms. Ties break by chunk id.
        """
        ...


class VectorIndex(Protocol):
    def search_vector(
        self,
        collection_id: str,
        vector: Vector,
        access: Access,
        filters: Filters,
        limit: int,
    ) -> list[Hit]:
        """Top ``limit`` visible chunks by inner product with a unit ``vector``."""
        ...

    def vectors(self, collection_id: str, ids: Sequence[str], access: Access) -> dict[str, Vector]:
        """The stored vectors of the given chunks the caller may read."""
        ...


class RagStore(DocumentStore, TextIndex, VectorIndex, Protocol):
    """A backend that implements all three ports over one consistent state."""
