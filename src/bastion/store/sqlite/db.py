"""The embedded SQLite database: connection settings, schema and migrations.

One file under the data directory (``bastion.db``) holds every SQLite-backed
store, in WAL mode so the CLI can write while a server reads. The schema
version is ``PRAGMA user_version``; :func:`upgrade` applies the pending
entries of :data:`MIGRATIONS` (``bastion db upgrade``; ``bastion serve`` runs
it for a brand-new embedded data directory only), each in one transaction.
Stores refuse a file at an older schema (:func:`require_current`), so a
migration is always an explicit step.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from bastion.core.errors import InvalidRequest

SCHEMA_VERSION = 2
MIGRATIONS: dict[int, str] = {
    1: """
    CREATE TABLE IF NOT EXISTS keys (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        hash TEXT NOT NULL UNIQUE,
        prefix TEXT NOT NULL,
        models TEXT NOT NULL,
        admin INTEGER NOT NULL DEFAULT 0,
        created_at REAL NOT NULL,
        expires_at REAL,
        revoked_at REAL
    );
    CREATE UNIQUE INDEX IF NOT EXISTS keys_active_name ON keys(name) WHERE revoked_at IS NULL;
    """,
    2: """
    CREATE TABLE IF NOT EXISTS audit_events (
        seq INTEGER PRIMARY KEY,
        ts REAL NOT NULL,
        kind TEXT NOT NULL,
        actor TEXT,
        tenant TEXT,
        request_id TEXT,
        data TEXT NOT NULL,
        prev_hash TEXT NOT NULL,
        hash TEXT NOT NULL
    );
    """,
}


def connect(path: Path) -> sqlite3.Connection:
    """Open ``path`` (creating its directory) in autocommit mode with WAL."""
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=10)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    return conn


def current_version(conn: sqlite3.Connection) -> int:
    """The schema version of the open database (0 for a new file)."""
    return int(conn.execute("PRAGMA user_version").fetchone()[0])


def require_current(conn: sqlite3.Connection, path: Path) -> None:
    """Raise :class:`InvalidRequest` unless the database is at :data:`SCHEMA_VERSION`."""
    have = current_version(conn)
    if have < SCHEMA_VERSION:
        raise InvalidRequest(
            f"database {path} is at schema {have}, expected {SCHEMA_VERSION}: "
            "run 'bastion db upgrade'"
        )


def open_current(path: Path) -> sqlite3.Connection:
    """A connection to a database at the current schema (closed again if it is not)."""
    conn = connect(path)
    try:
        require_current(conn, path)
    except InvalidRequest:
        conn.close()
        raise
    return conn


def upgrade(path: Path) -> tuple[int, int]:
    """Apply pending migrations; returns ``(from_version, to_version)``."""
    conn = connect(path)
    try:
        before = current_version(conn)
        for v in range(before + 1, SCHEMA_VERSION + 1):
            conn.executescript(f"BEGIN IMMEDIATE;{MIGRATIONS[v]};PRAGMA user_version={v};COMMIT;")
        return before, current_version(conn)
    finally:
        conn.close()
