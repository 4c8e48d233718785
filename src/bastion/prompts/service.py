"""The prompt registry's operations, over a :class:`~bastion.prompts.ports.PromptStore`.

Pure domain: no HTTP, no CLI. Every call names the tenant; a reference
(``ref``) is a version number, a label, or ``latest``.

Rolling a label back undoes its last move that was not itself a rollback:
the moves form a stack (a ``set``, ``promote`` or ``override`` pushes the
version the label left; a ``rollback`` pops), so rolling back twice after
promoting v1, v2 and v3 lands on v1, not back on v3.
"""

from __future__ import annotations

import builtins
import time
from collections.abc import Callable, Mapping
from typing import Any

from pydantic import ValidationError

from bastion.core.errors import InvalidRequest, NotFound
from bastion.core.types import ChatRequest
from bastion.prompts.model import (
    LABEL_RE,
    LATEST,
    NAME_RE,
    LabelAction,
    LabelEvent,
    PromptSummary,
    PromptTemplate,
    PromptVersion,
    Rendered,
    content_hash,
)
from bastion.prompts.ports import PromptStore
from bastion.prompts.render import (
    check_schema,
    check_template,
    default_schema,
    render_messages,
    template_variables,
)


def check_name(name: str) -> str:
    if not NAME_RE.match(name):
        raise InvalidRequest(
            f"invalid prompt name {name!r}: lower-case letters, digits, '_', '.', '-' "
            "(up to 64, starting with a letter or digit)",
            param="name",
        )
    return name


def check_label(label: str) -> str:
    if label == LATEST or not LABEL_RE.match(label):
        raise InvalidRequest(
            f"invalid label {label!r}: a lower-case letter, then letters, digits, '_' or '-' "
            "(up to 32); 'latest' is reserved",
            param="label",
        )
    return label


def _check_params(model: str, params: Mapping[str, Any]) -> None:
    """The params must be valid chat request fields (temperature 0..2, ...)."""
    try:
        ChatRequest.model_validate(
            {"model": model, "messages": [{"role": "user", "content": "-"}], **params}
        )
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err["loc"])
        raise InvalidRequest(f"params.{loc}: {err['msg']}", param="params") from None


def rollback_target(events: list[LabelEvent]) -> int | None:
    """The version a rollback of this label's history moves it to (None: nothing to undo)."""
    stack: list[int | None] = []
    for e in events:
        if e.action == "rollback":
            if stack:
                stack.pop()
        elif e.from_version != e.to_version:  # a move to where it was changes nothing
            stack.append(e.from_version)
    return stack[-1] if stack else None


class PromptService:
    """Create, resolve, render and label prompt versions."""

    def __init__(self, store: PromptStore, *, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.clock = clock

    # ------------------------------------------------------------------ versions
    def create_version(
        self, tenant_id: str, name: str, template: PromptTemplate, *, actor: str | None
    ) -> tuple[PromptVersion, bool]:
        """A new version (``True``), or the latest when it has the same content (``False``)."""
        check_name(name)
        messages = template.template_messages()
        check_template(messages)
        used = template_variables(messages)
        schema = template.variables if template.variables is not None else default_schema(used)
        check_schema(schema, used)
        _check_params(template.model, template.params)
        draft = PromptVersion(
            tenant_id=tenant_id,
            name=name,
            version=0,
            messages=tuple(messages),
            variables=schema,
            model=template.model,
            params=dict(template.params),
            eval_suites=tuple(template.eval_suites),
            redteam_suites=tuple(template.redteam_suites),
            description=template.description,
            content_hash=content_hash(
                messages,
                schema,
                template.model,
                template.params,
                template.eval_suites,
                template.redteam_suites,
                template.description,
            ),
            created_at=self.clock(),
            created_by=actor,
        )
        return self.store.add_version(draft)

    def get(self, tenant_id: str, name: str, ref: str | int = LATEST) -> PromptVersion:
        """The version ``ref`` names: a number, a label, or ``latest``."""
        check_name(name)
        if isinstance(ref, int) or ref.isdigit():
            number = int(ref)
            found = self.store.get_version(tenant_id, name, number)
            if found is None:
                self._exists(tenant_id, name)
                raise NotFound(f"prompt {name!r} has no version {number}")
            return found
        if ref == LATEST:
            latest = self.store.latest_version(tenant_id, name)
            if latest is None:
                raise NotFound(f"no prompt {name!r}")
            return latest
        check_label(ref)
        number_ = self.store.label_version(tenant_id, name, ref)
        if number_ is None:
            self._exists(tenant_id, name)
            raise NotFound(f"prompt {name!r} has no label {ref!r}")
        found = self.store.get_version(tenant_id, name, number_)
        assert found is not None  # labels only point at stored versions
        return found

    def _exists(self, tenant_id: str, name: str) -> None:
        if self.store.latest_version(tenant_id, name) is None:
            raise NotFound(f"no prompt {name!r}")

    def list(self, tenant_id: str) -> builtins.list[PromptSummary]:
        return self.store.list_prompts(tenant_id)

    def versions(self, tenant_id: str, name: str) -> builtins.list[PromptVersion]:
        check_name(name)
        found = self.store.list_versions(tenant_id, name)
        if not found:
            raise NotFound(f"no prompt {name!r}")
        return found

    def labels(self, tenant_id: str, name: str) -> dict[str, int]:
        return self.store.labels(tenant_id, check_name(name))

    # ------------------------------------------------------------------ rendering
    def render(
        self, tenant_id: str, name: str, ref: str | int, variables: Mapping[str, Any]
    ) -> Rendered:
        """The version's messages with ``variables`` filled in, its model and params."""
        v = self.get(tenant_id, name, ref)
        messages = render_messages(v.messages, v.variables, variables)
        return Rendered(messages=messages, model=v.model, params=dict(v.params), version=v)

    # ------------------------------------------------------------------ labels
    def set_label(
        self,
        tenant_id: str,
        name: str,
        label: str,
        version: int,
        *,
        actor: str | None,
        reason: str | None = None,
        action: LabelAction = "set",
    ) -> LabelEvent:
        """Point ``label`` at ``version`` (no gates: see :mod:`bastion.prompts.promotion`)."""
        check_name(name)
        check_label(label)
        self.get(tenant_id, name, version)
        return self.store.move_label(
            tenant_id, name, label, version, action=action, actor=actor, reason=reason
        )

    def history(
        self, tenant_id: str, name: str, label: str | None = None
    ) -> builtins.list[LabelEvent]:
        """A prompt's label moves, oldest first."""
        check_name(name)
        if label is not None:
            check_label(label)
        return self.store.label_events(tenant_id, name, label)

    def rollback(
        self, tenant_id: str, name: str, label: str, *, actor: str | None, reason: str | None = None
    ) -> LabelEvent:
        """Move ``label`` back to where it pointed before its last (non-rollback) move."""
        events = self.history(tenant_id, name, label)
        if not events:
            self._exists(tenant_id, name)
            raise NotFound(f"prompt {name!r} has no label {label!r}")
        target = rollback_target(events)
        if target is None:
            raise InvalidRequest(
                f"label {label!r} of prompt {name!r} has no earlier version to roll back to"
            )
        return self.store.move_label(
            tenant_id,
            name,
            label,
            target,
            action="rollback",
            actor=actor,
            reason=reason,
            expect_from=events[-1].to_version,
        )
