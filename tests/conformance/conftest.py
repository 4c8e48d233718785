"""Shared helpers for the conformance suites: real Redis and SQL databases, and a clock.

Every suite runs the same tests against the in-process implementation and the
Redis one. Redis tests use a unique key prefix per test and delete its keys at
teardown. When Redis is unreachable the Redis cases skip, except under
``CI=true``, where they fail.

The SQL suites run every test on SQLite (a migrated temporary file) and on
PostgreSQL (a fresh database per test, cloned from a template migrated once
per session, dropped after the test); PostgreSQL skips or fails the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from uuid import uuid4

import pytest
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from bastion.store.sql.database import Database

REDIS_URL = os.environ.get("BASTION_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def new_client() -> aioredis.Redis:
    return aioredis.Redis.from_url(REDIS_URL, decode_responses=False, socket_connect_timeout=2)


def unique_prefix() -> str:
    return f"bastion-test:{uuid4().hex}:"


async def redis_or_skip() -> aioredis.Redis:
    """A connected client; skips the test when Redis is down (fails it when CI=true)."""
    client = new_client()
    try:
        await client.ping()
    except (RedisError, OSError) as exc:
        await client.aclose()
        message = f"Redis at {REDIS_URL} is unreachable: {exc!r}"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return client


async def delete_prefix(client: aioredis.Redis, prefix: str) -> None:
    """Delete every key under ``prefix`` (SCAN + DEL)."""
    keys = [k async for k in client.scan_iter(match=prefix + "*", count=500)]
    if keys:
        await client.delete(*keys)


class FakeClock:
    """A settable clock for the in-process implementations."""

    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Advance:
    """Lets time pass: moves a fake clock, or really sleeps (for Redis's own expiry)."""

    def __init__(self, clock: FakeClock | None = None) -> None:
        self.clock = clock

    async def __call__(self, seconds: float) -> None:
        if self.clock is None:
            await asyncio.sleep(seconds)
        else:
            self.clock.now += seconds


# --------------------------------------------------------------------------- SQL databases

PG_ADMIN_URL = os.environ.get(
    "BASTION_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
_PG_AHEAD = 4  # databases cloned ahead of the tests that take them (CREATE DATABASE fsyncs)


def _pg_url(name: str) -> str:
    base, _, _ = PG_ADMIN_URL.rpartition("/")
    return f"{base}/{name}"


def _pg_admin(sql: str) -> None:
    import psycopg

    with psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=3) as conn:
        conn.execute(sql)


class PgDatabases:
    """Fresh databases cloned from a migrated template, created and dropped in the background.

    Cloning and dropping a database each wait on the disk, but several run at
    once just as fast: worker threads keep a few clones ready and drop used
    ones while the tests run.
    """

    def __init__(self) -> None:
        from bastion.store.postgres.migrations import upgrade

        self.template = f"bastion_tpl_{uuid4().hex[:12]}"
        _pg_admin(f'CREATE DATABASE "{self.template}"')
        self._pool = ThreadPoolExecutor(_PG_AHEAD, thread_name_prefix="pg-clone")
        self._ready: deque[Future[str]] = deque()
        self._drops: list[Future[None]] = []
        try:
            upgrade(_pg_url(self.template))
        except BaseException:
            self.close()
            raise

    def _clone(self) -> str:
        name = f"bastion_t_{uuid4().hex[:12]}"
        _pg_admin(f'CREATE DATABASE "{name}" TEMPLATE "{self.template}"')
        return name

    def take(self) -> str:
        """The URL of a fresh database (give it back with :meth:`drop`)."""
        while len(self._ready) <= _PG_AHEAD:
            self._ready.append(self._pool.submit(self._clone))
        return _pg_url(self._ready.popleft().result())

    def drop(self, url: str) -> None:
        name = url.rpartition("/")[2]
        self._drops.append(self._pool.submit(_pg_admin, f'DROP DATABASE "{name}" WITH (FORCE)'))

    def close(self) -> None:
        """Drop every clone, then the template; raises the first failure."""
        errors: list[BaseException] = []
        while self._ready:
            clone = self._ready.popleft()
            if not clone.cancel():
                try:
                    self.drop(_pg_url(clone.result()))
                except Exception as exc:
                    errors.append(exc)
        for dropped in self._drops:
            if (failure := dropped.exception()) is not None:
                errors.append(failure)
        self._pool.shutdown()
        try:
            _pg_admin(f'DROP DATABASE IF EXISTS "{self.template}" WITH (FORCE)')
        except Exception as exc:
            errors.append(exc)
        if errors:
            raise errors[0]


@pytest.fixture(scope="session")
def pg_databases() -> Iterator[PgDatabases]:
    """PostgreSQL test databases; skips when PostgreSQL is unreachable (fails when CI=true)."""
    import psycopg

    try:
        _pg_admin("SELECT 1")
    except psycopg.OperationalError as exc:
        message = f"PostgreSQL at {PG_ADMIN_URL} is unreachable: {exc!r}"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    dbs = PgDatabases()
    yield dbs
    dbs.close()


@pytest.fixture(params=["sqlite", "postgres"])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    """A fresh, migrated database: a SQLite file, or a PostgreSQL database of its own."""
    from bastion.store.sql.database import PostgresDatabase, SqliteDatabase

    if request.param == "sqlite":
        from bastion.store.sqlite.db import upgrade

        path = tmp_path / "bastion.db"
        upgrade(path)
        lite = SqliteDatabase(path)
        yield lite
        lite.close()
        return
    dbs: PgDatabases = request.getfixturevalue("pg_databases")
    url = dbs.take()
    try:
        pg = PostgresDatabase(url)
        yield pg
        pg.close()
    finally:
        dbs.drop(url)


@pytest.fixture
def open_db(db: Database) -> Iterator[Callable[[], Database]]:
    """Opens more connections to the test's database (closed at teardown): other replicas."""
    from bastion.store.sql.database import PostgresDatabase, SqliteDatabase

    opened: list[Database] = []

    def open_one() -> Database:
        other: Database
        if isinstance(db, SqliteDatabase):
            other = SqliteDatabase(db.path)
        else:
            assert isinstance(db, PostgresDatabase)
            other = PostgresDatabase(db.url)
        opened.append(other)
        return other

    yield open_one
    for other in opened:
        with contextlib.suppress(Exception):
            other.close()
