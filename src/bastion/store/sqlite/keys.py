"""SQLite implementation of :class:`bastion.gateway.auth.KeyStore`.

One file under the data directory (``bastion.db``), WAL mode so the CLI can
write while a server reads. The schema and its migrations live in
:mod:`bastion.store.sqlite.db` (re-exported here: ``upgrade`` is what
``bastion db upgrade`` runs). ``version()`` uses ``PRAGMA data_version``, which
changes when *another* connection commits, plus a local counter.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterable
from pathlib import Path

from bastion.core.errors import InvalidRequest, NotFound
from bastion.core.secrets import hash_key, new_key
from bastion.gateway.auth import KeyRecord
from bastion.store.sqlite.db import (
    MIGRATIONS,
    SCHEMA_VERSION,
    connect,
    current_version,
    open_current,
    upgrade,
)

__all__ = [
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "SqliteKeyStore",
    "connect",
    "current_version",
    "upgrade",
]


def _row(r: tuple[object, ...]) -> KeyRecord:
    id_, name, hsh, prefix, models, admin, created, expires, revoked = r
    return KeyRecord(
        id=str(id_),
        name=str(name),
        hash=str(hsh),
        prefix=str(prefix),
        models=tuple(json.loads(str(models))),
        admin=bool(admin),
        created_at=float(created),  # type: ignore[arg-type]
        expires_at=None if expires is None else float(expires),  # type: ignore[arg-type]
        revoked_at=None if revoked is None else float(revoked),  # type: ignore[arg-type]
    )


_COLS = "id, name, hash, prefix, models, admin, created_at, expires_at, revoked_at"


class SqliteKeyStore:
    """Keys in ``<data_dir>/bastion.db``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._conn = open_current(path)
        self._lock = threading.Lock()
        self._local_changes = 0

    def create(
        self,
        name: str,
        models: Iterable[str] = ("*",),
        *,
        admin: bool = False,
        expires_at: float | None = None,
    ) -> tuple[KeyRecord, str]:
        secret = new_key()
        rec = KeyRecord(
            id="key_" + uuid.uuid4().hex[:16],
            name=name,
            hash=hash_key(secret),
            prefix=secret[:8],
            models=tuple(models) or ("*",),
            admin=admin,
            created_at=time.time(),
            expires_at=expires_at,
        )
        with self._lock:
            try:
                self._conn.execute(
                    f"INSERT INTO keys ({_COLS}) VALUES (?,?,?,?,?,?,?,?,?)",
                    (
                        rec.id,
                        rec.name,
                        rec.hash,
                        rec.prefix,
                        json.dumps(list(rec.models)),
                        int(rec.admin),
                        rec.created_at,
                        rec.expires_at,
                        None,
                    ),
                )
            except sqlite3.IntegrityError:
                raise InvalidRequest(f"an active key named {name!r} exists", param="name") from None
            self._local_changes += 1
        return rec, secret

    def list(self, include_revoked: bool = False) -> list[KeyRecord]:
        where = "" if include_revoked else " WHERE revoked_at IS NULL"
        with self._lock:
            rows = self._conn.execute(f"SELECT {_COLS} FROM keys{where} ORDER BY created_at")
            return [_row(r) for r in rows.fetchall()]

    def revoke(self, id_or_name: str) -> KeyRecord:
        with self._lock:
            row = self._conn.execute(
                f"SELECT {_COLS} FROM keys WHERE (id = ? OR name = ?) AND revoked_at IS NULL",
                (id_or_name, id_or_name),
            ).fetchone()
            if row is None:
                raise NotFound(f"no active key {id_or_name!r}")
            now = time.time()
            self._conn.execute("UPDATE keys SET revoked_at = ? WHERE id = ?", (now, row[0]))
            self._local_changes += 1
        return _row((*row[:8], now))

    def version(self) -> int:
        with self._lock:
            v = int(self._conn.execute("PRAGMA data_version").fetchone()[0])
            return v * 1_000_000 + self._local_changes

    def close(self) -> None:
        with self._lock:
            self._conn.close()
