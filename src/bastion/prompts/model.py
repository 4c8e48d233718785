"""The prompt registry's vocabulary: templates, immutable versions, labels and their moves.

A **prompt** is a name within a tenant. Each change makes a new **version**
(1, 2, 3, ...) that never changes afterwards: its chat messages (templates
with ``{{ variable }}`` slots), the JSON Schema its variables must satisfy,
the model alias it is written for, default request parameters, and the eval
and red-team suites that gate its promotion. A **label** (``production``,
``staging``, any name) points at one version; every move of a label is kept
as a :class:`LabelEvent`, so a label can be rolled back.

:class:`PromptTemplate` is the edge shape (an API body, a CLI YAML file),
validated with pydantic; :class:`PromptVersion` is the stored, normalised
form.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, model_validator

NAME_PATTERN = r"^[a-z0-9][a-z0-9_.-]{0,63}$"
LABEL_PATTERN = r"^[a-z][a-z0-9_-]{0,31}$"
NAME_RE = re.compile(NAME_PATTERN)
LABEL_RE = re.compile(LABEL_PATTERN)
LATEST = "latest"
"""The reference to a prompt's newest version (never a label name)."""
DEFAULT_LABEL = "production"
"""The label a bare ``NAME`` reference (no ``@``) resolves to in chat requests."""
ROLES = ("system", "developer", "user", "assistant")
RESERVED_PARAMS = frozenset({"model", "messages", "stream", "stream_options", "bastion"})

LabelAction = Literal["set", "promote", "override", "rollback"]
JSON = dict[str, Any]


class TemplateMessage(BaseModel):
    """One chat message of a template; ``content`` may hold ``{{ name }}`` slots."""

    model_config = ConfigDict(extra="forbid")

    role: Literal["system", "developer", "user", "assistant"]
    content: str = Field(max_length=200_000)


class PromptTemplate(BaseModel):
    """What a new version is made from (a CLI YAML file; an API body adds ``name``).

    Exactly one of ``messages`` (a list of ``{role, content}``) and ``text``
    (one user message). ``variables`` is a JSON Schema for the variables
    object; without it every ``{{ name }}`` in the template is a required
    string and no other variable is accepted. ``params`` (``temperature``,
    ``max_tokens``, ...) fill a chat request's fields that the request does
    not set. ``eval_suites`` and ``redteam_suites`` are suite file paths that
    ``bastion prompts promote`` runs as gates.
    """

    model_config = ConfigDict(extra="forbid")

    messages: list[TemplateMessage] | None = Field(default=None, min_length=1, max_length=64)
    text: str | None = Field(default=None, min_length=1, max_length=200_000)
    variables: JSON | None = None
    model: str = Field(min_length=1, max_length=256)
    params: JSON = {}
    eval_suites: list[str] = Field(default=[], max_length=32)
    redteam_suites: list[str] = Field(default=[], max_length=32)
    description: str = Field(default="", max_length=2000)

    @model_validator(mode="after")
    def _one_template(self) -> PromptTemplate:
        if (self.messages is None) == (self.text is None):
            raise ValueError("give exactly one of messages or text")
        bad = sorted(RESERVED_PARAMS & set(self.params))
        if bad:
            raise ValueError(f"params may not set {', '.join(bad)}")
        for path in (*self.eval_suites, *self.redteam_suites):
            if not path.strip():
                raise ValueError("a suite path must not be empty")
        return self

    def template_messages(self) -> list[JSON]:
        """The template as chat messages (``text`` becomes one user message)."""
        if self.messages is not None:
            return [{"role": m.role, "content": m.content} for m in self.messages]
        return [{"role": "user", "content": self.text}]


class NewPrompt(PromptTemplate):
    """``POST /v1/prompts``: a template plus the prompt's name."""

    name: str = Field(pattern=NAME_PATTERN)


@dataclass(frozen=True, slots=True)
class PromptVersion:
    """One immutable version of a prompt, as stored."""

    tenant_id: str
    name: str
    version: int
    messages: tuple[JSON, ...]
    variables: JSON
    model: str
    params: JSON
    eval_suites: tuple[str, ...] = ()
    redteam_suites: tuple[str, ...] = ()
    description: str = ""
    content_hash: str = ""
    created_at: float = 0.0
    created_by: str | None = None

    @property
    def ref(self) -> str:
        """``NAME@VERSION``: the exact reference to this version."""
        return f"{self.name}@{self.version}"

    @property
    def gated(self) -> bool:
        return bool(self.eval_suites or self.redteam_suites)

    def to_json(self) -> JSON:
        return {
            "object": "prompt.version",
            "name": self.name,
            "version": self.version,
            "messages": [dict(m) for m in self.messages],
            "variables": self.variables,
            "model": self.model,
            "params": self.params,
            "eval_suites": list(self.eval_suites),
            "redteam_suites": list(self.redteam_suites),
            "description": self.description,
            "content_hash": self.content_hash,
            "created_at": self.created_at,
            "created_by": self.created_by,
        }


def content_hash(
    messages: Any,
    variables: JSON,
    model: str,
    params: JSON,
    eval_suites: Any,
    redteam_suites: Any,
    description: str = "",
) -> str:
    """The hex SHA-256 of a version's content (canonical JSON, sorted keys)."""
    body = {
        "messages": list(messages),
        "variables": variables,
        "model": model,
        "params": params,
        "eval_suites": list(eval_suites),
        "redteam_suites": list(redteam_suites),
        "description": description,
    }
    return hashlib.sha256(orjson.dumps(body, option=orjson.OPT_SORT_KEYS)).hexdigest()


@dataclass(frozen=True, slots=True)
class LabelEvent:
    """One move of a label: from which version (None: the label was new) to which."""

    tenant_id: str
    name: str
    label: str
    seq: int
    from_version: int | None
    to_version: int
    action: LabelAction
    actor: str | None
    reason: str | None
    ts: float

    def to_json(self) -> JSON:
        return {
            "label": self.label,
            "seq": self.seq,
            "from_version": self.from_version,
            "to_version": self.to_version,
            "action": self.action,
            "actor": self.actor,
            "reason": self.reason,
            "ts": self.ts,
        }


@dataclass(frozen=True, slots=True)
class PromptSummary:
    """A prompt in a listing: its newest version and where its labels point."""

    tenant_id: str
    name: str
    latest: int
    created_at: float
    updated_at: float
    labels: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> JSON:
        return {
            "object": "prompt",
            "name": self.name,
            "latest_version": self.latest,
            "labels": dict(self.labels),
            "created_at": self.created_at,
            "updated_at": self.updated_at,
        }


@dataclass(frozen=True, slots=True)
class Rendered:
    """A rendered version: the chat messages, the model alias and default params."""

    messages: list[JSON]
    model: str
    params: JSON
    version: PromptVersion

    def to_json(self) -> JSON:
        return {
            "object": "prompt.rendered",
            "name": self.version.name,
            "version": self.version.version,
            "messages": self.messages,
            "model": self.model,
            "params": self.params,
        }


def split_ref(ref: str, default: str = DEFAULT_LABEL) -> tuple[str, str]:
    """``"NAME@REF"`` as ``(NAME, REF)``; a bare ``NAME`` gets ``default`` as its ref."""
    name, sep, rest = ref.strip().partition("@")
    return name, (rest if sep else default)
