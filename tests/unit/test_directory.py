"""Building the key ring from a governance snapshot, and authenticating against it."""

from __future__ import annotations

import time
from typing import Any

import pytest

from bastion.core.errors import AuthenticationError, PermissionDenied
from bastion.core.secrets import hash_key
from bastion.gateway.auth import BudgetRule, KeyRecord, KeyRing, Principal, principal_of
from bastion.gateway.directory import build_ring
from bastion.gateway.tenancy import DEFAULT_TENANT, Budget, Snapshot, Team, Tenant

ACME = Tenant("tnt_acme", "acme", models=("gpt-*", "claude-3-haiku"), rpm=100, tpm=10_000)
BETA = Tenant("tnt_beta", "beta")
ML = Team("team_ml", "tnt_acme", "ml", rpm=50, tpm=5_000)
OTHER = Team("team_other", "tnt_beta", "other")

BUDGETS = (
    Budget("b_key", "key", "k1", "tnt_acme", "day", usd=1.5),
    Budget("b_team", "team", "team_ml", "tnt_acme", "month", usd=0.1, tokens=1000, mode="soft"),
    Budget("b_tenant", "tenant", "tnt_acme", "tnt_acme", "month", tokens=10**6),
    Budget("b_beta", "tenant", "tnt_beta", "tnt_beta", "day", usd=2.0),
)


def key(name: str, **fields: Any) -> KeyRecord:
    return KeyRecord(id=name, name=name, hash=hash_key(f"secret-{name}"), **fields)


def snapshot(*keys: KeyRecord, budgets: tuple[Budget, ...] = BUDGETS) -> Snapshot:
    return Snapshot(1, (ACME, BETA), (ML, OTHER), keys, budgets)


def login(ring: KeyRing, name: str) -> Principal:
    return ring.authenticate(f"secret-{name}")


K1 = key(
    "k1",
    tenant_id="tnt_acme",
    team_id="team_ml",
    rpm=10,
    tpm=1000,
    models=("gpt-4o", "claude-3-haiku", "o3"),
)


def test_scopes_are_key_team_tenant_with_their_limits() -> None:
    p = login(build_ring(snapshot(K1)), "k1")
    assert [s.tag for s in p.scopes] == ["key:k1", "team:team_ml", "tenant:tnt_acme"]
    assert [(s.rpm, s.tpm) for s in p.scopes] == [(10, 1000), (50, 5_000), (100, 10_000)]
    assert (p.key_id, p.tenant_id, p.tenant_name, p.team_id, p.team_name) == (
        "k1",
        "tnt_acme",
        "acme",
        "team_ml",
        "ml",
    )


def test_budgets_attach_to_their_scope_in_micro_dollars() -> None:
    p = login(build_ring(snapshot(K1)), "k1")
    key_scope, team_scope, tenant_scope = p.scopes
    assert key_scope.budgets == (BudgetRule("b_key", "day", 1_500_000, None, True),)
    assert team_scope.budgets == (BudgetRule("b_team", "month", 100_000, 1000, False),)
    assert tenant_scope.budgets == (BudgetRule("b_tenant", "month", None, 10**6, True),)
    assert all(isinstance(b.micro_usd, int) for s in p.scopes for b in s.budgets if b.micro_usd)


def test_a_key_without_a_team_has_key_and_tenant_scopes() -> None:
    p = login(build_ring(snapshot(key("k2", tenant_id="tnt_beta"))), "k2")
    assert [s.tag for s in p.scopes] == ["key:k2", "tenant:tnt_beta"]
    assert p.scopes[1].budgets == (BudgetRule("b_beta", "day", 2_000_000, None, True),)
    assert p.team_id is None and p.team_name is None


def test_tenant_allow_list_intersects_the_keys() -> None:
    p = login(build_ring(snapshot(K1)), "k1")
    assert p.may_use("gpt-4o")
    assert p.may_use("claude-3-haiku")
    assert not p.may_use("o3")  # the key allows it, the tenant does not
    assert not p.may_use("gpt-4o-mini")  # the tenant allows it, the key does not
    with pytest.raises(PermissionDenied) as info:
        p.check_model("o3")
    assert info.value.param == "model"
    wide = login(build_ring(snapshot(key("k3", tenant_id="tnt_acme"))), "k3")
    assert wide.may_use("gpt-4o-mini") and wide.may_use("gpt-5")
    assert not wide.may_use("claude-opus-4")


