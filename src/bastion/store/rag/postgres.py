"""The RAG store on PostgreSQL + pgvector (scale-out mode).

:class:`PgRagStore` implements :class:`~bastion.rag.ports.RagStore` over the
schema of :mod:`bastion.store.rag.pg_sql`, which :func:`upgrade` creates
(``bastion db upgrade``); a store refuses a database whose RAG schema is
missing or older. The caller's ACL and filters are part of every query:

* ``search_text`` is BM25 in one statement: the candidate documents give N
  and the average length (their ``chunk_count`` and ``total_length``); the
  query terms' postings (index-only range scans) restricted to them give df
  and the per-chunk sums; only the top hits are joined to their chunk ids.
* ``search_vector`` scans the candidate chunks exactly below ``exact_below``
  of them. Above, a dimension with an HNSW index (``pg_sql.HNSW_DIMS``) takes
  enough of the index's nearest chunks for the candidates' share of it,
  filters them, and reruns exactly if that left fewer than
  ``min(limit, candidates)`` (pgvector 0.6 filters after the index scan).

Connections come from a small pool (autocommit; writes in transactions), so
worker threads search concurrently.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson

from bastion.core.errors import Conflict, InvalidRequest, NotFound
from bastion.rag.ports import (
    BM25_B,
    BM25_K1,
    Access,
    Chunk,
    ChunkView,
    Collection,
    Document,
    DocumentState,
    Filters,
    Hit,
    Vector,
)
from bastion.store.rag import pg_sql as q

if TYPE_CHECKING:
    from bastion.store.rag.pg_sql import Conn

#: Below this many candidate chunks a vector search is an exact scan.
EXACT_BELOW = 20_000
#: pgvector's largest ``hnsw.ef_search``.
MAX_EF_SEARCH = 1000
_MIN_EF_SEARCH = 100  # pgvector defaults to 40; recall costs little here
_LOCK = "bastion-rag-migrations"


def upgrade(url: str) -> tuple[int, int]:
    """Create or migrate the RAG schema at ``url`` (idempotent); returns ``(from, to)``.

    Runs in one transaction under an advisory lock, so replicas upgrading at
    once apply each migration once. Needs the pgvector extension available on
    the server and the right to create it.
    """
    with q.connect(url) as conn, conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (_LOCK,))
        conn.execute("CREATE TABLE IF NOT EXISTS rag_schema (version INTEGER PRIMARY KEY)")
        before = q.schema_version(conn)
        for version in range(before + 1, q.RAG_SCHEMA_VERSION + 1):
            for stmt in q.MIGRATIONS[version]:
                conn.execute(stmt)
            conn.execute("INSERT INTO rag_schema VALUES (%s)", (version,))
        return before, q.schema_version(conn)


class PgRagStore:
    """:class:`~bastion.rag.ports.RagStore` on PostgreSQL + pgvector; thread-safe.

    ``exact_below``: candidate-set size under which vector search scans exactly
    (tests lower it to exercise the HNSW path). ``pool_size``: connections.
    """

    def __init__(self, url: str, *, pool_size: int = 4, exact_below: int = EXACT_BELOW) -> None:
        self._pool = q.Pool(url, pool_size)
        self.exact_below = exact_below
        #: How the last vector search ran: "exact", "hnsw" or "hnsw+exact" (diagnostics).
        self.vector_plan = ""
        try:
            with self._pool.connection() as conn:
                have = q.schema_version(conn)
            if have < q.RAG_SCHEMA_VERSION:
                raise InvalidRequest(
                    f"PostgreSQL database is at RAG schema {have}, expected "
                    f"{q.RAG_SCHEMA_VERSION}: run 'bastion db upgrade'"
                )
        except BaseException:
            self._pool.close()
            raise

    def close(self) -> None:
        self._pool.close()

    @staticmethod
    def _resolve(conn: Conn, collection_id: str) -> tuple[int, int] | None:
        """The collection's ``(pk, dimensions)``, or ``None`` when there is none."""
        row = conn.execute(
            "SELECT pk, dimensions FROM rag_collections WHERE id = %s", (collection_id,)
        ).fetchone()
        return None if row is None else (int(row[0]), int(row[1]))

    def _where(
        self,
        conn: Conn,
        collection_id: str,
        access: Access,
        filters: Filters | None,
        params: dict[str, Any],
    ) -> str | None:
        """The candidate documents' WHERE clause, or ``None`` for an unknown collection."""
        found = self._resolve(conn, collection_id)
        if found is None:
            return None
        params["dims"] = found[1]
        return q.candidates(found[0], access, filters, params)

    def create_collection(self, collection: Collection) -> Collection:
        import psycopg

        try:
            with self._pool.connection() as conn:
                conn.execute(
                    f"INSERT INTO rag_collections ({q.COLLECTION_COLUMNS}) "
                    "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
                    dataclasses.astuple(collection),
                )
        except psycopg.errors.UniqueViolation as exc:
            raise Conflict(f"collection {collection.name!r} already exists") from exc
        return collection

    def get_collection(self, tenant_id: str, name: str) -> Collection | None:
        with self._pool.connection() as conn:
            row = conn.execute(
                f"SELECT {q.COLLECTION_COLUMNS} FROM rag_collections "
                "WHERE tenant_id = %s AND name = %s",
                (tenant_id, name),
            ).fetchone()
        return None if row is None else q.collection_row(row)

    def list_collections(self, tenant_id: str) -> list[Collection]:
        """The tenant's collections by name."""
        with self._pool.connection() as conn:
            rows = conn.execute(
                f"SELECT {q.COLLECTION_COLUMNS} FROM rag_collections "
                "WHERE tenant_id = %s ORDER BY name",
                (tenant_id,),
            ).fetchall()
        return [q.collection_row(r) for r in rows]

    def delete_collection(self, collection_id: str) -> None:
        """Remove the collection, its documents, chunks and postings (no-op when unknown)."""
        with self._pool.connection() as conn, conn.transaction():
            # Locking the row first makes a concurrent put_document wait (and then fail).
            row = conn.execute(
                "SELECT pk FROM rag_collections WHERE id = %s FOR UPDATE", (collection_id,)
            ).fetchone()
            if row is None:
                return
            for table in ("rag_postings", "rag_chunks", "rag_documents", "rag_collections"):
                column = "pk" if table == "rag_collections" else "coll_pk"
                conn.execute(f"DELETE FROM {table} WHERE {column} = %s", (row[0],))

    def document_states(self, collection_id: str) -> dict[str, DocumentState]:
        with self._pool.connection() as conn:
            rows = conn.execute(
                "SELECT d.id, d.content_hash, d.version, d.source, d.chunk_count, d.ingested_at "
                "FROM rag_documents d JOIN rag_collections c ON c.pk = d.coll_pk WHERE c.id = %s",
                (collection_id,),
            ).fetchall()
        return {
            r[0]: DocumentState(r[0], r[1], int(r[2]), r[3], int(r[4]), float(r[5])) for r in rows
        }

    def put_document(self, document: Document, chunks: Sequence[Chunk]) -> None:
        """Insert or replace the document, its chunks and postings in one transaction.

        ``NotFound`` for an unknown collection, ``InvalidRequest`` for a vector of
        another dimension, ``Conflict`` when a chunk id is another document's.
        """
        import psycopg

        doc = document
        with self._pool.connection() as conn:
            found = self._resolve(conn, doc.collection_id)
            if found is None:
                raise NotFound(f"collection {doc.collection_id!r} not found")
            coll_pk, dims = found
            prepared = q.prepare_chunks(chunks, dims)
            try:
                with conn.transaction(), conn.cursor() as cur:
                    cur.execute(q.UPSERT_DOCUMENT, q.document_params(coll_pk, doc, prepared))
                    row = cur.fetchone()
                    assert row is not None
                    doc_pk = int(row[0])
                    cur.execute("DELETE FROM rag_postings WHERE doc_pk = %s", (doc_pk,))
                    cur.execute("DELETE FROM rag_chunks WHERE doc_pk = %s", (doc_pk,))
                    delta = len(prepared) - cur.rowcount
                    if prepared:
                        q.copy_chunks(cur, coll_pk, doc_pk, dims, prepared)
                    if delta:
                        cur.execute(
                            "UPDATE rag_collections SET chunk_count = chunk_count + %s "
                            "WHERE pk = %s",
                            (delta, coll_pk),
                        )
            except psycopg.errors.UniqueViolation as exc:
                raise Conflict(
                    f"a chunk id of document {doc.id!r} is already used in the collection"
                ) from exc
            except psycopg.errors.ForeignKeyViolation as exc:
                raise NotFound(f"collection {doc.collection_id!r} not found") from exc

    def delete_documents(self, collection_id: str, ids: Sequence[str]) -> int:
        """Remove the documents with their chunks and postings; how many went."""
        if not ids:
            return 0
        with self._pool.connection() as conn, conn.transaction():
            rows = conn.execute(
                "SELECT d.pk, d.chunk_count, d.coll_pk FROM rag_documents d "
                "JOIN rag_collections c ON c.pk = d.coll_pk "
                "WHERE c.id = %s AND d.id = ANY(%s::text[]) FOR UPDATE OF d",
                (collection_id, list(set(ids))),
            ).fetchall()
            if not rows:
                return 0
            pks = [r[0] for r in rows]
            conn.execute("DELETE FROM rag_postings WHERE doc_pk = ANY(%s)", (pks,))
            conn.execute("DELETE FROM rag_chunks WHERE doc_pk = ANY(%s)", (pks,))
            conn.execute("DELETE FROM rag_documents WHERE pk = ANY(%s)", (pks,))
            removed = sum(int(r[1]) for r in rows)
            if removed:
                conn.execute(
                    "UPDATE rag_collections SET chunk_count = chunk_count - %s WHERE pk = %s",
                    (removed, rows[0][2]),
                )
            return len(rows)

    def get_document(self, collection_id: str, doc_id: str, access: Access) -> Document | None:
        with self._pool.connection() as conn:
            params: dict[str, Any] = {"doc": doc_id}
            where = self._where(conn, collection_id, access, None, params)
            if where is None:
                return None
            row = conn.execute(
                f"SELECT {q.DOCUMENT_COLUMNS} FROM rag_documents d "
                f"WHERE {where} AND d.id = %(doc)s",
                params,
            ).fetchone()
        return None if row is None else q.document_row(collection_id, row)

    def list_documents(
        self, collection_id: str, access: Access, *, limit: int = 100, after: str | None = None
    ) -> list[Document]:
        """Visible documents by id (code-point order), those after ``after``."""
        if limit <= 0:
            return []
        with self._pool.connection() as conn:
            params: dict[str, Any] = {"limit": limit, "after": after}
            where = self._where(conn, collection_id, access, None, params)
            if where is None:
                return []
            if after is not None:
                where += " AND d.id > %(after)s"
            rows = conn.execute(
                f"SELECT {q.DOCUMENT_COLUMNS} FROM rag_documents d WHERE {where} "
                "ORDER BY d.id LIMIT %(limit)s",
                params,
            ).fetchall()
        return [q.document_row(collection_id, r) for r in rows]

    def chunks(self, collection_id: str, ids: Sequence[str], access: Access) -> list[ChunkView]:
        """The visible chunks among ``ids``, in the order asked."""
        if not ids:
            return []
        with self._pool.connection() as conn:
            params: dict[str, Any] = {"ids": list(set(ids))}
            where = self._where(conn, collection_id, access, None, params)
            if where is None:
                return []
            rows = conn.execute(q.CHUNK_VIEWS.format(cand=where), params).fetchall()
        views = {r[0]: ChunkView(*r) for r in rows}
        return [views[i] for i in ids if i in views]

    def vectors(self, collection_id: str, ids: Sequence[str], access: Access) -> dict[str, Vector]:
        """The stored vectors of the visible chunks among ``ids``."""
        if not ids:
            return {}
        with self._pool.connection() as conn:
            params: dict[str, Any] = {"ids": list(set(ids))}
            where = self._where(conn, collection_id, access, None, params)
            if where is None:
                return {}
            rows = conn.execute(q.CHUNK_VECTORS.format(cand=where), params).fetchall()
        return {r[0]: np.asarray(orjson.loads(r[1]), dtype=np.float32) for r in rows}

    def counts(self, collection_id: str, access: Access) -> tuple[int, int]:
        with self._pool.connection() as conn:
            params: dict[str, Any] = {}
            where = self._where(conn, collection_id, access, None, params)
            if where is None:
                return 0, 0
            row = conn.execute(
                f"SELECT count(*), coalesce(sum(d.chunk_count), 0) FROM rag_documents d "
                f"WHERE {where}",
                params,
            ).fetchone()
        assert row is not None
        return int(row[0]), int(row[1])

    def search_text(
        self,
        collection_id: str,
        terms: Mapping[str, float],
        access: Access,
        filters: Filters,
        limit: int,
    ) -> list[Hit]:
        """BM25 over the visible, filtered chunks, statistics included; ties by chunk id."""
        query = {t: n for t, n in terms.items() if n}
        if not query or limit <= 0:
            return []
        params: dict[str, Any] = {"terms": list(query), "limit": limit, "b": BM25_B}
        params |= {"qtfs": [float(n) for n in query.values()], "k1": BM25_K1}
        params["k1p1"] = BM25_K1 + 1.0
        with self._pool.connection() as conn:
            where = self._where(conn, collection_id, access, filters, params)
            if where is None:
                return []
            everything = access.all_documents and filters == Filters()
            hits_filter = "" if everything else "WHERE p.doc_pk IN (SELECT pk FROM cand)"
            one = len(query) == 1
            score, group = (q.BM25_PART, "") if one else (f"sum({q.BM25_PART})", "GROUP BY 1")
            sql = q.BM25.format(cand=where, hits_filter=hits_filter, score=score, group=group)
            rows = conn.execute(sql, params).fetchall()
        return [Hit(r[0], float(r[1])) for r in rows]

    def search_vector(
        self,
        collection_id: str,
        vector: Vector,
        access: Access,
        filters: Filters,
        limit: int,
    ) -> list[Hit]:
        """Inner product with ``vector`` over the visible, filtered chunks; ties by chunk id.

        Scores have float32 precision (pgvector computes in float32).
        """
        if limit <= 0:
            return []
        values = np.asarray(vector, dtype=np.float32).ravel()
        params: dict[str, Any] = {"q": q.vector_literal(values.tolist()), "limit": limit}
        with self._pool.connection() as conn:
            where = self._where(conn, collection_id, access, filters, params)
            if where is None:
                return []
            dims = int(params["dims"])
            if values.shape[0] != dims:
                raise InvalidRequest(
                    f"query vector has {values.shape[0]} dimensions, the collection {dims}"
                )
            rows, plan = None, "exact"
            if dims in q.HNSW_DIMS:
                rows, plan = self._search_hnsw(conn, dims, where, params)
            if rows is None:
                rows = conn.execute(q.VECTOR_EXACT.format(cand=where), params).fetchall()
        self.vector_plan = plan
        return [Hit(r[0], -float(r[1])) for r in rows]

    def _search_hnsw(
        self, conn: Conn, dims: int, where: str, params: dict[str, Any]
    ) -> tuple[list[tuple[Any, ...]] | None, str]:
        """The HNSW answer and the plan; no answer when an exact scan is due.

        Exact when the candidates are few, or so small a share of the index that
        more than :data:`MAX_EF_SEARCH` neighbours would be needed, or when the
        filtered neighbours fell short of ``min(limit, candidates)``.
        """
        row = conn.execute(
            f"SELECT (SELECT coalesce(sum(d.chunk_count), 0) FROM rag_documents d WHERE {where}),"
            " (SELECT coalesce(sum(chunk_count), 0) FROM rag_collections"
            "  WHERE dimensions = %(dims)s)",
            params,
        ).fetchone()
        candidates, indexed = (int(row[0]), int(row[1])) if row is not None else (0, 0)
        if candidates < max(self.exact_below, 1):
            return None, "exact"
        indexed = max(indexed, candidates)
        limit = int(params["limit"])
        want = min(limit, candidates)
        # Enough neighbours that ``want`` of them are candidates, with a margin of 2x.
        k = max(limit, math.ceil(2 * want * indexed / candidates))
        if k > MAX_EF_SEARCH:
            return None, "exact"
        with conn.transaction():
            conn.execute(f"SET LOCAL hnsw.ef_search = {max(k, _MIN_EF_SEARCH):d}")
            sql = q.VECTOR_HNSW.format(dims=dims, cand=where)
            rows = conn.execute(sql, {**params, "k": k}).fetchall()
        if len(rows) < want:
            return None, "hnsw+exact"
        return rows, "hnsw"
