"""The PostgreSQL schema (scale-out mode) and its migrations.

The version lives in ``bastion_schema(version)``. ``bastion db upgrade`` with
``BASTION_DATABASE_URL`` set applies the pending entries of
:data:`MIGRATIONS`, each in one transaction under an advisory lock, so two
replicas upgrading at once cannot both apply one. A server refuses a database
at an older schema: migrating is always an explicit step.

The tables match the SQLite schema (:mod:`bastion.store.sqlite.db`) column
for column, so the SQL stores run unchanged on both.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from bastion.core.errors import InvalidRequest

if TYPE_CHECKING:
    from bastion.store.sql.database import PostgresDatabase

SCHEMA_VERSION = 2
MIGRATIONS: dict[int, list[str]] = {
    1: [
        """CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value BIGINT NOT NULL)""",
        """INSERT INTO meta VALUES ('governance_version', 1) ON CONFLICT DO NOTHING""",
        """CREATE TABLE IF NOT EXISTS tenants (
            id TEXT PRIMARY KEY,
            name TEXT NOT NULL UNIQUE,
            models TEXT NOT NULL DEFAULT '["*"]',
            rpm BIGINT,
            tpm BIGINT,
            created_at DOUBLE PRECISION NOT NULL
        )""",
        """INSERT INTO tenants (id, name, created_at) VALUES ('tnt_default', 'default', 0)
           ON CONFLICT DO NOTHING""",
        """CREATE TABLE IF NOT EXISTS teams (
            id TEXT PRIMARY KEY,
            tenant_id TEXT NOT NULL REFERENCES tenants(id),
            name TEXT NOT NULL,
            rpm BIGINT,
            tpm BIGINT,
            created_at DOUBLE PRECISION NOT NULL,
            UNIQUE (tenant_id, name)
        )""",
        """CREATE TABLE IF NOT EXISTS keys (
            id TEXT PRIMARY KEY,
            name TEXT NOT NULL,
            hash TEXT NOT NULL UNIQUE,
            prefix TEXT NOT NULL,
            models TEXT NOT NULL,
            admin INTEGER NOT NULL DEFAULT 0,
            created_at DOUBLE PRECISION NOT NULL,
            expires_at DOUBLE PRECISION,
            revoked_at DOUBLE PRECISION,
            role TEXT,
            tenant_id TEXT,
            team_id TEXT,
            owner TEXT,
            rpm BIGINT,
            tpm BIGINT
        )""",
        """CREATE UNIQUE INDEX IF NOT EXISTS keys_active_name ON keys(name)
           WHERE revoked_at IS NULL""",
        """CREATE TABLE IF NOT EXISTS budgets (
            id TEXT PRIMARY KEY,
            scope TEXT NOT NULL,
            scope_id TEXT NOT NULL,
            tenant_id TEXT NOT NULL,
            period TEXT NOT NULL,
            usd DOUBLE PRECISION,
            tokens BIGINT,
            mode TEXT NOT NULL,
            created_at DOUBLE PRECISION NOT NULL,
            UNIQUE (scope, scope_id, period)
        )""",
        """CREATE TABLE IF NOT EXISTS usage (
            id TEXT PRIMARY KEY,
            ts DOUBLE PRECISION NOT NULL,
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
            prompt_tokens BIGINT NOT NULL,
            completion_tokens BIGINT NOT NULL,
            cached_tokens BIGINT NOT NULL,
            cost_usd DOUBLE PRECISION NOT NULL,
            cache TEXT,
            stream INTEGER NOT NULL,
            estimated INTEGER NOT NULL,
            latency_ms DOUBLE PRECISION NOT NULL
        )""",
        "CREATE INDEX IF NOT EXISTS usage_ts ON usage(ts)",
        "CREATE INDEX IF NOT EXISTS usage_tenant_ts ON usage(tenant_id, ts)",
        """CREATE TABLE IF NOT EXISTS usage_tags (
            usage_id TEXT NOT NULL,
            tag TEXT NOT NULL,
            PRIMARY KEY (usage_id, tag)
        )""",
        """CREATE TABLE IF NOT EXISTS payloads (
            request_id TEXT NOT NULL,
            ts DOUBLE PRECISION NOT NULL,
            tenant_id TEXT,
            model TEXT NOT NULL,
            mode TEXT NOT NULL,
            prompt TEXT NOT NULL,
            completion TEXT NOT NULL
        )""",
        "CREATE INDEX IF NOT EXISTS payloads_ts ON payloads(ts)",
        "CREATE INDEX IF NOT EXISTS payloads_rid ON payloads(request_id)",
        """CREATE TABLE IF NOT EXISTS audit_events (
            seq BIGINT PRIMARY KEY,
            ts DOUBLE PRECISION NOT NULL,
            kind TEXT NOT NULL,
            actor TEXT,
            tenant TEXT,
            request_id TEXT,
            data TEXT NOT NULL,
            prev_hash TEXT NOT NULL,
            hash TEXT NOT NULL
        )""",
    ],
    2: [  # the prompt registry
        """CREATE TABLE IF NOT EXISTS prompts (
            tenant_id TEXT NOT NULL,
            name TEXT NOT NULL,
            latest INTEGER NOT NULL,
            created_at DOUBLE PRECISION NOT NULL,
            updated_at DOUBLE PRECISION NOT NULL,
            PRIMARY KEY (tenant_id, name)
        )""",
        """CREATE TABLE IF NOT EXISTS prompt_versions (
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
            created_at DOUBLE PRECISION NOT NULL,
            created_by TEXT,
            PRIMARY KEY (tenant_id, name, version)
        )""",
        """CREATE TABLE IF NOT EXISTS prompt_labels (
            tenant_id TEXT NOT NULL,
            name TEXT NOT NULL,
            label TEXT NOT NULL,
            version INTEGER NOT NULL,
            updated_at DOUBLE PRECISION NOT NULL,
            updated_by TEXT,
            PRIMARY KEY (tenant_id, name, label)
        )""",
        """CREATE TABLE IF NOT EXISTS prompt_label_events (
            tenant_id TEXT NOT NULL,
            name TEXT NOT NULL,
            label TEXT NOT NULL,
            seq INTEGER NOT NULL,
            from_version INTEGER,
            to_version INTEGER NOT NULL,
            action TEXT NOT NULL,
            actor TEXT,
            reason TEXT,
            ts DOUBLE PRECISION NOT NULL,
            PRIMARY KEY (tenant_id, name, label, seq)
        )""",
    ],
}


def current_version(db: PostgresDatabase) -> int:
    rows = db.query("SELECT to_regclass('bastion_schema') IS NOT NULL")
    if not rows[0][0]:
        return 0
    rows = db.query("SELECT max(version) FROM bastion_schema")
    return int(rows[0][0] or 0)


def require_current(db: PostgresDatabase) -> None:
    have = current_version(db)
    if have < SCHEMA_VERSION:
        raise InvalidRequest(
            f"PostgreSQL database is at schema {have}, expected {SCHEMA_VERSION}: "
            "run 'bastion db upgrade'"
        )


def upgrade(url: str) -> tuple[int, int]:
    """Apply pending migrations to the database at ``url``; returns ``(from, to)``."""
    from bastion.store.sql.database import PostgresDatabase

    db = PostgresDatabase(url, check_schema=False)
    try:
        with db.transaction(lock="bastion-migrations"):
            db.execute("CREATE TABLE IF NOT EXISTS bastion_schema (version INTEGER PRIMARY KEY)")
            before = current_version(db)
            for v in range(before + 1, SCHEMA_VERSION + 1):
                for stmt in MIGRATIONS[v]:
                    db.execute(stmt)
                db.execute("INSERT INTO bastion_schema VALUES (?)", (v,))
        return before, current_version(db)
    finally:
        db.close()