def test_platform_admin_may_use_everything_and_has_only_a_key_scope() -> None:
    admin = key("adm", role="admin", tenant_id=None, models=("gpt-4o",), rpm=7)
    p = login(build_ring(snapshot(admin)), "adm")
    assert p.admin
    assert p.may_use("anything-at-all") and p.may_use("claude-opus-4")
    assert [(s.tag, s.rpm, s.tpm, s.budgets) for s in p.scopes] == [("key:adm", 7, None, ())]
    assert p.tenant_id is None and p.tenant_name is None


def test_a_tenant_admin_is_not_a_platform_admin() -> None:
    p = login(build_ring(snapshot(key("ta", role="admin", tenant_id="tnt_acme"))), "ta")
    assert not p.admin
    assert not p.may_use("o3")
    assert [s.tag for s in p.scopes] == ["key:ta", "tenant:tnt_acme"]


@pytest.mark.parametrize(
    "rec",
    [
        key("bad", tenant_id="tnt_nowhere"),
        key("bad", tenant_id="tnt_acme", team_id="team_nowhere"),
        key("bad", tenant_id="tnt_acme", team_id="team_other"),  # a team of tenant beta
        key("bad", tenant_id="tnt_acme", team_id="other"),  # beta's team, by name
        key("bad", tenant_id="tnt_acme", revoked_at=1.0),
        key("bad", tenant_id="tnt_acme", expires_at=time.time() - 60),
    ],
)
def test_unattributable_or_inactive_keys_are_left_out(rec: KeyRecord) -> None:
    ring = build_ring(snapshot(K1, rec))
    assert len(ring) == 1
    with pytest.raises(AuthenticationError, match="invalid API key"):
        login(ring, "bad")
    assert login(ring, "k1").key_id == "k1"


def test_a_key_expiring_later_is_served_with_its_expiry() -> None:
    later = time.time() + 3600
    p = login(build_ring(snapshot(key("k4", tenant_id="tnt_acme", expires_at=later))), "k4")
    assert p.expires_at == later


def test_policy_keys_name_their_tenant_and_team() -> None:
    policy = key("pk", tenant_id="acme", team_id="ml", rpm=3)
    p = login(build_ring(snapshot(), extra=[policy]), "pk")
    assert (p.tenant_id, p.tenant_name, p.team_id, p.team_name) == (
        "tnt_acme",
        "acme",
        "team_ml",
        "ml",
    )
    assert [s.tag for s in p.scopes] == ["key:pk", "team:team_ml", "tenant:tnt_acme"]
    assert p.scopes[1].budgets[0].id == "b_team"
    assert not p.may_use("o3")  # the named tenant's allow-list applies


def test_default_tenant_without_a_snapshot() -> None:
    ring = build_ring(None, extra=[key("env"), key("named", tenant_id="default")])
    for name in ("env", "named"):
        p = login(ring, name)
        assert (p.tenant_id, p.tenant_name) == (DEFAULT_TENANT, "default")
        assert [(s.tag, s.rpm, s.tpm, s.budgets) for s in p.scopes] == [
            (f"key:{name}", None, None, ()),
            (f"tenant:{DEFAULT_TENANT}", None, None, ()),
        ]


def test_without_a_snapshot_named_tenants_are_unknown() -> None:
    ring = build_ring(None, extra=[key("pk", tenant_id="acme")])
    assert len(ring) == 0


# --- KeyRing.authenticate -------------------------------------------------------


@pytest.mark.parametrize("token", [None, ""])
def test_authenticate_missing(token: str | None) -> None:
    with pytest.raises(AuthenticationError) as info:
        KeyRing().authenticate(token)
    err = info.value
    assert err.status == 401 and err.code == "authentication_error"
    assert err.param == "authorization"
    assert "missing API key" in err.message


def test_authenticate_invalid() -> None:
    ring = build_ring(snapshot(K1))
    with pytest.raises(AuthenticationError, match=r"^invalid API key$"):
        ring.authenticate("secret-k1 ")
    with pytest.raises(AuthenticationError, match=r"^invalid API key$"):
        ring.authenticate(K1.hash)  # the digest is not the key


def test_authenticate_expired() -> None:
    rec = key("old", expires_at=time.time() - 1)
    ring = KeyRing({rec.hash: principal_of(rec)})
    with pytest.raises(AuthenticationError, match=r"^API key expired$"):
        login(ring, "old")


def test_key_ring_of_skips_inactive_records() -> None:
    ring = KeyRing.of([key("a"), key("b", revoked_at=5.0), key("c", expires_at=time.time() - 1)])
    assert len(ring) == 1
    p = login(ring, "a")
    assert [(s.tag, s.rpm, s.tpm) for s in p.scopes] == [("key:a", None, None)]
