"""The model client of ``bastion eval``: a running gateway, or one started in this process.

With ``--url`` the evals talk HTTP to that server (``--api-key``, else
``BASTION_API_KEY`` / ``BASTION_KEY``). Without it the gateway of the local
settings (``--policy``, ``--data-dir``) runs inside the CLI process and is
reached through ``httpx.ASGITransport``: the very same request path (keys,
budgets, guardrails, cache, usage rows, audit log) without a port. It
authenticates with ``BASTION_ADMIN_KEY`` when set, else the admin key a
brand-new data directory was just given, else a temporary admin key
(``eval-<random>``) created in the governance store and revoked at exit.
"""

from __future__ import annotations

import io
import os
import secrets
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from bastion.core.errors import InvalidRequest
from bastion.core.settings import Settings
from bastion.evals.client import HttpModelClient
from bastion.telemetry.audit import AuditDraft
from bastion.telemetry.logging import AccessLog

if TYPE_CHECKING:
    from bastion.api.app import BastionApp

IN_PROCESS_URL = "http://bastion.in-process"
KEY_ENV = ("BASTION_API_KEY", "BASTION_KEY")


def remote_key(api_key: str | None) -> str:
    """The key for a remote gateway: the option, else the environment."""
    key = api_key or next((v for e in KEY_ENV if (v := os.environ.get(e))), None)
    if not key:
        raise InvalidRequest("--url needs --api-key (or BASTION_API_KEY in the environment)")
    return key


@asynccontextmanager
async def open_client(
    *,
    url: str | None,
    api_key: str | None,
    policy: Path | None,
    data_dir: Path | None,
    headers: Mapping[str, str] | None = None,
    max_connections: int = 64,
    announce: Callable[[str], None] | None = None,
) -> AsyncIterator[HttpModelClient]:
    """A :class:`HttpModelClient` on ``url``, or on an in-process gateway; closed at exit.

    ``headers`` go with every call (``x-bastion-tags`` attributes eval usage).
    ``announce`` receives a newly generated admin key (a brand-new data
    directory), which is otherwise never shown.
    """
    if url:
        client = HttpModelClient(
            url, remote_key(api_key), headers=headers, max_connections=max_connections
        )
        try:
            yield client
        finally:
            await client.aclose()
        return
    async with _in_process(policy, data_dir, headers, max_connections, announce) as client:
        yield client


class _Discard(io.BytesIO):
    """A byte stream that keeps nothing."""

    def write(self, data: Any, /) -> int:
        return len(data)


def _audit(app: BastionApp, kind: str, **data: str) -> None:
    if app.audit_queue is not None:
        app.audit_queue.put_nowait(AuditDraft(kind=kind, actor="bastion eval", data=data))


@asynccontextmanager
async def _in_process(
    policy: Path | None,
    data_dir: Path | None,
    headers: Mapping[str, str] | None,
    max_connections: int,
    announce: Callable[[str], None] | None,
) -> AsyncIterator[HttpModelClient]:
    from bastion.api.server import build_app

    settings = Settings.from_env(policy, data_dir)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    built = build_app(settings, announce=announce)
    app = built.app
    # the access log would interleave JSON lines with the progress bar: usage rows and
    # the audit log keep the record of every eval call
    app.access_log = AccessLog(_Discard())
    await app.startup()
    temp_key: str | None = None
    try:
        key = settings.admin_key or built.generated_admin_key
        store = app.gateway.keystore
        if key is None:
            if store is None:  # pragma: no cover - build_app always wires one
                raise InvalidRequest("the in-process gateway has no key store")
            rec, key = store.create(
                f"eval-{secrets.token_hex(4)}", ["*"], role="admin", tenant_id=None
            )
            temp_key = rec.id
            _audit(app, "admin.key.create", key_id=rec.id, name=rec.name, role="admin")
            app.gateway.refresh_keys(force=True)
        transport = httpx.ASGITransport(app=app)
        client = HttpModelClient(
            IN_PROCESS_URL,
            key,
            transport=transport,
            headers=headers,
            max_connections=max_connections,
        )
        try:
            yield client
        finally:
            await client.aclose()
    finally:
        try:
            if temp_key is not None and app.gateway.keystore is not None:
                app.gateway.keystore.revoke(temp_key)
                _audit(app, "admin.key.revoke", key_id=temp_key)
        finally:
            await app.shutdown()
