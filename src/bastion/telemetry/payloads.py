"""The logging policy for request content, redaction, and the payload port.

For each request the policy picks one mode (per tenant and model, first
matching rule wins, else the default):

* ``none``: nothing about the request in the audit log (usage rows still
  count it for billing);
* ``metadata``: an audit event with who, which model, status, tokens, cost;
* ``redacted``: that, plus the prompt and completion passed through the
  :class:`Redactor`;
* ``full``: that, plus the prompt and completion as they were.

Content never goes into the audit event itself: it is stored as a
:class:`PayloadRecord` (purged after the retention period by
:meth:`PayloadStore.purge`), and the event carries its SHA-256, so purging
content keeps the audit chain verifiable.

:class:`RegexRedactor` is the built-in redactor (emails, phone numbers, card
numbers, API keys and tokens); the guardrails layer can supply a better one
through the same protocol.
"""

from __future__ import annotations

import fnmatch
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

Mode = Literal["none", "metadata", "redacted", "full"]
MODES: tuple[str, ...] = ("none", "metadata", "redacted", "full")


class Redactor(Protocol):
    def redact(self, text: str) -> str:
        """``text`` with sensitive spans replaced by typed placeholders."""
        ...


_PATTERNS: list[tuple[str, re.Pattern[str]]] = [
    (
        "PRIVATE_KEY",
        re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----[\s\S]*?-----END [A-Z ]*PRIVATE KEY-----"),
    ),
    ("JWT", re.compile(r"\beyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}")),
    (
        "API_KEY",
        re.compile(
            r"\b(?:sk-(?:ant-|proj-)?[A-Za-z0-9_-]{16,}|bst-[A-Za-z0-9_-]{16,}|AKIA[0-9A-Z]{16}"
            r"|gh[pousr]_[A-Za-z0-9]{30,}|xox[abposr]-[A-Za-z0-9-]{10,}|AIza[0-9A-Za-z_-]{35})"
        ),
    ),
    ("EMAIL", re.compile(r"\b[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}\b")),
    ("CARD", re.compile(r"\b(?:\d[ -]?){13,19}\b")),
    ("PHONE", re.compile(r"(?<!\w)\+?\d[\d ()./-]{7,}\d(?!\w)")),
]


class RegexRedactor:
    """Replaces secrets, emails, card and phone numbers with ``<TYPE>`` placeholders."""

    def redact(self, text: str) -> str:
        for label, pattern in _PATTERNS:
            text = pattern.sub(f"<{label}>", text)
        return text


@dataclass(frozen=True, slots=True)
class LoggingRule:
    """A mode for requests of matching tenants (names) and models (aliases, globs)."""

    mode: Mode
    tenant: str = "*"
    model: str = "*"

    def matches(self, tenant: str, model: str) -> bool:
        return fnmatch.fnmatchcase(tenant, self.tenant) and fnmatch.fnmatchcase(model, self.model)


@dataclass(frozen=True, slots=True)
class LoggingPolicy:
    default: Mode = "metadata"
    rules: tuple[LoggingRule, ...] = ()
    retention_days: float | None = 30.0

    def mode_for(self, tenant: str, model: str) -> Mode:
        for rule in self.rules:
            if rule.matches(tenant, model):
                return rule.mode
        return self.default


@dataclass(frozen=True, slots=True)
class PayloadRecord:
    """The content of one request, as the logging policy allowed it."""

    request_id: str
    tenant_id: str | None
    model: str
    mode: Mode
    prompt: str
    completion: str
    ts: float = field(default_factory=time.time)


class PayloadStore(Protocol):
    def append(self, rows: Sequence[PayloadRecord]) -> None: ...

    def get(self, request_id: str) -> list[PayloadRecord]: ...

    def purge(self, older_than: float) -> int:
        """Delete payloads stored before ``older_than``; returns how many."""
        ...

    def close(self) -> None: ...
