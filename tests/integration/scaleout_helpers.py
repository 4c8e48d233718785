"""Scale-out test plumbing: a fresh PostgreSQL database, a Redis prefix, N replicas.

:class:`Cluster` owns one migrated PostgreSQL database and one Redis key prefix
and starts any number of ``bastion serve`` processes sharing them (each with
its own data directory). PostgreSQL and Redis must be reachable: the tests
skip when they are not, except under ``CI=true``, where they fail.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from uuid import uuid4

import pytest

from bastion.testing.server import BastionServer, run_bastion

PG_ADMIN_URL = os.environ.get(
    "BASTION_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
REDIS_URL = os.environ.get("BASTION_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def _unavailable(message: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


def pg_url(name: str) -> str:
    base, _, _ = PG_ADMIN_URL.rpartition("/")
    return f"{base}/{name}"


def pg_admin(sql: str) -> None:
    import psycopg

    with psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=3) as conn:
        conn.execute(sql)


def require_services() -> None:
    """Skip (fail under ``CI=true``) unless PostgreSQL and Redis answer."""
    import psycopg
    import redis
    from redis.exceptions import RedisError

    try:
        pg_admin("SELECT 1")
    except psycopg.Error as exc:
        _unavailable(f"PostgreSQL at {PG_ADMIN_URL} is unreachable: {exc!r}")
    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2)
    try:
        client.ping()
    except (RedisError, OSError) as exc:
        _unavailable(f"Redis at {REDIS_URL} is unreachable: {exc!r}")
    finally:
        client.close()


def delete_redis_prefix(prefix: str) -> int:
    """Delete every Redis key under ``prefix`` (SCAN + DEL); returns how many."""
    import redis

    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2)
    try:
        keys = list(client.scan_iter(match=prefix + "*", count=500))
        if keys:
            client.delete(*keys)
        return len(keys)
    finally:
        client.close()


def pg_query(url: str, sql: str, params: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
    """Rows of one query on the database at ``url``."""
    import psycopg

    with psycopg.connect(url, autocommit=True, connect_timeout=3) as conn:
        return list(conn.execute(sql, params).fetchall())


class Cluster:
    """One PostgreSQL database and Redis prefix; :meth:`replica` starts servers on them."""

    def __init__(self, policy: str, env: dict[str, str], root: Path) -> None:
        from bastion.store.postgres.migrations import upgrade

        self.policy = policy
        self.root = root
        self.db_name = f"bastion_rep_{uuid4().hex[:12]}"
        self.db_url = pg_url(self.db_name)
        self.prefix = f"bt-{uuid4().hex[:8]}:"
        self.env = {
            **env,
            "BASTION_DATABASE_URL": self.db_url,
            "BASTION_REDIS_URL": REDIS_URL,
            "BASTION_REDIS_PREFIX": self.prefix,
        }
        self._stack = contextlib.ExitStack()
        self._count = 0
        pg_admin(f'CREATE DATABASE "{self.db_name}"')
        try:
            upgrade(self.db_url)
        except BaseException:
            self._drop()
            raise

    def replica(self) -> BastionServer:
        """Start one more replica (stopped, if still running, when the cluster closes)."""
        self._count += 1
        data_dir = self.root / f"replica-{self._count}"
        return self._stack.enter_context(run_bastion(self.policy, data_dir, env=self.env))

    def _drop(self) -> None:
        pg_admin(f'DROP DATABASE IF EXISTS "{self.db_name}" WITH (FORCE)')

    def close(self) -> None:
        """Stop the replicas, then drop the database and the Redis keys."""
        try:
            self._stack.close()
        finally:
            try:
                self._drop()
            finally:
                delete_redis_prefix(self.prefix)


@contextlib.contextmanager
def cluster(policy: str, env: dict[str, str], root: Path) -> Iterator[Cluster]:
    require_services()
    c = Cluster(policy, env, root)
    try:
        yield c
    finally:
        c.close()
