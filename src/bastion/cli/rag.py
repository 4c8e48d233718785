"""RAG commands: ``bastion ingest``, ``bastion collections``, ``bastion rag query``.

They work on the configured store directly (the embedded SQLite file, or
PostgreSQL + pgvector with ``BASTION_DATABASE_URL``) and call the embedding
model through a :class:`~bastion.gateway.service.Gateway` built from the
policy, so routing, retries and provider settings are the server's. A
running embedded server sees what ``bastion ingest`` wrote on its next
query (the store's change log).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer
from numpy.typing import NDArray
from rich.table import Table

from bastion.cli.common import DataDir, PolicyFile, err, errors_exit, out, progress_bar, settings
from bastion.config.defaults import embedded_policy
from bastion.config.loader import load_policy
from bastion.core.errors import BastionError
from bastion.core.settings import Settings
from bastion.core.types import EmbeddingRequest
from bastion.gateway.service import Gateway
from bastion.gateway.tenancy import DEFAULT_TENANT
from bastion.providers.base import CallContext
from bastion.rag.ports import Access, Acl, Collection, Filters, RagStore
from bastion.rag.retrieve import embedding_vectors

rag_app = typer.Typer(no_args_is_help=True, help="Retrieval: collections and queries.")
Tenant = Annotated[str, typer.Option(help="Tenant id that owns the collection.")]


def register(app: typer.Typer) -> None:
    app.command("ingest")(ingest)
    app.command("collections")(collections)
    app.add_typer(rag_app, name="rag")


def open_store(s: Settings) -> RagStore:
    if s.database_url:
        from bastion.store.rag.postgres import PgRagStore

        return PgRagStore(s.database_url)
    from bastion.store.rag.embedded import EmbeddedRagStore

    return EmbeddedRagStore(s.data_dir / "rag.db")


def _gateway(s: Settings) -> Gateway:
    policy = load_policy(s.policy_path) if s.policy_path else embedded_policy()
    return Gateway(policy)


def _embedder(gateway: Gateway) -> Any:
    async def embed(alias: str, texts: list[str]) -> tuple[NDArray[np.float32], int]:
        plan = gateway.rt.plans[alias]
        ctx = CallContext("cli-ingest-" + uuid.uuid4().hex[:12])
        _, body = await gateway.embed(plan, EmbeddingRequest(model=alias, input=texts), ctx)
        tokens = int((body.get("usage") or {}).get("prompt_tokens") or 0)
        return embedding_vectors(body, len(texts)), tokens

    return embed


async def _collection(
    store: RagStore, gateway: Gateway, tenant: str, name: str, chunk_tokens: int, overlap: int
) -> Collection:
    found = store.get_collection(tenant, name)
    if found is not None:
        return found
    alias = gateway.rt.policy.rag.embedding_model
    probe, _ = await _embedder(gateway)(alias, ["dimension probe"])
    return store.create_collection(
        Collection(
            id="col_" + uuid.uuid4().hex[:20],
            tenant_id=tenant,
            name=name,
            embedding_model=alias,
            dimensions=int(probe.shape[1]),
            chunk_tokens=chunk_tokens,
            chunk_overlap=overlap,
            created_at=time.time(),
        )
    )


def ingest(
    paths: Annotated[list[str], typer.Argument(help="Files, folders or glob patterns.")],
    collection: Annotated[str, typer.Option("--collection", "-c", help="Collection name.")],
    team: Annotated[list[str], typer.Option(help="Only these teams may read (repeat).")] = [],  # noqa: B006
    key: Annotated[list[str], typer.Option(help="Only these key ids may read (repeat).")] = [],  # noqa: B006
    text_field: Annotated[str, typer.Option(help="Text column of CSV/JSON rows.")] = "text",
    chunk_tokens: Annotated[int, typer.Option(help="Chunk size of a new collection.")] = 256,
    chunk_overlap: Annotated[int, typer.Option(help="Overlap of a new collection.")] = 32,
    tenant: Tenant = DEFAULT_TENANT,
    policy: PolicyFile = None,
    data_dir: DataDir = None,
) -> None:
    """Ingest files into a collection; unchanged files are skipped, deleted ones removed."""
    from bastion.rag.chunk import WordPieceCounter
    from bastion.rag.extract import ExtractFailure, SourceDocument, discover, extract_file
    from bastion.rag.ingest import Ingestor

    s = Settings.from_env(policy, data_dir)
    with errors_exit():
        files = discover(paths)
        store = open_store(s)
        gateway = _gateway(s)

        async def run() -> dict[str, Any]:
            coll = await _collection(
                store, gateway, tenant, collection, chunk_tokens, chunk_overlap
            )
            docs: list[SourceDocument] = []
            failures: list[ExtractFailure] = []
            scopes: set[str] = set()
            with progress_bar(terminal_only=False) as bar:
                parse = bar.add_task("parsing", total=len(files))
                for path, root in files:
                    scopes.add(_scope(path, root, paths))
                    try:
                        docs.extend(extract_file(path, root, text_field=text_field))
                    except BastionError as exc:
                        failures.append(ExtractFailure(str(path), exc.message))
                    bar.advance(parse)
                task = bar.add_task("embedding", total=len(docs))
                ingestor = Ingestor(store, _embedder(gateway), WordPieceCounter())
                report = await ingestor.ingest(
                    coll,
                    docs,
                    acl=Acl.from_json({"teams": team, "keys": key}),
                    replace_scopes=sorted(scopes),
                    failures=failures,
                    total=len(docs),
                    progress=lambda done, total: bar.update(task, completed=done, total=total),
                )
            await gateway.aclose()
            return {"collection": coll.name, **report.to_json()}

        result = asyncio.run(run())
        store.close()
    d, c = result["documents"], result["chunks"]
    out.print(
        f"{result['collection']}: {d['added']} added, {d['updated']} updated, "
        f"{d['unchanged']} unchanged, {d['deleted']} deleted, {d['failed']} failed; "
        f"chunks +{c['added']} -{c['removed']}; {result['tokens']} tokens in "
        f"{result['seconds']} s"
    )
    for f in result["failures"]:
        err.print(f"failed: {f['source']}: {f['reason']}", markup=False)
    if d["failed"]:
        raise typer.Exit(2)


def _scope(path: Path, root: Path, args: list[str]) -> str:
    """The source URI prefix this run owns: the folder given, or the file itself."""
    for a in args:
        p = Path(a)
        if p.is_dir() and p.resolve() == root.resolve():
            return root.resolve().as_uri() + "/"
    return path.resolve().as_uri()


def collections(tenant: Tenant = DEFAULT_TENANT, data_dir: DataDir = None) -> None:
    """List the tenant's collections with their document and chunk counts."""
    s = settings(data_dir)
    with errors_exit():
        store = open_store(s)
        table = Table("name", "documents", "chunks", "embedding model", "chunk tokens", "created")
        for c in store.list_collections(tenant):
            docs, chunks = store.counts(c.id, Access(tenant, all_documents=True))
            table.add_row(
                c.name,
                str(docs),
                str(chunks),
                c.embedding_model,
                str(c.chunk_tokens),
                time.strftime("%Y-%m-%d %H:%M", time.gmtime(c.created_at)),
            )
        store.close()
    out.print(table)


