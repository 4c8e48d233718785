"""One small database interface over SQLite and PostgreSQL.

The SQL stores (:mod:`bastion.store.sql`) are written once against
:class:`Database`: statements use ``?`` placeholders and the SQL both engines
share (``ON CONFLICT``, ``RETURNING``, CTEs); the few expressions that differ
come from :attr:`Database.dialect`. :class:`SqliteDatabase` serves embedded
mode (one file, WAL); :class:`PostgresDatabase` serves scale-out replicas
(``BASTION_DATABASE_URL=postgresql://...``), through psycopg 3.

Every method is synchronous and thread-safe (one connection behind a lock):
stores are called from worker threads, off the request path.
"""

from __future__ import annotations

import re
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal, Protocol

Row = tuple[Any, ...]
Dialect = Literal["sqlite", "postgres"]


class Database(Protocol):
    dialect: Dialect

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[Row]: ...

    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Run a statement; returns the number of rows it changed."""
        ...

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None: ...

    @contextmanager
    def transaction(self, lock: str | None = None) -> Iterator[None]:
        """A write transaction. ``lock`` names a lock held until it ends (PostgreSQL)."""
        yield

    def close(self) -> None: ...


class SqliteDatabase:
    """A SQLite file in autocommit mode with WAL; transactions take the write lock first."""

    dialect: Dialect = "sqlite"

    def __init__(self, path: Path) -> None:
        from bastion.store.sqlite.db import open_current

        self.path = path
        self._conn = open_current(path)
        self._lock = threading.RLock()

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        with self._lock:
            return self._conn.execute(sql, tuple(params)).fetchall()

    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        with self._lock:
            return self._conn.execute(sql, tuple(params)).rowcount

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        with self._lock:
            self._conn.executemany(sql, rows)

    @contextmanager
    def transaction(self, lock: str | None = None) -> Iterator[None]:
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield
                self._conn.execute("COMMIT")
            except BaseException:
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                raise

    def close(self) -> None:
        with self._lock:
            self._conn.close()


# A ``?`` placeholder, or a quoted literal, identifier or comment to leave as it is.
_TOKEN = re.compile(r"'(?:[^']|'')*'|\"(?:[^\"]|\"\")*\"|--[^\n]*|/\*.*?\*/|\?", re.DOTALL)


def to_psycopg(sql: str) -> str:
    """``sql`` with ``?`` placeholders as psycopg's ``%s``, and every literal ``%`` as ``%%``.

    A ``?`` inside a quoted string, a quoted identifier or a comment stays as it is.
    """
    return _TOKEN.sub(lambda m: "%s" if m.group() == "?" else m.group(), sql.replace("%", "%%"))


class PostgresDatabase:
    """A PostgreSQL connection (psycopg 3, autocommit) shared behind a lock."""

    dialect: Dialect = "postgres"

    def __init__(self, url: str, *, check_schema: bool = True) -> None:
        import psycopg

        self.url = url
        self._conn = psycopg.connect(url, autocommit=True)
        self._lock = threading.RLock()
        self._cache: dict[str, str] = {}
        if check_schema:
            from bastion.store.postgres.migrations import require_current

            try:
                require_current(self)
            except BaseException:
                self._conn.close()
                raise

    def _sql(self, sql: str) -> str:
        out = self._cache.get(sql)
        if out is None:
            out = self._cache[sql] = to_psycopg(sql)
        return out

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        with self._lock:
            cur = self._conn.execute(self._sql(sql), tuple(params))  # type: ignore[arg-type]
            return list(cur.fetchall())

    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        with self._lock:
            cur = self._conn.execute(self._sql(sql), tuple(params))  # type: ignore[arg-type]
            return cur.rowcount

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        if not rows:
            return
        with self._lock, self._conn.cursor() as cur:
            cur.executemany(self._sql(sql), rows)  # type: ignore[arg-type]

    @contextmanager
    def transaction(self, lock: str | None = None) -> Iterator[None]:
        with self._lock, self._conn.transaction():
            if lock is not None:
                self._conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (lock,))
            yield

    def close(self) -> None:
        with self._lock:
            self._conn.close()


def is_postgres_url(url: str) -> bool:
    return url.startswith(("postgresql://", "postgres://", "postgresql+psycopg://"))


def open_database(url_or_path: str | Path) -> Database:
    """PostgreSQL for a ``postgresql://`` URL, else the SQLite file at that path."""
    if isinstance(url_or_path, str) and is_postgres_url(url_or_path):
        return PostgresDatabase(url_or_path.replace("postgresql+psycopg://", "postgresql://"))
    path = Path(url_or_path)
    return SqliteDatabase(path)


def integrity_errors() -> tuple[type[BaseException], ...]:
    """The exception types both drivers raise for a unique-constraint violation."""
    errors: list[type[BaseException]] = [sqlite3.IntegrityError]
    try:
        import psycopg

        errors.append(psycopg.errors.IntegrityError)
    except ImportError:  # pragma: no cover - psycopg is an optional extra
        pass
    return tuple(errors)
