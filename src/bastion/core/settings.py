"""Process settings from the environment (the policy file holds everything else).

* ``BASTION_DATA_DIR``: where embedded mode keeps its SQLite files
  (default ``$XDG_DATA_HOME/bastion``, else ``~/.local/share/bastion``);
* ``BASTION_ADMIN_KEY``: an admin key accepted by the admin and data planes
  (default: one is generated on first start and printed once);
* ``BASTION_POLICY``: the policy file when ``--policy`` is not given
  (default: none, the embedded defaults);
* ``BASTION_DATABASE_URL``: ``postgresql://...`` to keep keys, usage and the
  audit log in PostgreSQL (scale-out; default: the SQLite file);
* ``BASTION_REDIS_URL``: ``redis://...`` to share rate limits, budgets and
  the response cache between replicas (default: in-process);
* ``BASTION_REDIS_PREFIX``: the prefix of Bastion's Redis keys (default
  ``bastion:``), so several deployments can share one Redis.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


def default_data_dir() -> Path:
    if env := os.environ.get("BASTION_DATA_DIR"):
        return Path(env)
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "bastion"


@dataclass(frozen=True, slots=True)
class Settings:
    data_dir: Path
    policy_path: Path | None = None
    admin_key: str | None = None
    database_url: str | None = None
    redis_url: str | None = None
    redis_prefix: str = "bastion:"

    @classmethod
    def from_env(
        cls, policy: str | Path | None = None, data_dir: str | Path | None = None
    ) -> Settings:
        pol = policy or os.environ.get("BASTION_POLICY") or None
        return cls(
            data_dir=Path(data_dir) if data_dir else default_data_dir(),
            policy_path=Path(pol) if pol else None,
            admin_key=os.environ.get("BASTION_ADMIN_KEY") or None,
            database_url=os.environ.get("BASTION_DATABASE_URL") or None,
            redis_url=os.environ.get("BASTION_REDIS_URL") or None,
            redis_prefix=os.environ.get("BASTION_REDIS_PREFIX") or "bastion:",
        )

    @property
    def db_path(self) -> Path:
        return self.data_dir / "bastion.db"
