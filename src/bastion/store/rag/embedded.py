"""The embedded RAG backend: one SQLite file plus in-memory indexes.

SQLite is the system of record (collections, documents, chunks with their
BM25 terms and float32 vectors). Each collection's
:class:`~bastion.store.rag.memory.CollectionIndex` is loaded from it on first
search. Every write also appends the changed document ids to a change log
(``rag_changes``); before each search the index applies the log entries it
has not seen, re-reading just those documents. So writes by another process
on the same file (``bastion ingest`` while ``bastion serve`` runs) show up
in the next search, at the cost of one indexed read. Search is exact: BM25
over the candidate rows and a matrix product for vectors, both with the ACL
and filters applied as a row mask before scoring.

The file gets its schema when it is created; an existing file with an older
schema is refused until ``bastion db upgrade``.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from bastion.core.errors import Conflict, InvalidRequest
from bastion.rag.ports import (
    Access,
    Acl,
    Chunk,
    ChunkView,
    Collection,
    Document,
    DocumentState,
    Filters,
    Hit,
    Vector,
)
from bastion.store.rag.memory import CollectionIndex, DocInfo, IndexedChunk

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS rag_schema (version INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS rag_collections (
    id TEXT PRIMARY KEY, tenant_id TEXT NOT NULL, name TEXT NOT NULL,
    embedding_model TEXT NOT NULL, dimensions INTEGER NOT NULL,
    chunk_tokens INTEGER NOT NULL, chunk_overlap INTEGER NOT NULL,
    created_at REAL NOT NULL, description TEXT NOT NULL DEFAULT '',
    UNIQUE (tenant_id, name)
);
CREATE TABLE IF NOT EXISTS rag_documents (
    collection_id TEXT NOT NULL, id TEXT NOT NULL, source TEXT NOT NULL,
    content_hash TEXT NOT NULL, title TEXT NOT NULL, version INTEGER NOT NULL,
    metadata TEXT NOT NULL, acl_teams TEXT NOT NULL, acl_keys TEXT NOT NULL,
    ingested_at REAL NOT NULL, updated_at REAL NOT NULL, chunk_count INTEGER NOT NULL,
    PRIMARY KEY (collection_id, id)
);
CREATE TABLE IF NOT EXISTS rag_chunks (
    pk INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE, collection_id TEXT NOT NULL,
    document_id TEXT NOT NULL, ordinal INTEGER NOT NULL, text TEXT NOT NULL,
    tokens INTEGER NOT NULL, metadata TEXT NOT NULL, terms TEXT NOT NULL,
    embedding BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS rag_chunks_doc ON rag_chunks(collection_id, document_id, ordinal);
CREATE TABLE IF NOT EXISTS rag_changes (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, collection_id TEXT NOT NULL, document_id TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS rag_changes_coll ON rag_changes(collection_id, seq);
"""


def _connect(path: Path) -> sqlite3.Connection:
    path.parent.mkdir(parents=True, exist_ok=True)
    new = not path.exists() or path.stat().st_size == 0
    conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA foreign_keys=OFF")
    if new:
        conn.executescript(_SCHEMA)
        conn.execute("INSERT INTO rag_schema(version) VALUES (?)", (SCHEMA_VERSION,))
    row = conn.execute(
        "SELECT name FROM sqlite_master WHERE type='table' AND name='rag_schema'"
    ).fetchone()
    version = conn.execute("SELECT max(version) FROM rag_schema").fetchone()[0] if row else 0
    if version != SCHEMA_VERSION:
        conn.close()
        raise InvalidRequest(
            f"{path}: RAG schema version {version}, this Bastion needs {SCHEMA_VERSION}; "
            "run `bastion db upgrade`"
        )
    return conn


def upgrade(path: Path) -> tuple[int, int]:
    """Create or update the schema of ``path``; returns (old, new) versions."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        has = conn.execute(
            "SELECT name FROM sqlite_master WHERE type='table' AND name='rag_schema'"
        ).fetchone()
        old = conn.execute("SELECT max(version) FROM rag_schema").fetchone()[0] if has else 0
        conn.executescript(_SCHEMA)
        if (old or 0) < SCHEMA_VERSION:
            conn.execute("INSERT INTO rag_schema(version) VALUES (?)", (SCHEMA_VERSION,))
        return int(old or 0), SCHEMA_VERSION
    finally:
        conn.close()


def _collection(row: Sequence[Any]) -> Collection:
    return Collection(
        id=row[0],
        tenant_id=row[1],
        name=row[2],
        embedding_model=row[3],
        dimensions=int(row[4]),
        chunk_tokens=int(row[5]),
        chunk_overlap=int(row[6]),
        created_at=float(row[7]),
        description=row[8],
    )


_DOC_COLS = (
    "id, collection_id, source, content_hash, title, version, metadata, acl_teams, acl_keys, "
    "ingested_at, updated_at, chunk_count"
)


def _acl(teams: str, keys: str) -> Acl:
    """A document's ACL from its two JSON columns."""
    return Acl(teams=tuple(json.loads(teams)), keys=tuple(json.loads(keys)))


