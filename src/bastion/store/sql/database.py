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

import functools
import re
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

if TYPE_CHECKING:
    import psycopg

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
        """A write transaction; a nested one is a savepoint (rolled back alone on error).

        ``lock`` names a lock held until it ends (PostgreSQL; SQLite's write lock
        serialises every transaction anyway).
        """
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
        self._depth = 0  # open transaction() blocks

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
        """``BEGIN IMMEDIATE`` (the database's write lock); a nested block is a savepoint."""
        with self._lock:
            depth = self._depth
            savepoint = f"bastion_{depth}"
            self._conn.execute(f"SAVEPOINT {savepoint}" if depth else "BEGIN IMMEDIATE")
            self._depth += 1
            try:
                yield
                self._conn.execute(f"RELEASE {savepoint}" if depth else "COMMIT")
            except BaseException:
                if depth:
                    self._conn.execute(f"ROLLBACK TO {savepoint}")
                    self._conn.execute(f"RELEASE {savepoint}")
                elif self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                raise
            finally:
                self._depth = depth

    def close(self) -> None:
        with self._lock:
            self._conn.close()


# A ``?`` placeholder, or a quoted literal, identifier or comment to leave as it is.
_TOKEN = re.compile(r"'(?:[^']|'')*'|\"(?:[^\"]|\"\")*\"|--[^\n]*|/\*.*?\*/|\?", re.DOTALL)


@functools.lru_cache(maxsize=1024)
def to_psycopg(sql: str) -> str:
    """``sql`` with ``?`` placeholders as psycopg's ``%s``, and every literal ``%`` as ``%%``.

    A ``?`` inside a quoted string, a quoted identifier or a comment stays as it is.
    """
    return _TOKEN.sub(lambda m: "%s" if m.group() == "?" else m.group(), sql.replace("%", "%%"))


class PostgresDatabase:
    """A PostgreSQL connection (psycopg 3, autocommit) shared behind a lock.

    A connection lost (server restart, failover, idle timeout) fails the call
    that finds out; the next call outside a transaction opens a new one.
    """

    dialect: Dialect = "postgres"

    def __init__(self, url: str, *, check_schema: bool = True) -> None:
        self.url = url
        self._conn = self._connect()
        self._lock = threading.RLock()
        self._depth = 0  # open transaction() blocks
        if check_schema:
            from bastion.store.postgres.migrations import require_current

            try:
                require_current(self)
            except BaseException:
                self._conn.close()
                raise

    def _connect(self) -> psycopg.Connection[Row]:
        import psycopg

        return psycopg.connect(self.url, autocommit=True)

    def _live(self) -> psycopg.Connection[Row]:
        """The connection, replaced first if it broke (never inside a transaction)."""
        if self._conn.broken and self._depth == 0:
            self._conn = self._connect()
        return self._conn

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        with self._lock:
            return self._live().execute(to_psycopg(sql), tuple(params)).fetchall()

    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        with self._lock:
            return self._live().execute(to_psycopg(sql), tuple(params)).rowcount

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        if not rows:
            return
        with self._lock, self._live().cursor() as cur:
            cur.executemany(to_psycopg(sql), rows)

    @contextmanager
    def transaction(self, lock: str | None = None) -> Iterator[None]:
        with self._lock, self._live().transaction():
            self._depth += 1
            try:
                if lock is not None:
                    self._conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (lock,))
                yield
            finally:
                self._depth -= 1

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
