"""RAG wired into the server: embeddings through the gateway, the service object, jobs.

Every embedding call RAG makes (ingestion batches, query vectors) goes
through :func:`embed_texts`: the caller's key must be allowed the embedding
model, its rate limits and budgets are reserved and settled like any request,
the gateway routes the call (retries, breakers, fallbacks), and a usage row
with endpoint ``rag.embed`` is queued.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from bastion.core.errors import NotFound, PermissionDenied, Unsupported
from bastion.core.types import JSON, EmbeddingRequest, RerankRequest
from bastion.gateway.auth import Principal
from bastion.gateway.governance import Governor, estimate_tokens
from bastion.gateway.router import Deployment, ModelPlan
from bastion.gateway.tenancy import DEFAULT_TENANT
from bastion.providers.base import CallContext
from bastion.rag.chunk import TokenCounter
from bastion.rag.ingest import Ingestor
from bastion.rag.ports import Access, Collection, RagStore
from bastion.rag.retrieve import RetrievalSettings, Retriever, embedding_vectors
from bastion.telemetry.logging import event
from bastion.telemetry.usage import UsageRecord

if TYPE_CHECKING:
    from bastion.api.app import BastionApp

log = logging.getLogger("bastion.rag")
WRITE_ROLES = ("admin", "developer")


def tenant_of(principal: Principal) -> str:
    return principal.tenant_id or DEFAULT_TENANT


def access_of(principal: Principal) -> Access:
    """What a key may read: its tenant; all documents for admins, else by ACL.

    Document ACLs name teams by their name within the tenant (what people
    write in ``--team`` and ``acl.teams``) and keys by their id.
    """
    return Access(
        tenant_id=tenant_of(principal),
        team_id=principal.team_name,
        key_id=principal.key_id,
        all_documents=principal.role == "admin",
    )


def require_writer(principal: Principal) -> None:
    if principal.role not in WRITE_ROLES:
        raise PermissionDenied("changing collections needs a key with role admin or developer")


async def _metered(
    app: BastionApp,
    principal: Principal,
    alias: str,
    kind: str,
    texts: list[str],
    call: Callable[[ModelPlan, CallContext], Awaitable[tuple[Deployment, JSON]]],
    *,
    rid: str,
) -> JSON:
    """One model call of RAG's, with the caller's limits, budget and a usage row."""
    gateway, meter = app.gateway, app.meter
    plan = gateway.plan(principal, alias, kind)
    estimate = estimate_tokens(sum(len(t) for t in texts))
    ticket = None
    if Governor.needed(principal):
        price = gateway.rt.reserve_price(plan)
        ticket = await meter.governor.admit(
            principal, estimate, price.micro_usd(estimate, 0) if price else 0
        )
    ctx = CallContext(rid)
    ctx.tokens_estimate = estimate
    t0 = time.perf_counter()
    try:
        dep, body = await call(plan, ctx)
    except BaseException:
        if ticket is not None:
            await meter.governor.settle(ticket, 0, 0)
        raise
    usage = body.get("usage") or {}
    tokens = int(usage.get("prompt_tokens") or usage.get("total_tokens") or 0)
    price = gateway.rt.price(dep)
    micro = price.micro_usd(tokens, 0) if price else 0
    if ticket is not None:
        await meter.governor.settle(ticket, tokens, micro)
    if meter.queues.usage is not None:
        await meter.queues.usage.put(
            UsageRecord(
                request_id=rid,
                tenant_id=principal.tenant_id,
                team_id=principal.team_id,
                key_id=principal.key_id,
                model=alias,
                endpoint=f"rag.{kind}",
                status=200,
                deployment=dep.id,
                provider=dep.provider.name,
                prompt_tokens=tokens,
                cost_usd=micro / 1e6,
                latency_ms=round((time.perf_counter() - t0) * 1000, 3),
            )
        )
    return body


async def embed_texts(
    app: BastionApp, principal: Principal, alias: str, texts: list[str], *, rid: str
) -> tuple[NDArray[np.float32], int]:
    """Unit vectors for ``texts`` from the gateway's embedding model ``alias``."""

    async def call(plan: ModelPlan, ctx: CallContext) -> tuple[Deployment, JSON]:
        return await app.gateway.embed(plan, EmbeddingRequest(model=alias, input=texts), ctx)

    body = await _metered(app, principal, alias, "embedding", texts, call, rid=rid)
    tokens = int((body.get("usage") or {}).get("prompt_tokens") or 0)
    try:
        return embedding_vectors(body, len(texts)), tokens
    except ValueError as exc:
        raise Unsupported(f"the embedding model's answer does not fit: {exc}") from None