@rag_app.command("query")
def query(
    collection: Annotated[str, typer.Argument(help="Collection name.")],
    text: Annotated[str, typer.Argument(help="The query.")],
    top_k: Annotated[int, typer.Option(help="Results.")] = 5,
    tenant: Tenant = DEFAULT_TENANT,
    policy: PolicyFile = None,
    data_dir: DataDir = None,
) -> None:
    """Search a collection (as the tenant's admin: every document)."""
    from bastion.rag.retrieve import Retriever

    s = Settings.from_env(policy, data_dir)
    with errors_exit():
        store = open_store(s)
        gateway = _gateway(s)
        coll = store.get_collection(tenant, collection)
        if coll is None:
            err.print(f"error: collection {collection!r} does not exist")
            raise typer.Exit(1)
        embed_many = _embedder(gateway)

        async def embed(alias: str, q: str) -> NDArray[np.float32]:
            vectors, _ = await embed_many(alias, [q])
            first: NDArray[np.float32] = vectors[0]
            return first

        async def run() -> list[Any]:
            r = Retriever(store, embed)
            found = await r.search(
                coll, text, Access(tenant, all_documents=True), top_k=top_k, filters=Filters()
            )
            await gateway.aclose()
            return found

        results = asyncio.run(run())
        store.close()
    table = Table("#", "score", "document", "source", "text")
    for i, r in enumerate(results, 1):
        snippet = " ".join(r.chunk.text.split())[:100]
        table.add_row(str(i), f"{r.score:.3f}", r.chunk.document_id, r.chunk.source, snippet)
    out.print(table)
