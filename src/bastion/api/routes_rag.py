"""RAG endpoints: collections, documents, ingestion jobs and retrieval.

* ``POST /v1/collections`` ``{"name", "description", "embedding_model",
  "chunk_tokens", "chunk_overlap"}``; ``GET /v1/collections``;
  ``GET|DELETE /v1/collections/{name}``.
* ``POST /v1/collections/{name}/documents``: JSON ``{"documents": [{"id",
  "text", "title", "metadata", "source"}], "acl": {"teams", "keys"},
  "async": false}`` or a multipart upload (``file`` parts, optional ``acl``
  JSON and ``text_field`` fields). Large batches (or ``"async": true``) answer
  202 with a job; ``GET /v1/jobs/{id}`` reports it.
* ``GET /v1/collections/{name}/documents`` (``limit``, ``after``);
  ``GET|DELETE /v1/collections/{name}/documents/{id}``.
* ``POST /v1/rag/query`` ``{"collection", "query", "top_k", "filters"}``.

Reads need any key of the tenant (documents are filtered by their ACL inside
the store query); writes need role ``admin`` or ``developer``.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import parse_qs, unquote

from pydantic import BaseModel, ConfigDict, Field

from bastion.api.errors import parse
from bastion.api.exchange import Exchange
from bastion.api.http import dumps
from bastion.api.rag import Job, access_of, embed_texts, require_writer, tenant_of
from bastion.api.rag_upload import parse_upload
from bastion.core.errors import InvalidRequest, NotFound
from bastion.gateway.auth import Principal
from bastion.rag.extract import Section, SourceDocument
from bastion.rag.ports import Acl, Collection, Document, Filters

if TYPE_CHECKING:
    from bastion.api.app import BastionApp

SYNC_LIMIT_DOCS = 64
SYNC_LIMIT_CHARS = 256_000
NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"


class CollectionBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=NAME)
    description: str = ""
    embedding_model: str | None = None
    chunk_tokens: int = Field(default=256, ge=32, le=2048)
    chunk_overlap: int = Field(default=32, ge=0, le=512)


class AclBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    teams: list[str] = []
    keys: list[str] = []

    def acl(self) -> Acl:
        return Acl.from_json(self.model_dump())


class DocumentBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str | None = Field(default=None, min_length=1, max_length=512)
    text: str
    title: str = ""
    source: str | None = None
    metadata: dict[str, Any] = {}


class DocumentsBody(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    documents: list[DocumentBody] = Field(min_length=1)
    acl: AclBody = AclBody()
    run_async: bool = Field(default=False, alias="async")


class FiltersBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    metadata: dict[str, Any] = {}
    max_age_s: float | None = Field(default=None, gt=0)
    updated_after: float | None = None
    document_ids: list[str] | None = None

    def filters(self, now: float) -> Filters:
        after = self.updated_after
        if self.max_age_s is not None:
            floor = now - self.max_age_s
            after = floor if after is None else max(after, floor)
        ids = tuple(self.document_ids) if self.document_ids is not None else None
        return Filters(metadata=self.metadata, updated_after=after, document_ids=ids)


class QueryBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    collection: str | None = None
    collections: list[str] | None = None
    query: str = Field(min_length=1, max_length=20_000)
    top_k: int = Field(default=8, ge=1, le=100)
    filters: FiltersBody = FiltersBody()
    mode: Literal["hybrid", "bm25", "dense"] | None = None
    rerank: str | Literal[False] | None = Field(
        default=None, description="A rerank model alias, false for none; default: the policy's."
    )


def _collection_json(c: Collection, counts: tuple[int, int] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": c.id,
        "object": "collection",
        "name": c.name,
        "description": c.description,
        "embedding_model": c.embedding_model,
        "dimensions": c.dimensions,
        "chunk_tokens": c.chunk_tokens,
        "chunk_overlap": c.chunk_overlap,
        "created_at": c.created_at,
    }
    if counts is not None:
        out["documents"], out["chunks"] = counts
    return out


def _document_json(d: Document) -> dict[str, Any]:
    return {
        "id": d.id,
        "object": "document",
        "title": d.title,
        "source": d.source,
        "version": d.version,
        "content_hash": d.content_hash,
        "metadata": d.metadata,
        "acl": d.acl.to_json(),
        "ingested_at": d.ingested_at,
        "updated_at": d.updated_at,
        "chunks": d.chunk_count,
    }


async def create_collection_for(
    app: BastionApp, principal: Principal, spec: CollectionBody, rid: str
) -> Collection:
    rag = app.rag
    alias = spec.embedding_model or app.gateway.rt.policy.rag.embedding_model
    probe, _ = await embed_texts(app, principal, alias, ["dimension probe"], rid=rid)
    collection = Collection(
        id="col_" + uuid.uuid4().hex[:20],
        tenant_id=tenant_of(principal),
        name=spec.name,
        embedding_model=alias,
        dimensions=int(probe.shape[1]),
        chunk_tokens=spec.chunk_tokens,
        chunk_overlap=spec.chunk_overlap,
        created_at=time.time(),
        description=spec.description,
    )
    return rag.store.create_collection(collection)


async def collections(app: BastionApp, ex: Exchange) -> None:
    principal = app.authenticate(ex)
    rag = app.rag
    if ex.req.method == "POST":
        require_writer(principal)
        spec = parse(CollectionBody.model_validate, await ex.req.json(app.max_body))
        c = await create_collection_for(app, principal, spec, ex.rid)
        await ex.respond(201, dumps(_collection_json(c, (0, 0))))
        return
    access = access_of(principal)
    data = [
        _collection_json(c, rag.store.counts(c.id, access))
        for c in rag.store.list_collections(tenant_of(principal))
    ]
    await ex.respond(200, dumps({"object": "list", "data": data}))


async def collection_item(app: BastionApp, ex: Exchange) -> None:
    """Everything under ``/v1/collections/{name}``."""
    principal = app.authenticate(ex)
    parts = [unquote(p) for p in ex.req.path[len("/v1/collections/") :].split("/")]
    method = ex.req.method
    rag = app.rag
    access = access_of(principal)
    if len(parts) == 1:
        c = rag.collection(principal, parts[0])
        if method == "DELETE":
            require_writer(principal)
            rag.store.delete_collection(c.id)
            await ex.respond(200, dumps({"id": c.id, "object": "collection", "deleted": True}))
            return
        await ex.respond(200, dumps(_collection_json(c, rag.store.counts(c.id, access))))
        return
    if parts[1] != "documents" or len(parts) > 3:
        raise NotFound(f"no route {method} {ex.req.path}")
    if len(parts) == 2:
        if method == "POST":
            await _ingest(app, ex, principal, parts[0])
            return
        c = rag.collection(principal, parts[0])
        q = parse_qs(ex.req.query.decode("latin-1"))
        limit = min(1000, max(1, int((q.get("limit") or ["100"])[0] or 100)))
        after = (q.get("after") or [""])[0] or None
        docs = rag.store.list_documents(c.id, access, limit=limit, after=after)
        body = {"object": "list", "data": [_document_json(d) for d in docs]}
        await ex.respond(200, dumps(body))
        return
    c = rag.collection(principal, parts[0])
    doc = rag.store.get_document(c.id, parts[2], access)
    if doc is None:
        raise NotFound(f"document {parts[2]!r} does not exist in {c.name!r}")
    if method == "DELETE":
        require_writer(principal)
        rag.store.delete_documents(c.id, [doc.id])
        await ex.respond(200, dumps({"id": doc.id, "object": "document", "deleted": True}))
        return
    await ex.respond(200, dumps(_document_json(doc)))


async def _ingest(app: BastionApp, ex: Exchange, principal: Principal, name: str) -> None:
    require_writer(principal)
    rag = app.rag
    ctype = ex.req.headers.get("content-type", "")
    limit = app.gateway.rt.policy.rag.max_upload_bytes
    failures: list[Any] = []
    if ctype.startswith("multipart/form-data"):
        upload = parse_upload(ctype, await ex.req.body(limit))
        docs, failures, acl, run_async = upload.documents, upload.failures, upload.acl, False
    else:
        body = parse(DocumentsBody.model_validate, await ex.req.json(limit))
        acl, run_async = body.acl.acl(), body.run_async
        docs = [_source_document(d.id or f"doc-{uuid.uuid4().hex[:16]}", d) for d in body.documents]
    existing = rag.store.get_collection(tenant_of(principal), name)
    if existing is None:
        spec = parse(CollectionBody.model_validate, {"name": name})
        existing = await create_collection_for(app, principal, spec, ex.rid)
    collection = existing
    ingestor = rag.ingestor(app, principal, ex.rid)
    chars = sum(len(d.text) for d in docs)
    if not docs and not failures:
        raise InvalidRequest("nothing to ingest")

    async def run(job: Job | None = None) -> dict[str, Any]:
        def progress(done: int, total: int) -> None:
            if job is not None:
                job.done, job.total = done, total

        report = await ingestor.ingest(
            collection, docs, acl=acl, failures=failures, total=len(docs), progress=progress
        )
        return {"collection": collection.name, **report.to_json()}

    if run_async or len(docs) > SYNC_LIMIT_DOCS or chars > SYNC_LIMIT_CHARS:
        job = rag.start_job(collection.tenant_id, collection.name, run)
        job.total = len(docs)
        await ex.respond(202, dumps(job.to_json()))
        return
    await ex.respond(200, dumps(await run()))


def _source_document(doc_id: str, d: DocumentBody) -> SourceDocument:
    return SourceDocument(
        id=doc_id,
        title=d.title,
        source=d.source or f"api:{doc_id}",
        sections=[Section(d.text)] if d.text.strip() else [],
        metadata=dict(d.metadata),
    )


async def job_item(app: BastionApp, ex: Exchange) -> None:
    principal = app.authenticate(ex)
    job = app.rag.job(principal, ex.req.path[len("/v1/jobs/") :])
    await ex.respond(200, dumps(job.to_json()))


async def query(app: BastionApp, ex: Exchange) -> None:
    principal = app.authenticate(ex)
    body = parse(QueryBody.model_validate, await ex.req.json(app.max_body))
    names = body.collections or ([body.collection] if body.collection else [])
    if not names:
        raise InvalidRequest("name a collection", param="collection")
    rag = app.rag
    colls = [rag.collection(principal, n) for n in names]
    retriever = rag.retriever(app, principal, ex.rid)
    if body.mode is not None:
        retriever.settings = replace(retriever.settings, mode=body.mode)
    if body.rerank is not None:
        retriever.settings = replace(retriever.settings, rerank_model=body.rerank or None)
    t0 = time.perf_counter()
    results = await retriever.search_many(
        colls,
        body.query,
        access_of(principal),
        top_k=body.top_k,
        filters=body.filters.filters(time.time()),
    )
    out = {
        "object": "list",
        "results": [r.to_json() for r in results],
        "took_ms": round((time.perf_counter() - t0) * 1000, 3),
    }
    await ex.respond(200, dumps(out))