async def rerank_texts(
    app: BastionApp, principal: Principal, alias: str, query: str, texts: list[str], *, rid: str
) -> list[float]:
    """A relevance score per text from the gateway's rerank model ``alias``."""

    async def call(plan: ModelPlan, ctx: CallContext) -> tuple[Deployment, JSON]:
        req = RerankRequest(model=alias, query=query, documents=list(texts))
        return await app.gateway.rerank(plan, req, ctx)

    body = await _metered(app, principal, alias, "rerank", [query, *texts], call, rid=rid)
    scores = [float("-inf")] * len(texts)
    for r in body.get("results") or []:
        i = r.get("index")
        if isinstance(i, int) and 0 <= i < len(texts):
            scores[i] = float(r["relevance_score"])
    return scores


@dataclass(slots=True)
class Job:
    """An ingestion running in the background (``GET /v1/jobs/{id}``)."""

    id: str
    tenant_id: str
    collection: str
    status: str = "queued"  # queued | running | succeeded | failed
    created_at: float = field(default_factory=time.time)
    finished_at: float | None = None
    done: int = 0
    total: int = 0
    result: dict[str, Any] | None = None
    error: dict[str, str] | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "job",
            "type": "ingest",
            "collection": self.collection,
            "status": self.status,
            "created_at": self.created_at,
            "finished_at": self.finished_at,
            "progress": {"done": self.done, "total": self.total},
            "result": self.result,
            "error": self.error,
        }


class RagService:
    """The RAG parts of one server: store, retriever, counter and jobs."""

    def __init__(
        self, store: RagStore | None, counter: TokenCounter | None, *, unavailable: str = ""
    ) -> None:
        self._store = store
        self._counter = counter
        self.unavailable = unavailable
        self.jobs: dict[str, Job] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def store(self) -> RagStore:
        if self._store is None:
            raise Unsupported(self.unavailable or "RAG is not configured on this server")
        return self._store

    def collection(self, principal: Principal, name: str) -> Collection:
        found = self.store.get_collection(tenant_of(principal), name)
        if found is None:
            raise NotFound(f"collection {name!r} does not exist", param="collection")
        return found

    @property
    def counter(self) -> TokenCounter:
        if self._counter is None:
            raise Unsupported(self.unavailable or "RAG is not configured on this server")
        return self._counter

    @staticmethod
    def settings(app: BastionApp) -> RetrievalSettings:
        """The retrieval settings of the policy now in force."""
        r = app.gateway.rt.policy.rag.retrieval
        return RetrievalSettings(
            mode=r.mode,
            fusion=r.fusion,
            text_weight=r.text_weight,
            rrf_k=r.rrf_k,
            candidates=r.candidates,
            recency_half_life_days=r.recency_half_life_days,
            recency_weight=r.recency_weight,
            max_age_s=r.max_age_s,
            rerank_model=r.rerank_model,
            rerank_candidates=r.rerank_candidates,
            feedback_chunks=r.feedback_chunks,
            feedback_terms=r.feedback_terms,
            feedback_term_weight=r.feedback_term_weight,
            feedback_vector_weight=r.feedback_vector_weight,
        )

    def retriever(self, app: BastionApp, principal: Principal, rid: str) -> Retriever:
        async def embed(alias: str, text: str) -> NDArray[np.float32]:
            vectors, _ = await embed_texts(app, principal, alias, [text], rid=rid)
            first: NDArray[np.float32] = vectors[0]
            return first

        async def rerank(alias: str, query: str, texts: list[str]) -> list[float]:
            return await rerank_texts(app, principal, alias, query, texts, rid=rid)

        return Retriever(self.store, embed, self.settings(app), rerank=rerank)

    def ingestor(self, app: BastionApp, principal: Principal, rid: str) -> Ingestor:
        async def embed(alias: str, texts: list[str]) -> tuple[NDArray[np.float32], int]:
            return await embed_texts(app, principal, alias, texts, rid=rid)

        return Ingestor(self.store, embed, self.counter)

    def start_job(
        self, tenant_id: str, collection: str, run: Callable[[Job], Awaitable[dict[str, Any]]]
    ) -> Job:
        job = Job("job_" + secrets.token_hex(12), tenant_id, collection)
        self.jobs[job.id] = job

        async def go() -> None:
            job.status = "running"
            try:
                job.result = await run(job)
                job.status = "succeeded"
            except Exception as exc:  # reported on the job, never a traceback
                job.status = "failed"
                job.error = {"code": getattr(exc, "code", "internal_error"), "message": str(exc)}
                event(
                    log, "ingest job failed", logging.WARNING, job=job.id, error=type(exc).__name__
                )
            finally:
                job.finished_at = time.time()

        task = asyncio.create_task(go())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return job

    def job(self, principal: Principal, job_id: str) -> Job:
        job = self.jobs.get(job_id)
        if job is None or (not principal.admin and job.tenant_id != tenant_of(principal)):
            raise NotFound(f"job {job_id!r} does not exist")
        return job

    async def aclose(self) -> None:
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._store is not None:
            self._store.close()
