"""The storage port of the prompt registry.

Implemented by :class:`bastion.store.sql.prompts.SqlPromptStore` (SQLite and
PostgreSQL); ``tests/conformance/test_prompt_store.py`` runs against both.
Everything is scoped by tenant: another tenant's prompts do not exist. The
record types the port speaks are re-exported here, so a store imports this
module only.
"""

from __future__ import annotations

from typing import Protocol

from bastion.prompts.model import LabelAction, LabelEvent, PromptSummary, PromptVersion

__all__ = ["LabelAction", "LabelEvent", "PromptStore", "PromptSummary", "PromptVersion"]


class PromptStore(Protocol):
    def add_version(self, draft: PromptVersion) -> tuple[PromptVersion, bool]:
        """Store ``draft`` as the prompt's next version, atomically.

        ``draft.version`` is ignored: the store numbers it (latest + 1). When
        the latest version has the same ``content_hash``, nothing is written
        and that version comes back with ``False`` (creating is idempotent).
        """
        ...

    def get_version(self, tenant_id: str, name: str, version: int) -> PromptVersion | None: ...

    def latest_version(self, tenant_id: str, name: str) -> PromptVersion | None: ...

    def list_versions(self, tenant_id: str, name: str) -> list[PromptVersion]:
        """Oldest first."""
        ...

    def list_prompts(self, tenant_id: str) -> list[PromptSummary]:
        """Every prompt of the tenant with its labels, by name."""
        ...

    def labels(self, tenant_id: str, name: str) -> dict[str, int]: ...

    def label_version(self, tenant_id: str, name: str, label: str) -> int | None: ...

    def move_label(
        self,
        tenant_id: str,
        name: str,
        label: str,
        version: int,
        *,
        action: LabelAction,
        actor: str | None,
        reason: str | None,
        expect_from: int | None = None,
    ) -> LabelEvent:
        """Point ``label`` at ``version`` and record the move, in one transaction.

        Raises ``NotFound`` when the version does not exist and, when
        ``expect_from`` is given, ``Conflict`` unless the label points there
        now (a compare-and-set, for rollbacks racing other moves).
        """
        ...

    def label_events(self, tenant_id: str, name: str, label: str | None = None) -> list[LabelEvent]:
        """The moves of one label (or of all the prompt's labels), oldest first."""
        ...
