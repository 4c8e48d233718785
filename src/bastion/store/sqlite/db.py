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

SCHEMA_VERSION = 4
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
    3: """
    CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
    INSERT OR IGNORE INTO meta VALUES ('governance_version', 1);
    CREATE TABLE IF NOT EXISTS tenants (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        models TEXT NOT NULL DEFAULT '["*"]',
        rpm INTEGER,
        tpm INTEGER,
        created_at REAL NOT NULL
    );
    INSERT OR IGNORE INTO tenants (id, name, created_at) VALUES ('tnt_default', 'default', 0);
    CREATE TABLE IF NOT EXISTS teams (
        id TEXT PRIMARY KEY,
        tenant_id TEXT NOT NULL REFERENCES tenants(id),
        name TEXT NOT NULL,
        rpm INTEGER,
        tpm INTEGER,
        created_at REAL NOT NULL,
        UNIQUE (tenant_id, name)
    );
    ALTER TABLE keys ADD COLUMN role TEXT;
    ALTER TABLE keys ADD COLUMN tenant_id TEXT;
    ALTER TABLE keys ADD COLUMN team_id TEXT;
    ALTER TABLE keys ADD COLUMN owner TEXT;
    ALTER TABLE keys ADD COLUMN rpm INTEGER;
    ALTER TABLE keys ADD COLUMN tpm INTEGER;
    UPDATE keys SET role = CASE WHEN admin = 1 THEN 'admin' END,
                    tenant_id = CASE WHEN admin = 1 THEN NULL ELSE 'tnt_default' END;
    CREATE TABLE IF NOT EXISTS budgets (
        id TEXT PRIMARY KEY,
        scope TEXT NOT NULL,
        scope_id TEXT NOT NULL,
        tenant_id TEXT NOT NULL,
        period TEXT NOT NULL,
        usd REAL,
        tokens INTEGER,
        mode TEXT NOT NULL,
        created_at REAL NOT NULL,
        UNIQUE (scope, scope_id, period)
    );
    CREATE TABLE IF NOT EXISTS usage (
        id TEXT PRIMARY KEY,
        ts REAL NOT NULL,
        request_id TEXT NOT NULL,
        tenant_id TEXT,
        team_id TEXT,
        key_id TEXT,
        model TEXT NOT NULL,
        deployment TEXT,
        provider TEXT,
        endpoint TEXT NOT NULL,
        status INTEGER NOT NULL,
        error_code TEXT,
        prompt_tokens INTEGER NOT NULL,
        completion_tokens INTEGER NOT NULL,
        cached_tokens INTEGER NOT NULL,
        cost_usd REAL NOT NULL,
        cache TEXT,
        stream INTEGER NOT NULL,
        estimated INTEGER NOT NULL,
        latency_ms REAL NOT NULL
    );
    CREATE INDEX IF NOT EXISTS usage_ts ON usage(ts);
    CREATE INDEX IF NOT EXISTS usage_tenant_ts ON usage(tenant_id, ts);
    CREATE TABLE IF NOT EXISTS usage_tags (
        usage_id TEXT NOT NULL,
        tag TEXT NOT NULL,
        PRIMARY KEY (usage_id, tag)
    );
    CREATE TABLE IF NOT EXISTS payloads (
        request_id TEXT NOT NULL,
        ts REAL NOT NULL,
        tenant_id TEXT,
        model TEXT NOT NULL,
        mode TEXT NOT NULL,
        prompt TEXT NOT NULL,
        completion TEXT NOT NULL
    );
    CREATE INDEX IF NOT EXISTS payloads_ts ON payloads(ts);
    CREATE INDEX IF NOT EXISTS payloads_rid ON payloads(request_id);
    """,
    4: """
    CREATE TABLE IF NOT EXISTS prompts (
        tenant_id TEXT NOT NULL,
        name TEXT NOT NULL,
        latest INTEGER NOT NULL,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        PRIMARY KEY (tenant_id, name)
    );
    CREATE TABLE IF NOT EXISTS prompt_versions (
        tenant_id TEXT NOT NULL,
        name TEXT NOT NULL,
        version INTEGER NOT NULL,
        messages TEXT NOT NULL,
        variables TEXT NOT NULL,
        model TEXT NOT NULL,
        params TEXT NOT NULL,
        eval_suites TEXT NOT NULL,
        redteam_suites TEXT NOT NULL,
        description TEXT NOT NULL,
        content_hash TEXT NOT NULL,
        created_at REAL NOT NULL,
        created_by TEXT,
        PRIMARY KEY (tenant_id, name, version)
    );
    CREATE TABLE IF NOT EXISTS prompt_labels (
        tenant_id TEXT NOT NULL,
        name TEXT NOT NULL,
        label TEXT NOT NULL,
        version INTEGER NOT NULL,
        updated_at REAL NOT NULL,
        updated_by TEXT,
        PRIMARY KEY (tenant_id, name, label)
    );
    CREATE TABLE IF NOT EXISTS prompt_label_events (
        tenant_id TEXT NOT NULL,
        name TEXT NOT NULL,
        label TEXT NOT NULL,
        seq INTEGER NOT NULL,
        from_version INTEGER,
        to_version INTEGER NOT NULL,
        action TEXT NOT NULL,
        actor TEXT,
        reason TEXT,
        ts REAL NOT NULL,
        PRIMARY KEY (tenant_id, name, label, seq)
    );
    """,
}


def connect(path: Path, timeout: float = 10) -> sqlite3.Connection:
    """Open ``path`` (creating its directory) in autocommit mode with WAL.

    ``timeout`` is how long a write waits for another connection's lock.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=timeout)
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
