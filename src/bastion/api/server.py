"""Build a ready-to-serve :class:`BastionApp` from settings (composition root).

Embedded mode (the default): keys, usage, payloads and the audit log in the
SQLite file of the data directory; counters and the response cache in memory.
Scale-out mode: ``BASTION_DATABASE_URL`` moves the stores to PostgreSQL and
``BASTION_REDIS_URL`` moves counters and cache to Redis, so any number of
stateless replicas share one set of limits, budgets, keys and logs.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bastion.api.app import BastionApp, Stores
from bastion.api.metering import Meter, Queues
from bastion.api.rag import RagService
from bastion.config.defaults import embedded_policy
from bastion.config.loader import load_policy
from bastion.config.schema import Policy
from bastion.core.secrets import hash_key
from bastion.core.settings import Settings
from bastion.core.types import EmbeddingRequest
from bastion.gateway.auth import KeyRecord
from bastion.gateway.cache import ResponseCache
from bastion.gateway.cache_store import (
    CacheBackend,
    MemoryCache,
    MemorySemanticIndex,
    SemanticIndex,
)
from bastion.gateway.governance import Governor
from bastion.gateway.quota import Counters, MemoryCounters
from bastion.gateway.service import Gateway
from bastion.prompts.service import PromptService
from bastion.providers.base import CallContext
from bastion.store.sql.audit import SqlAuditStore
from bastion.store.sql.database import Database, open_database
from bastion.store.sql.governance import SqlGovernanceStore
from bastion.store.sql.prompts import SqlPromptStore
from bastion.store.sql.usage import SqlPayloadStore, SqlUsageStore
from bastion.store.sqlite import db as sqlite_db
from bastion.telemetry.batch import BatchQueue
from bastion.telemetry.logging import event
from bastion.telemetry.metrics import Metrics
from bastion.telemetry.tracing import Tracing

log = logging.getLogger("bastion.server")
FLUSH_S = 0.05  # short flushes keep each write (and its CPU burst) small


@dataclass(frozen=True, slots=True)
class Built:
    app: BastionApp
    generated_admin_key: str | None


def open_db(settings: Settings) -> Database:
    """The database of these settings (a new embedded file gets its schema here)."""
    if settings.database_url:
        return open_database(settings.database_url)
    if not settings.db_path.exists():
        sqlite_db.upgrade(settings.db_path)
    return open_database(settings.db_path)


def _shared_state(settings: Settings) -> tuple[Counters, CacheBackend, SemanticIndex | None]:
    if settings.redis_url:
        from bastion.store.redis.cache import RedisCache, RedisSemanticIndex
        from bastion.store.redis.counters import RedisCounters

        url, prefix = settings.redis_url, settings.redis_prefix
        return (
            RedisCounters.from_url(url, prefix),
            RedisCache.from_url(url, prefix),
            RedisSemanticIndex.from_url(url, prefix),
        )
    if settings.database_url:
        event(
            log,
            "PostgreSQL without Redis: rate limits and budgets are counted per replica",
            logging.WARNING,
        )
    return MemoryCounters(), MemoryCache(), MemorySemanticIndex()


def open_rag(settings: Settings) -> RagService:
    """The RAG service: embedded SQLite + in-memory indexes, or PostgreSQL + pgvector.

    A PostgreSQL database without the RAG schema (no pgvector, or ``bastion db
    upgrade`` not run) serves everything else; RAG endpoints then answer
    ``unsupported`` with the reason.
    """
    try:
        from bastion.rag.chunk import WordPieceCounter
    except ImportError as exc:  # pragma: no cover - the rag extra is missing
        return RagService(None, None, unavailable=f"RAG needs the `rag` extra: {exc}")
    if settings.database_url:
        try:
            from bastion.store.rag.postgres import PgRagStore

            store: Any = PgRagStore(settings.database_url)
        except Exception as exc:
            event(log, "RAG disabled", logging.WARNING, reason=str(exc))
            return RagService(None, None, unavailable=f"RAG is unavailable: {exc}")
    else:
        from bastion.store.rag.embedded import EmbeddedRagStore

        store = EmbeddedRagStore(settings.data_dir / "rag.db")
    return RagService(store, WordPieceCounter())


def _embedder(gateway: Gateway) -> Callable[[str, str], Any]:
    async def embed(alias: str, text: str) -> list[float]:
        plan = gateway.rt.plans[alias]
        _, body = await gateway.embed(
            plan, EmbeddingRequest(model=alias, input=text), CallContext("cache-embed")
        )
        return [float(x) for x in body["data"][0]["embedding"]]

    return embed


def build_app(
    settings: Settings,
    *,
    announce: Callable[[str], None] | None = None,
    policy: Policy | None = None,
) -> Built:
    """Policy, stores, telemetry and gateway wired into the ASGI app.

    A brand-new embedded data directory gets its schema created here; an
    existing one at an older schema, and any PostgreSQL database, must be
    migrated explicitly with ``bastion db upgrade``.
    """
    if policy is None:
        policy = load_policy(settings.policy_path) if settings.policy_path else embedded_policy()
    dbs = [open_db(settings) for _ in range(5)]  # one connection per store: no lock contention
    store = SqlGovernanceStore(dbs[0])
    audit_store = SqlAuditStore(dbs[1])
    usage_store = SqlUsageStore(dbs[2])
    payload_store = SqlPayloadStore(dbs[3])
    prompt_store = SqlPromptStore(dbs[4])
    extra: list[KeyRecord] = []
    generated = None
    if settings.admin_key:
        extra.append(
            KeyRecord(
                id="admin:env",
                name="admin (BASTION_ADMIN_KEY)",
                hash=hash_key(settings.admin_key),
                role="admin",
                tenant_id=None,
            )
        )
    elif not any(r.admin for r in store.list()):
        _, generated = store.create("admin", ["*"], role="admin", tenant_id=None)
        if announce is not None:
            announce(generated)
    metrics = Metrics()
    tel = policy.telemetry
    tracing = Tracing(
        service_name=tel.service_name,
        otlp_endpoint=tel.otlp_endpoint or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"),
    )
    gateway = Gateway(policy, observer=metrics, keystore=store, extra_keys=extra)
    counters, backend, semantic = _shared_state(settings)
    size = policy.governance.queue_size
    queues = Queues(
        usage=BatchQueue(usage_store.append, max_size=size, interval_s=FLUSH_S, name="usage"),
        audit=BatchQueue(audit_store.append, max_size=size, interval_s=FLUSH_S, name="audit"),
        payloads=BatchQueue(payload_store.append, max_size=size, name="payloads"),
    )
    cache = ResponseCache(backend, semantic, _embedder(gateway))
    meter = Meter(gateway, Governor(counters), metrics, queues, cache=cache)
    app = BastionApp(
        gateway,
        metrics=metrics,
        tracing=tracing,
        policy_path=settings.policy_path,
        audit=queues.audit,
        meter=meter,
        stores=Stores(
            usage=usage_store,
            audit=audit_store,
            payloads=payload_store,
            closers=tuple(d.close for d in dbs),
        ),
        rag=open_rag(settings),
        prompts=PromptService(prompt_store),
    )
    return Built(app, generated)
