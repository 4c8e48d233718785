"""The audit log in the embedded SQLite file (see :mod:`bastion.store.sql.audit`)."""

from __future__ import annotations

from pathlib import Path

from bastion.store.sql.audit import SqlAuditStore
from bastion.store.sql.database import SqliteDatabase


class SqliteAuditStore(SqlAuditStore):
    """The audit log in ``<data_dir>/bastion.db`` (table ``audit_events``)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        super().__init__(SqliteDatabase(path))
