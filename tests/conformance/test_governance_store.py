"""SqlGovernanceStore conformance: the same behaviour on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from bastion.core.errors import InvalidRequest, NotFound
from bastion.core.secrets import hash_key
from bastion.gateway.tenancy import DEFAULT_TENANT, GovernanceStore
from bastion.store.sql.database import Database, PostgresDatabase, SqliteDatabase
from bastion.store.sql.governance import SqlGovernanceStore
from bastion.store.sqlite.db import upgrade as sqlite_upgrade
from tests.conformance.conftest import PgDatabases


@pytest.fixture
def store(db: Database) -> SqlGovernanceStore:
    return SqlGovernanceStore(db)


@pytest.fixture
def replica(open_db: Callable[[], Database]) -> Iterator[SqlGovernanceStore]:
    """A second store on the same database, over its own connection."""
    yield SqlGovernanceStore(open_db())


def test_it_is_a_governance_store(store: SqlGovernanceStore) -> None:
    port: GovernanceStore = store
    assert port.version() >= 1


# ---------------------------------------------------------------------------- tenants
def test_the_default_tenant_exists(store: SqlGovernanceStore) -> None:
    tenants = store.list_tenants()
    assert [(t.id, t.name, t.models) for t in tenants] == [(DEFAULT_TENANT, "default", ("*",))]
    assert store.get_tenant("default") == tenants[0]
    assert store.get_tenant(DEFAULT_TENANT) == tenants[0]


def test_create_and_get_tenant(store: SqlGovernanceStore) -> None:
    t = store.create_tenant("acme", models=["gpt-4o", "chat-*"], rpm=60, tpm=10_000)
    assert t.id.startswith("tnt_") and t.name == "acme"
    assert (t.models, t.rpm, t.tpm) == (("gpt-4o", "chat-*"), 60, 10_000)
    assert store.get_tenant(t.id) == t
    assert store.get_tenant("acme") == t
    assert [x.name for x in store.list_tenants()] == ["default", "acme"]
    assert store.list_tenants()[1] == t


def test_tenant_defaults(store: SqlGovernanceStore) -> None:
    t = store.create_tenant("plain", models=[])
    got = store.get_tenant("plain")
    assert got == t
    assert (got.models, got.rpm, got.tpm) == (("*",), None, None)


def test_tenant_names_are_unique(store: SqlGovernanceStore) -> None:
    store.create_tenant("acme")
    v = store.version()
    with pytest.raises(InvalidRequest, match="acme"):
        store.create_tenant("acme")
    with pytest.raises(InvalidRequest):
        store.create_tenant("default")
    assert store.version() == v
    assert [t.name for t in store.list_tenants()] == ["default", "acme"]


def test_unknown_tenant_is_not_found(store: SqlGovernanceStore) -> None:
    with pytest.raises(NotFound):
        store.get_tenant("nope")
    with pytest.raises(NotFound):
        store.update_tenant("nope", rpm=1)


def test_update_tenant(store: SqlGovernanceStore) -> None:
    t = store.create_tenant("acme", models=["a"], rpm=5)
    u = store.update_tenant("acme", models=["b", "c"], rpm=7, tpm=70)
    assert (u.id, u.name, u.models, u.rpm, u.tpm, u.created_at) == (
        t.id,
        "acme",
        ("b", "c"),
        7,
        70,
        t.created_at,
    )
    assert store.get_tenant(t.id) == u
    kept = store.update_tenant(t.id, rpm=8)  # models=None keeps the models
    assert kept.models == ("b", "c")
    assert store.get_tenant(t.id) == kept


def test_negative_limits_are_refused(store: SqlGovernanceStore) -> None:
    with pytest.raises(InvalidRequest):
        store.create_tenant("x", rpm=-1)
    with pytest.raises(InvalidRequest):
        store.create_team(DEFAULT_TENANT, "x", tpm=-1)
    with pytest.raises(InvalidRequest):
        store.create("k", rpm=-5)


# ---------------------------------------------------------------------------- teams
def test_create_get_and_list_teams(store: SqlGovernanceStore) -> None:
    acme = store.create_tenant("acme")
    globex = store.create_tenant("globex")
    red = store.create_team("acme", "red", rpm=10, tpm=100)  # the tenant by name
    blue = store.create_team(acme.id, "blue")
    other_red = store.create_team(globex.id, "red")  # same name, other tenant
    assert red.tenant_id == acme.id and other_red.tenant_id == globex.id
    assert red.id.startswith("team_") and red.id != other_red.id
    assert (red.rpm, red.tpm, blue.rpm, blue.tpm) == (10, 100, None, None)
    assert store.get_team(acme.id, "red") == red
    assert store.get_team(acme.id, red.id) == red
    assert store.get_team(globex.id, "red") == other_red
    assert store.list_teams(acme.id) == [red, blue]
    assert store.list_teams(globex.id) == [other_red]
    assert store.list_teams(DEFAULT_TENANT) == []
    assert store.list_teams() == [red, blue, other_red]


def test_team_names_are_unique_per_tenant(store: SqlGovernanceStore) -> None:
    acme = store.create_tenant("acme")
    store.create_team(acme.id, "red")
    with pytest.raises(InvalidRequest, match="red"):
        store.create_team(acme.id, "red")
    assert len(store.list_teams(acme.id)) == 1


def test_team_lookups_stay_in_their_tenant(store: SqlGovernanceStore) -> None:
    acme = store.create_tenant("acme")
    red = store.create_team(acme.id, "red")
    with pytest.raises(NotFound):
        store.get_team(DEFAULT_TENANT, "red")
    with pytest.raises(NotFound):
        store.get_team(DEFAULT_TENANT, red.id)
    with pytest.raises(NotFound):
        store.create_team("no-such-tenant", "red")


# ---------------------------------------------------------------------------- keys
def test_create_key_returns_its_secret_once(store: SqlGovernanceStore) -> None:
    rec, secret = store.create("svc", ["gpt-4o"])
    assert hash_key(secret) == rec.hash
    assert secret not in rec.hash
    assert rec.prefix == secret[:8]
    assert rec.id.startswith("key_")
    assert (rec.tenant_id, rec.team_id, rec.role, rec.admin) == (
        DEFAULT_TENANT,
        None,
        None,
        False,
    )
    assert rec.revoked_at is None
    assert store.get_key(rec.id) == rec
    assert store.get_key("svc") == rec


def test_key_fields_round_trip(store: SqlGovernanceStore) -> None:
    acme = store.create_tenant("acme")
    red = store.create_team(acme.id, "red")
    rec, _ = store.create(
        "dev",
        ["a", "b*"],
        role="developer",
        tenant_id="acme",
        team_id="red",
        owner="alice@example.com",
        rpm=30,
        tpm=3000,
        expires_at=2_000_000_000.5,
    )
    assert (rec.tenant_id, rec.team_id) == (acme.id, red.id)  # names resolved to ids
    got = store.get_key("dev")
    assert got == rec
    assert (got.models, got.role, got.owner, got.rpm, got.tpm, got.expires_at) == (
        ("a", "b*"),
        "developer",
        "alice@example.com",
        30,
        3000,
        2_000_000_000.5,
    )


def test_key_roles_are_checked(store: SqlGovernanceStore) -> None:
    for role in ("admin", "developer", "viewer"):
        assert store.create(f"k-{role}", role=role)[0].role == role
    with pytest.raises(InvalidRequest):
        store.create("bad", role="root")


def test_only_a_platform_admin_key_may_have_no_tenant(store: SqlGovernanceStore) -> None:
    rec, _ = store.create("root", role="admin", tenant_id=None)
    assert rec.admin and rec.tenant_id is None
    assert store.get_key("root") == rec
    for role in (None, "developer", "viewer"):
        with pytest.raises(InvalidRequest):
            store.create(f"x-{role}", role=role, tenant_id=None)
    with pytest.raises(InvalidRequest):
        store.create("x-team", role="admin", tenant_id=None, team_id="red")


def test_key_in_unknown_tenant_or_team_is_not_found(store: SqlGovernanceStore) -> None:
    with pytest.raises(NotFound):
        store.create("k", tenant_id="nope")
    with pytest.raises(NotFound):
        store.create("k", team_id="nope")


def test_active_key_names_are_unique_until_revoked(store: SqlGovernanceStore) -> None:
    first, _ = store.create("svc")
    with pytest.raises(InvalidRequest, match="svc"):
        store.create("svc")
    revoked = store.revoke("svc")
    assert revoked.id == first.id and revoked.revoked_at is not None
    second, _ = store.create("svc")
    assert second.id != first.id
    assert store.get_key("svc") == second
    with pytest.raises(NotFound):
        store.get_key(first.id)  # revoked keys are not active
    with pytest.raises(NotFound):
        store.revoke(first.id)


def test_revoke_and_list(store: SqlGovernanceStore) -> None:
    acme = store.create_tenant("acme")
    a, _ = store.create("a")
    b, _ = store.create("b", tenant_id=acme.id)
    c, _ = store.create("c", tenant_id=acme.id)
    root, _ = store.create("root", role="admin", tenant_id=None)
    assert store.list() == [a, b, c, root]
    store.revoke(b.id)
    assert store.list() == [a, c, root]
    assert store.list(tenant_id=acme.id) == [c]
    assert store.list(tenant_id=DEFAULT_TENANT) == [a]
    every = store.list(include_revoked=True)
    assert [k.id for k in every] == [a.id, b.id, c.id, root.id]
    assert every[1].revoked_at is not None
    assert [k.id for k in store.list(include_revoked=True, tenant_id=acme.id)] == [b.id, c.id]


# ---------------------------------------------------------------------------- budgets
def test_set_list_and_delete_budgets(store: SqlGovernanceStore) -> None:
    acme = store.create_tenant("acme")
    t = store.set_budget("tenant", acme.id, acme.id, "month", usd=100.25, mode="soft")
    k = store.set_budget("key", "key_x", DEFAULT_TENANT, "day", tokens=50_000)
    assert (t.scope, t.scope_id, t.tenant_id, t.period, t.usd, t.tokens, t.mode) == (
        "tenant",
        acme.id,
        acme.id,
        "month",
        100.25,
        None,
        "soft",
    )
    assert (k.usd, k.tokens, k.mode) == (None, 50_000, "hard")
    assert store.list_budgets() == [t, k]
    assert store.list_budgets(acme.id) == [t]
    assert store.list_budgets(DEFAULT_TENANT) == [k]
    assert store.delete_budget(t.id) == t
    assert store.list_budgets() == [k]
    with pytest.raises(NotFound):
        store.delete_budget(t.id)


def test_set_budget_replaces_the_same_scope_and_period(store: SqlGovernanceStore) -> None:
    first = store.set_budget("team", "team_1", DEFAULT_TENANT, "day", usd=1.0)
    monthly = store.set_budget("team", "team_1", DEFAULT_TENANT, "month", usd=20.0)
    second = store.set_budget("team", "team_1", DEFAULT_TENANT, "day", usd=2.5, tokens=9)
    assert {b.id for b in store.list_budgets()} == {monthly.id, second.id}
    assert first.id not in {b.id for b in store.list_budgets()}
    day = [b for b in store.list_budgets() if b.period == "day"]
    assert day == [second]


@pytest.mark.parametrize(
    ("scope", "period", "usd", "tokens", "mode"),
    [
        ("org", "day", 1.0, None, "hard"),
        ("team", "week", 1.0, None, "hard"),
        ("team", "day", 1.0, None, "maybe"),
        ("team", "day", None, None, "hard"),
        ("team", "day", -1.0, None, "hard"),
        ("team", "day", None, -1, "hard"),
    ],
)
def test_invalid_budgets_are_refused(
    store: SqlGovernanceStore,
    scope: str,
    period: str,
    usd: float | None,
    tokens: int | None,
    mode: str,
) -> None:
    v = store.version()
    with pytest.raises(InvalidRequest):
        store.set_budget(scope, "x", DEFAULT_TENANT, period, usd=usd, tokens=tokens, mode=mode)
    assert store.list_budgets() == []
    assert store.version() == v


# ---------------------------------------------------------------------------- change tracking
def test_every_write_bumps_the_version_and_reads_do_not(store: SqlGovernanceStore) -> None:
    seen = [store.version()]

    def bumped() -> None:
        v = store.version()
        assert v > seen[-1]
        seen.append(v)

    acme = store.create_tenant("acme")
    bumped()
    store.update_tenant(acme.id, rpm=1)
    bumped()
    store.create_team(acme.id, "red")
    bumped()
    store.create("k", tenant_id=acme.id)
    bumped()
    store.revoke("k")
    bumped()
    store.set_budget("tenant", acme.id, acme.id, "day", usd=1)
    bumped()
    store.set_budget("tenant", acme.id, acme.id, "day", usd=2)
    bumped()
    store.delete_budget(store.list_budgets()[0].id)
    bumped()

    store.get_tenant("acme")
    store.list_tenants()
    store.get_team(acme.id, "red")
    store.list_teams()
    store.list(include_revoked=True)
    store.list_budgets()
    store.snapshot()
    with pytest.raises(NotFound):
        store.get_key("k")
    assert store.version() == seen[-1]


def test_snapshot(store: SqlGovernanceStore) -> None:
    acme = store.create_tenant("acme")
    red = store.create_team(acme.id, "red")
    live, _ = store.create("live", tenant_id=acme.id, team_id=red.id)
    gone, _ = store.create("gone")
    store.revoke(gone.id)
    budget = store.set_budget("team", red.id, acme.id, "month", usd=5)
    snap = store.snapshot()
    assert snap.version == store.version()
    assert snap.tenants == tuple(store.list_tenants())
    assert [t.name for t in snap.tenants] == ["default", "acme"]
    assert snap.teams == (red,)
    assert snap.keys == (live,)  # active keys only
    assert snap.budgets == (budget,)


def test_a_second_instance_sees_every_change(
    store: SqlGovernanceStore, replica: SqlGovernanceStore
) -> None:
    assert replica.version() == store.version()
    before = replica.version()
    acme = store.create_tenant("acme")
    assert replica.version() > before
    assert replica.get_tenant("acme") == acme
    before = replica.version()
    rec, secret = replica.create("from-replica", tenant_id="acme")
    assert store.version() > before
    assert store.get_key("from-replica") == rec
    assert hash_key(secret) == store.get_key(rec.id).hash
    store.revoke(rec.id)
    assert replica.snapshot().keys == ()
    assert replica.snapshot().version == store.version()


def test_unique_names_hold_across_instances(
    store: SqlGovernanceStore, replica: SqlGovernanceStore
) -> None:
    store.create_tenant("acme")
    with pytest.raises(InvalidRequest):
        replica.create_tenant("acme")
    store.create("svc")
    with pytest.raises(InvalidRequest):
        replica.create("svc")


def test_an_id_wins_over_a_name(store: SqlGovernanceStore) -> None:
    named_like_an_id = store.create_tenant(DEFAULT_TENANT)
    assert store.get_tenant(DEFAULT_TENANT).name == "default"
    assert store.get_tenant(named_like_an_id.id) == named_like_an_id
    red = store.create_team(DEFAULT_TENANT, "red")
    impostor = store.create_team(DEFAULT_TENANT, red.id)
    assert store.get_team(DEFAULT_TENANT, red.id) == red
    assert store.get_team(DEFAULT_TENANT, impostor.id) == impostor
    key, _ = store.create("svc")
    key_impostor, _ = store.create(key.id)
    assert store.get_key(key.id) == key
    assert store.get_key(key_impostor.id) == key_impostor


def test_a_lost_postgres_connection_is_replaced(
    db: Database, store: SqlGovernanceStore, open_db: Callable[[], Database]
) -> None:
    if not isinstance(db, PostgresDatabase):
        pytest.skip("PostgreSQL only: SQLite has no server connection to lose")
    import psycopg

    version = store.version()
    ((pid,),) = db.query("SELECT pg_backend_pid()")
    assert open_db().query("SELECT pg_terminate_backend(?, 5000)", (pid,)) == [(True,)]
    with pytest.raises(psycopg.OperationalError):
        store.version()  # the call that finds out fails
    assert store.version() == version  # the next one runs on a new connection
    store.create_tenant("after-reconnect")
    assert store.version() > version


def test_the_postgres_schema_matches_sqlite_column_for_column(
    tmp_path: Path, pg_databases: PgDatabases
) -> None:
    path = tmp_path / "bastion.db"
    sqlite_upgrade(path)
    lite = SqliteDatabase(path)
    url = pg_databases.take()
    pg = PostgresDatabase(url)
    try:
        types = {"TEXT": "text", "INTEGER": "int", "REAL": "double precision"}
        want = {}
        for (table,) in lite.query("SELECT name FROM sqlite_master WHERE type = 'table'"):
            want[table] = [
                (name, types[kind], bool(notnull or pk))
                for _, name, kind, notnull, _, pk in lite.query(f"PRAGMA table_info({table})")
            ]
        got: dict[str, list[tuple[str, str, bool]]] = {}
        for table, name, kind, nullable in pg.query(
            "SELECT table_name, column_name, data_type, is_nullable FROM information_schema.columns"
            " WHERE table_schema = 'public' AND table_name <> 'bastion_schema'"
            " ORDER BY table_name, ordinal_position"
        ):
            kind = "int" if kind in ("integer", "bigint") else kind
            got.setdefault(table, []).append((name, kind, nullable == "NO"))
        assert got == want
        lite_indexes = lite.query(
            "SELECT name FROM sqlite_master WHERE type = 'index' AND name NOT LIKE 'sqlite%'"
        )
        pg_indexes = pg.query(  # less those backing PRIMARY KEY and UNIQUE constraints
            "SELECT indexname FROM pg_indexes WHERE schemaname = 'public' "
            "AND indexname NOT LIKE '%key'"
        )
        assert sorted(lite_indexes) == sorted(pg_indexes)
    finally:
        lite.close()
        pg.close()
        pg_databases.drop(url)


def test_transactions_commit_roll_back_and_nest_alike(db: Database) -> None:
    store = SqlGovernanceStore(db)
    v = store.version()
    with pytest.raises(RuntimeError), db.transaction():
        store._bump()
        raise RuntimeError("rolled back")
    assert store.version() == v
    with db.transaction(lock="test"):
        store._bump()
        with pytest.raises(RuntimeError), db.transaction():
            store._bump()
            raise RuntimeError("only the inner block is rolled back")
        with db.transaction():
            store._bump()
    assert store.version() == v + 2
