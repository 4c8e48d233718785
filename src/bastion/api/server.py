"""Build a ready-to-serve :class:`BastionApp` from settings (composition root)."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

from bastion.api.app import BastionApp
from bastion.config.defaults import embedded_policy
from bastion.config.loader import load_policy
from bastion.core.secrets import hash_key
from bastion.core.settings import Settings
from bastion.gateway.auth import KeyRecord
from bastion.gateway.service import Gateway
from bastion.store.sqlite import keys as sqlite_keys
from bastion.store.sqlite.audit import SqliteAuditStore
from bastion.telemetry.batch import BatchQueue
from bastion.telemetry.metrics import Metrics
from bastion.telemetry.tracing import Tracing


@dataclass(frozen=True, slots=True)
class Built:
    app: BastionApp
    generated_admin_key: str | None


def build_app(settings: Settings, *, announce: Callable[[str], None] | None = None) -> Built:
    """Policy, key store, telemetry and gateway wired into the ASGI app.

    A brand-new data directory gets its schema created here; an existing one at
    an older schema must be migrated explicitly with ``bastion db upgrade``.
    """
    policy = load_policy(settings.policy_path) if settings.policy_path else embedded_policy()
    if not settings.db_path.exists():
        sqlite_keys.upgrade(settings.db_path)
    store = sqlite_keys.SqliteKeyStore(settings.db_path)
    audit_store = SqliteAuditStore(settings.db_path)
    extra: list[KeyRecord] = []
    generated = None
    if settings.admin_key:
        extra.append(
            KeyRecord(
                id="admin:env",
                name="admin (BASTION_ADMIN_KEY)",
                hash=hash_key(settings.admin_key),
                admin=True,
            )
        )
    elif not any(r.admin for r in store.list()):
        _, generated = store.create("admin", ["*"], admin=True)
        if announce is not None:
            announce(generated)
    metrics = Metrics()
    tel = policy.telemetry
    tracing = Tracing(
        service_name=tel.service_name,
        otlp_endpoint=tel.otlp_endpoint or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"),
    )
    gateway = Gateway(policy, observer=metrics, keystore=store, extra_keys=extra)
    app = BastionApp(
        gateway,
        metrics=metrics,
        tracing=tracing,
        policy_path=settings.policy_path,
        audit=BatchQueue(audit_store.append),
    )
    return Built(app, generated)
