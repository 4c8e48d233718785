"""The scanner protocol: text and context in, typed findings out.

A :class:`Scanner` looks at one text of one *kind* (``input``: user and
system messages; ``retrieved``: RAG chunks; ``tool_output``; ``output``:
assistant text and tool-call arguments) and returns :class:`Finding`s: what
it found (``category``, e.g. ``injection``, ``EMAIL``, ``OPENAI_KEY``), how
sure it is (``score`` in 0..1) and where (``start``/``end`` character offsets
into the text it was given; ``0, len(text)`` for a verdict on the whole
text). Scanners never decide what happens: a pipeline maps findings to an
action (``block``, ``redact``, ``flag``) from the policy.

Scanners are synchronous, pure CPU and thread-safe; a scanner that needs a
model loads it once, lazily, and keeps it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Protocol

Kind = Literal["input", "retrieved", "tool_output", "output"]
KINDS: tuple[str, ...] = ("input", "retrieved", "tool_output", "output")
Action = Literal["allow", "flag", "redact", "block"]
ACTION_RANK: dict[str, int] = {"allow": 0, "flag": 1, "redact": 2, "block": 3}


@dataclass(frozen=True, slots=True)
class Finding:
    """One thing a scanner found.

    ``start``/``end`` index the scanned text; ``entity`` names what a
    redaction placeholder calls it (``EMAIL`` gives ``<EMAIL_1>``), and is
    empty for findings that cannot be redacted (an injection verdict).
    """

    scanner: str
    category: str
    score: float
    start: int
    end: int
    entity: str = ""
    reason: str = ""

    def to_dict(self) -> dict[str, object]:
        return {
            "scanner": self.scanner,
            "category": self.category,
            "score": round(self.score, 4),
            "start": self.start,
            "end": self.end,
        }


@dataclass(frozen=True, slots=True)
class ScanContext:
    """Who and what a text belongs to (for per-tenant rules and logs)."""

    kind: str = "input"
    tenant: str | None = None
    model: str | None = None
    extra: dict[str, object] = field(default_factory=dict)


class Scanner(Protocol):
    name: str

    def scan(self, text: str, ctx: ScanContext) -> list[Finding]:
        """Findings in ``text`` (an empty list when clean)."""
        ...
