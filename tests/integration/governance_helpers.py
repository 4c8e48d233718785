"""Helpers for the governance tests: admin calls, usage polling, policy with prices."""

from __future__ import annotations

import time
from typing import Any

import httpx

from bastion.testing.fake_upstream import FakeUpstream
from bastion.testing.server import BastionServer
from tests.integration.gateway_policy import policy

GOV_EXTRA = """\
pricing:
  gpt-4o-mini: {input: 0.15, output: 0.60, cached_input: 0.075}
governance:
  default_max_tokens: 64
  logging:
    default: metadata
    rules:
      - {tenant: "full-*", mode: full}
      - {tenant: "red-*", mode: redacted}
      - {tenant: "quiet-*", mode: none}
"""

CACHED_MODELS = """\
  cached:
    routes: [{provider: up, model: gpt-4o-mini}]
    cache: {ttl_s: 60}
  semantic:
    routes: [{provider: up, model: gpt-4o-mini}]
    cache: {ttl_s: 60, exact: true, semantic: {embedding_model: emb, threshold: 0.99}}
  quota:
    routes: [{provider: up, model: quota-primary, rpm: 2}]
    fallbacks: [{provider: up2, model: quota-secondary}]
"""


def gov_policy(fake: FakeUpstream) -> str:
    base = policy(fake, GOV_EXTRA)
    # add the cached models under models:
    return base.replace("server: {", CACHED_MODELS + "server: {", 1)


def admin(
    srv: BastionServer, method: str, path: str, key: str | None = None, **kw: Any
) -> httpx.Response:
    headers = {"authorization": f"Bearer {key or srv.admin_key}"}
    return httpx.request(method, srv.base + path, headers=headers, timeout=10, **kw)


def make_tenant(srv: BastionServer, name: str, **fields: Any) -> dict[str, Any]:
    r = admin(srv, "POST", "/admin/tenants", json={"name": name, **fields})
    assert r.status_code == 201, r.text
    return dict(r.json())


def make_key(srv: BastionServer, name: str, **fields: Any) -> dict[str, Any]:
    r = admin(srv, "POST", "/admin/keys", json={"name": name, **fields})
    assert r.status_code == 201, r.text
    return dict(r.json())


def wait_keys(srv: BastionServer, secret: str, timeout: float = 5) -> None:
    """Wait until the server accepts ``secret`` (key rings refresh every second)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = httpx.get(srv.url + "/models", headers={"authorization": f"Bearer {secret}"})
        if r.status_code == 200:
            return
        time.sleep(0.1)
    raise AssertionError("key not accepted in time")


def usage(srv: BastionServer, key: str | None = None, **params: str) -> list[dict[str, Any]]:
    r = admin(srv, "GET", "/admin/usage", key, params=params)
    assert r.status_code == 200, r.text
    return list(r.json()["data"])


def wait_usage(
    srv: BastionServer, requests: int, timeout: float = 5, **params: str
) -> dict[str, Any]:
    """Poll until the usage totals for ``params`` count ``requests`` (rows are batched)."""
    deadline = time.monotonic() + timeout
    rows: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        rows = usage(srv, **params)
        if rows and rows[0]["requests"] >= requests:
            return rows[0]
        time.sleep(0.1)
    raise AssertionError(f"usage did not reach {requests} requests: {rows}")


def cost(prompt: int, completion: int, cached: int = 0) -> float:
    """gpt-4o-mini's price as in GOV_EXTRA (USD), rounded up to a micro-dollar."""
    micro = (prompt - cached) * 0.15 + cached * 0.075 + completion * 0.60
    return -(-micro // 1) / 1e6
