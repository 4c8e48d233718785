"""Tenant isolation and admin roles, on the data plane and the admin API."""

from __future__ import annotations

import time
from collections.abc import Iterator

import openai
import pytest

from bastion.testing.fake_upstream import FakeUpstream
from bastion.testing.server import BastionServer, run_bastion
from tests.integration.gateway_policy import ENV
from tests.integration.governance_helpers import (
    admin,
    gov_policy,
    make_key,
    make_tenant,
    wait_keys,
    wait_usage,
)


@pytest.fixture(scope="module")
def world(
    upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[BastionServer, dict[str, str]]]:
    """Tenants A (all models) and B (only gpt), each with keys of every role."""
    with run_bastion(gov_policy(upstream), tmp_path_factory.mktemp("iso"), env=ENV) as srv:
        make_tenant(srv, "iso-a")
        make_tenant(srv, "iso-b", models=["gpt"])
        keys: dict[str, str] = {}
        for t in ("a", "b"):
            keys[f"{t}-app"] = make_key(srv, f"{t}-app", tenant=f"iso-{t}")["key"]
            for role in ("viewer", "developer", "admin"):
                keys[f"{t}-{role}"] = make_key(srv, f"{t}-{role}", tenant=f"iso-{t}", role=role)[
                    "key"
                ]
        for k in keys.values():
            wait_keys(srv, k)
        for t in ("a", "b"):
            c = openai.OpenAI(base_url=srv.url, api_key=keys[f"{t}-app"], max_retries=0)
            c.chat.completions.create(
                model="cached", messages=[{"role": "user", "content": f"secret of {t}"}]
            ) if t == "a" else c.chat.completions.create(
                model="gpt", messages=[{"role": "user", "content": f"secret of {t}"}]
            )
        wait_usage(srv, 1, tenant="iso-a")
        wait_usage(srv, 1, tenant="iso-b")
        yield srv, keys


def test_models_are_scoped_by_tenant(world: tuple[BastionServer, dict[str, str]]) -> None:
    srv, keys = world
    b = openai.OpenAI(base_url=srv.url, api_key=keys["b-app"], max_retries=0)
    assert {m.id for m in b.models.list()} == {"gpt"}
    with pytest.raises(openai.PermissionDeniedError):
        b.chat.completions.create(model="claude", messages=[{"role": "user", "content": "x"}])
    a = openai.OpenAI(base_url=srv.url, api_key=keys["a-app"], max_retries=0)
    assert "claude" in {m.id for m in a.models.list()}


@pytest.mark.parametrize("role", ["viewer", "developer", "admin"])
def test_a_tenant_reads_only_its_own_usage_keys_and_audit(
    world: tuple[BastionServer, dict[str, str]], role: str
) -> None:
    srv, keys = world
    key = keys[f"b-{role}"]
    tenants = admin(srv, "GET", "/admin/tenants", key).json()["data"]
    assert [t["name"] for t in tenants] == ["iso-b"]
    a_id = next(
        t["id"] for t in admin(srv, "GET", "/admin/tenants").json()["data"] if t["name"] == "iso-a"
    )
    b_id = tenants[0]["id"]
    # usage: own tenant only, whatever is asked for
    rows = admin(srv, "GET", "/admin/usage", key, params={"group_by": "tenant"}).json()["data"]
    assert [r["tenant"] for r in rows] == [b_id]
    assert admin(srv, "GET", "/admin/usage", key, params={"tenant": "iso-a"}).status_code == 404
    # keys and audit events: own tenant only
    listed = admin(srv, "GET", "/admin/keys", key).json()["data"]
    assert listed and {k["tenant_id"] for k in listed} == {b_id}
    events = admin(srv, "GET", "/admin/audit", key, params={"limit": "1000"}).json()["data"]
    assert events and {e["tenant"] for e in events} == {b_id}
    assert admin(srv, "GET", f"/admin/tenants/{a_id}", key).status_code == 404


def test_viewer_cannot_write_and_developer_cannot_grant_roles(
    world: tuple[BastionServer, dict[str, str]],
) -> None:
    srv, keys = world
    viewer, dev, adm = keys["b-viewer"], keys["b-developer"], keys["b-admin"]
    for path, body in [
        ("/admin/keys", {"name": "v-key"}),
        ("/admin/teams", {"name": "v-team"}),
        ("/admin/budgets", {"scope": "tenant", "id": "iso-b", "usd": 1}),
        ("/admin/tenants", {"name": "v-tenant"}),
    ]:
        r = admin(srv, "POST", path, viewer, json=body)
        assert r.status_code == 403, (path, r.text)
        assert r.json()["error"]["code"] == "permission_denied"
    # a developer creates plain keys in its own tenant, never role keys or budgets
    made = admin(srv, "POST", "/admin/keys", dev, json={"name": "dev-made"})
    assert made.status_code == 201 and made.json()["role"] is None
    assert (
        admin(srv, "POST", "/admin/keys", dev, json={"name": "x", "role": "admin"}).status_code
        == 403
    )
    assert (
        admin(srv, "POST", "/admin/budgets", dev, json={"scope": "tenant", "id": "iso-b", "usd": 1})
    ).status_code == 403
    # a tenant admin cannot reach into tenant A or create tenants
    assert (
        admin(srv, "POST", "/admin/keys", adm, json={"name": "y", "tenant": "iso-a"})
    ).status_code == 404
    assert admin(srv, "POST", "/admin/tenants", adm, json={"name": "z"}).status_code == 403
    a_key_id = next(
        k["id"] for k in admin(srv, "GET", "/admin/keys").json()["data"] if k["name"] == "a-app"
    )
    assert admin(srv, "DELETE", f"/admin/keys/{a_key_id}", adm).status_code == 404
    # a data-plane key has no admin access at all
    assert admin(srv, "GET", "/admin/usage", keys["b-app"]).status_code == 403


def test_admin_writes_are_audited(world: tuple[BastionServer, dict[str, str]]) -> None:
    srv, keys = world
    r = admin(srv, "POST", "/admin/teams", keys["a-admin"], json={"name": "audited-team"})
    assert r.status_code == 201
    deadline = time.monotonic() + 5
    kinds: list[str] = []
    while "admin.team.create" not in kinds and time.monotonic() < deadline:
        time.sleep(0.1)  # audit events are written in batches
        events = admin(srv, "GET", "/admin/audit", keys["a-admin"], params={"limit": "1000"})
        kinds = [e["kind"] for e in events.json()["data"]]
    assert "admin.team.create" in kinds and "admin.key.create" in kinds