def _document(row: Sequence[Any]) -> Document:
    return Document(
        id=row[0],
        collection_id=row[1],
        source=row[2],
        content_hash=row[3],
        title=row[4],
        version=int(row[5]),
        metadata=json.loads(row[6]),
        acl=_acl(row[7], row[8]),
        ingested_at=float(row[9]),
        updated_at=float(row[10]),
        chunk_count=int(row[11]),
    )


class EmbeddedRagStore:
    """:class:`~bastion.rag.ports.RagStore` on a SQLite file (thread-safe)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._conn = _connect(self.path)
        self._lock = threading.RLock()
        # searches run concurrently (BM25 and vectors of one query in two
        # threads); changing an index waits until no search is reading it
        self._idle = threading.Condition(self._lock)
        self._readers = 0
        self._indexes: dict[str, CollectionIndex] = {}

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    # ---- collections ----------------------------------------------------------

    def create_collection(self, collection: Collection) -> Collection:
        c = collection
        with self._lock:
            try:
                self._conn.execute(
                    "INSERT INTO rag_collections VALUES (?,?,?,?,?,?,?,?,?)",
                    (
                        c.id,
                        c.tenant_id,
                        c.name,
                        c.embedding_model,
                        c.dimensions,
                        c.chunk_tokens,
                        c.chunk_overlap,
                        c.created_at,
                        c.description,
                    ),
                )
            except sqlite3.IntegrityError as exc:
                raise Conflict(f"collection {c.name!r} already exists") from exc
        return collection

    def get_collection(self, tenant_id: str, name: str) -> Collection | None:
        with self._lock:
            row = self._conn.execute(
                "SELECT * FROM rag_collections WHERE tenant_id=? AND name=?", (tenant_id, name)
            ).fetchone()
        return _collection(row) if row else None

    def list_collections(self, tenant_id: str) -> list[Collection]:
        with self._lock:
            rows = self._conn.execute(
                "SELECT * FROM rag_collections WHERE tenant_id=? ORDER BY name", (tenant_id,)
            ).fetchall()
        return [_collection(r) for r in rows]

    def delete_collection(self, collection_id: str) -> None:
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                for table in ("rag_chunks", "rag_documents", "rag_changes"):
                    self._conn.execute(
                        f"DELETE FROM {table} WHERE collection_id=?", (collection_id,)
                    )
                self._conn.execute("DELETE FROM rag_collections WHERE id=?", (collection_id,))
                self._conn.execute("COMMIT")
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._indexes.pop(collection_id, None)

    # ---- documents ------------------------------------------------------------

    def document_states(self, collection_id: str) -> dict[str, DocumentState]:
        with self._lock:
            rows = self._conn.execute(
                "SELECT id, content_hash, version, source, chunk_count, ingested_at "
                "FROM rag_documents WHERE collection_id=?",
                (collection_id,),
            ).fetchall()
        return {
            r[0]: DocumentState(r[0], r[1], int(r[2]), r[3], int(r[4]), float(r[5])) for r in rows
        }

    def put_document(self, document: Document, chunks: Sequence[Chunk]) -> None:
        d = document
        rows = [
            (
                c.id,
                d.collection_id,
                d.id,
                c.ordinal,
                c.text,
                c.tokens,
                json.dumps(c.metadata),
                json.dumps(c.terms),
                np.asarray(c.embedding, dtype=np.float32).tobytes(),
            )
            for c in chunks
        ]
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                self._conn.execute(
                    "DELETE FROM rag_chunks WHERE collection_id=? AND document_id=?",
                    (d.collection_id, d.id),
                )
                self._conn.execute(
                    f"INSERT OR REPLACE INTO rag_documents ({_DOC_COLS}) "
                    "VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                    (
                        d.id,
                        d.collection_id,
                        d.source,
                        d.content_hash,
                        d.title,
                        d.version,
                        json.dumps(d.metadata),
                        json.dumps(list(d.acl.teams)),
                        json.dumps(list(d.acl.keys)),
                        d.ingested_at,
                        d.updated_at,
                        len(chunks),
                    ),
                )
                self._conn.executemany(
                    "INSERT INTO rag_chunks (id, collection_id, document_id, ordinal, text, "
                    "tokens, metadata, terms, embedding) VALUES (?,?,?,?,?,?,?,?,?)",
                    rows,
                )
                self._log(d.collection_id, [d.id])
                self._conn.execute("COMMIT")
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise

    def delete_documents(self, collection_id: str, ids: Sequence[str]) -> int:
        if not ids:
            return 0
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                gone = 0
                for doc_id in ids:
                    self._conn.execute(
                        "DELETE FROM rag_chunks WHERE collection_id=? AND document_id=?",
                        (collection_id, doc_id),
                    )
                    gone += self._conn.execute(
                        "DELETE FROM rag_documents WHERE collection_id=? AND id=?",
                        (collection_id, doc_id),
                    ).rowcount
                self._log(collection_id, ids)
                self._conn.execute("COMMIT")
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
        return gone

    def _log(self, collection_id: str, doc_ids: Sequence[str]) -> None:
        self._conn.executemany(
            "INSERT INTO rag_changes (collection_id, document_id) VALUES (?, ?)",
            [(collection_id, i) for i in doc_ids],
        )

    def get_document(self, collection_id: str, doc_id: str, access: Access) -> Document | None:
        with self._lock:
            row = self._conn.execute(
                f"SELECT {_DOC_COLS} FROM rag_documents WHERE collection_id=? AND id=?",
                (collection_id, doc_id),
            ).fetchone()
        if row is None:
            return None
        doc = _document(row)
        return doc if doc.acl.allows(access) else None

    def list_documents(
        self, collection_id: str, access: Access, *, limit: int = 100, after: str | None = None
    ) -> list[Document]:
        out: list[Document] = []
        cursor = after or ""
        while len(out) < limit:
            with self._lock:
                rows = self._conn.execute(
                    f"SELECT {_DOC_COLS} FROM rag_documents WHERE collection_id=? AND id>? "
                    "ORDER BY id LIMIT ?",
                    (collection_id, cursor, max(limit, 100)),
                ).fetchall()
            if not rows:
                break
            for row in rows:
                doc = _document(row)
                if doc.acl.allows(access):
                    out.append(doc)
                    if len(out) == limit:
                        break
            cursor = rows[-1][0]
        return out

    def chunks(self, collection_id: str, ids: Sequence[str], access: Access) -> list[ChunkView]:
        if not ids:
            return []
        marks = ",".join("?" * len(ids))
        with self._lock:
            rows = self._conn.execute(
                "SELECT c.id, c.document_id, c.ordinal, c.text, c.tokens, c.metadata, d.source, "
                "d.title, d.version, d.updated_at, d.metadata, d.acl_teams, d.acl_keys "
                # INDEXED BY: the planner would otherwise walk the collection's
                # (collection_id, document_id) index, reading every chunk.
                "FROM rag_chunks c INDEXED BY sqlite_autoindex_rag_chunks_1 JOIN rag_documents d "
                "ON d.collection_id = c.collection_id AND d.id = c.document_id "
                f"WHERE c.id IN ({marks}) AND c.collection_id=?",
                (*ids, collection_id),
            ).fetchall()
        found: dict[str, ChunkView] = {}
        for r in rows:
            acl = _acl(r[11], r[12])
            if not acl.allows(access):
                continue
            found[r[0]] = ChunkView(
                chunk_id=r[0],
                document_id=r[1],
                ordinal=int(r[2]),
                text=r[3],
                tokens=int(r[4]),
                metadata=json.loads(r[5]),
                source=r[6],
                title=r[7],
                version=int(r[8]),
                updated_at=float(r[9]),
                document_metadata=json.loads(r[10]),
            )
        return [found[i] for i in ids if i in found]

    def counts(self, collection_id: str, access: Access) -> tuple[int, int]:
        with self._lock:
            rows = self._conn.execute(
                "SELECT acl_teams, acl_keys, chunk_count FROM rag_documents WHERE collection_id=?",
                (collection_id,),
            ).fetchall()
        docs = chunks = 0
        for teams, keys, count in rows:
            if _acl(teams, keys).allows(access):
                docs += 1
                chunks += int(count)
        return docs, chunks

    # ---- search ---------------------------------------------------------------

    def _wait_for_readers(self) -> None:
        """With the lock held: wait until no search reads an index."""
        while self._readers:
            self._idle.wait()

    @contextmanager
    def _exclusive(self) -> Iterator[None]:
        """The lock, with no search reading (for the graph builder's hand-over)."""
        with self._lock:
            self._wait_for_readers()
            yield

    @contextmanager
    def _reading(self, collection_id: str) -> Iterator[CollectionIndex]:
        """The collection's index, up to date, for one search that shares it."""
        with self._lock:
            index = self._index(collection_id)
            self._readers += 1
        try:
            yield index
        finally:
            with self._lock:
                self._readers -= 1
                if not self._readers:
                    self._idle.notify_all()

    def _index(self, collection_id: str) -> CollectionIndex:
        """The collection's index, loaded on first use and brought up to date."""
        entry = self._indexes.get(collection_id)
        if entry is None:
            return self._load(collection_id)
        index = entry
        rows = self._conn.execute(
            "SELECT seq, document_id FROM rag_changes WHERE collection_id=? AND seq>? ORDER BY seq",
            (collection_id, index.seq),
        ).fetchall()
        if rows:
            self._wait_for_readers()
            changed = list(dict.fromkeys(r[1] for r in rows))
            index.remove(changed)
            for i in range(0, len(changed), 500):
                self._fill(index, collection_id, changed[i : i + 500])
            index.seq = int(rows[-1][0])
        return index

    def _load(self, collection_id: str) -> CollectionIndex:
        dims_row = self._conn.execute(
            "SELECT dimensions FROM rag_collections WHERE id=?", (collection_id,)
        ).fetchone()
        index = CollectionIndex(int(dims_row[0]) if dims_row else 384, exclusive=self._exclusive)
        seq = self._conn.execute(
            "SELECT coalesce(max(seq), 0) FROM rag_changes WHERE collection_id=?",
            (collection_id,),
        ).fetchone()[0]
        index.load(self._read(collection_id, None))
        index.seq = int(seq)
        self._indexes[collection_id] = index
        return index

    def _fill(self, index: CollectionIndex, collection_id: str, doc_ids: list[str]) -> None:
        """Put documents ``doc_ids`` (those that still exist) into ``index``."""
        for info, chunks in self._read(collection_id, doc_ids):
            index.put(info.id, info.acl, info.metadata, info.updated_at, chunks)

    def _read(
        self, collection_id: str, doc_ids: list[str] | None
    ) -> list[tuple[DocInfo, list[IndexedChunk]]]:
        """Documents (all, or ``doc_ids``) with their chunks, as the index takes them."""
        where, params = "collection_id=?", [collection_id]
        if doc_ids is not None:
            where += f" AND {{col}} IN ({','.join('?' * len(doc_ids))})"
            params += doc_ids
        docs = self._conn.execute(
            f"SELECT {_DOC_COLS} FROM rag_documents WHERE {where.format(col='id')} ORDER BY id",
            params,
        ).fetchall()
        cur = self._conn.execute(
            "SELECT document_id, id, terms, embedding FROM rag_chunks "
            f"WHERE {where.format(col='document_id')} ORDER BY document_id, ordinal",
            params,
        )
        by_doc: dict[str, list[IndexedChunk]] = {}
        for doc_id, chunk_id, terms, blob in cur:
            by_doc.setdefault(doc_id, []).append(
                IndexedChunk(
                    chunk_id, doc_id, orjson.loads(terms), np.frombuffer(blob, dtype=np.float32)
                )
            )
        out = []
        for row in docs:
            doc = _document(row)
            info = DocInfo(doc.id, doc.acl, doc.metadata, doc.updated_at)
            out.append((info, by_doc.get(doc.id, [])))
        return out

    def search_text(
        self,
        collection_id: str,
        terms: Mapping[str, float],
        access: Access,
        filters: Filters,
        limit: int,
    ) -> list[Hit]:
        with self._reading(collection_id) as index:
            return index.search_text(terms, access, filters, limit)

    def search_vector(
        self,
        collection_id: str,
        vector: Vector,
        access: Access,
        filters: Filters,
        limit: int,
    ) -> list[Hit]:
        with self._reading(collection_id) as index:
            return index.search_vector(vector, access, filters, limit)

    def vectors(self, collection_id: str, ids: Sequence[str], access: Access) -> dict[str, Vector]:
        with self._reading(collection_id) as index:
            return index.vectors(ids, access)
