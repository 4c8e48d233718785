"""The evaluation harness's vocabulary: cases, outputs, scores and the seams between them.

An eval is Inspect AI's triple: a **dataset** of :class:`Case` rows, a
**target** (the solver: a model alias, a prompt version, a RAG collection or
any OpenAI-compatible endpoint) that turns a case into an :class:`Output`, and
**scorers** that turn (case, output) into a :class:`Score`.

Every model call an eval makes (the target's and the judge's) goes through a
:class:`ModelClient`: normally HTTP to a Bastion gateway (in process or a
running server), so budgets, guards, the cache and the audit log apply.

A scorer that cannot score a case returns a :class:`Score` with ``error`` set
and ``value`` None. Errors are counted and reported separately and never
enter a mean (no NaN, no silent zero).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

JSON = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Case:
    """One dataset row.

    ``input`` is a user message (str) or a list of chat messages.
    ``expected`` is the target answer (a string, a number, a list of
    acceptable strings, or a JSON value) when the scorers need one.
    ``variables`` fill a prompt template (prompt targets). ``relevant`` maps
    doc ids to relevance grades (retrieval scorers). ``metadata`` is carried
    into reports untouched.
    """

    id: str
    input: str | list[JSON]
    expected: Any = None
    variables: Mapping[str, Any] = field(default_factory=dict)
    relevant: Mapping[str, int] = field(default_factory=dict)
    metadata: Mapping[str, Any] = field(default_factory=dict)

    def prompt_text(self) -> str:
        """The last user message's text (the question, for scorers that need it)."""
        if isinstance(self.input, str):
            return self.input
        for msg in reversed(self.input):
            if msg.get("role") == "user":
                content = msg.get("content")
                if isinstance(content, str):
                    return content
                if isinstance(content, list):
                    return " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
        return ""


@dataclass(slots=True)
class Output:
    """What a target produced for one case (one repetition).

    ``retrieved`` lists the ranked results of a retrieval target or of a
    grounded chat (dicts with at least ``document_id`` and ``text``);
    ``citations`` and ``grounding`` are Bastion's RAG annotations when
    present. ``error`` is set (and ``text`` empty) when the call failed after
    retries; scorers then record an error for the case.
    """

    text: str = ""
    tool_calls: list[JSON] = field(default_factory=list)
    retrieved: list[JSON] = field(default_factory=list)
    citations: list[JSON] = field(default_factory=list)
    grounding: JSON | None = None
    latency_s: float = 0.0
    cost_usd: float | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str | None = None
    status: int | None = None
    error: str | None = None
    raw: JSON | None = None


@dataclass(frozen=True, slots=True)
class Score:
    """One scorer's verdict on one case.

    ``value`` is in [0, 1] for proportions (1 is best) or a raw measure
    (seconds, dollars) for metric scorers; ``passed`` says whether the case
    passed this scorer's per-case bar (None when the scorer has none).
    ``error`` set means "could not score": ``value`` and ``passed`` are None.
    """

    scorer: str
    value: float | None
    passed: bool | None = None
    explanation: str | None = None
    error: str | None = None
    details: JSON = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.error is None and self.value is None:
            raise ValueError(f"scorer {self.scorer}: a score needs a value or an error")
        if self.value is not None and not math.isfinite(self.value):
            raise ValueError(f"scorer {self.scorer}: non-finite value {self.value!r}")

    @classmethod
    def failed(cls, scorer: str, error: str, **details: Any) -> Score:
        return cls(scorer=scorer, value=None, passed=None, error=error, details=dict(details))


@dataclass(frozen=True, slots=True)
class ChatResult:
    """A gateway chat answer: the OpenAI body plus what the HTTP layer saw."""

    body: JSON
    status: int
    latency_s: float
    cost_usd: float | None = None
    cache: str | None = None


class ModelClient(Protocol):
    """The one seam through which evals call models (normally a Bastion gateway)."""

    async def chat(self, body: JSON) -> ChatResult:
        """POST /v1/chat/completions; raises :class:`bastion.core.errors.BastionError`
        subclasses for error answers (transient ones are retried by the caller)."""
        ...

    async def post(self, path: str, body: JSON) -> JSON:
        """POST another JSON endpoint of the gateway (``/v1/rag/query``, ...)."""
        ...


class Target(Protocol):
    """The solver: turns a case into an output (one call, no retries here)."""

    name: str

    async def run(self, case: Case) -> Output: ...


class Scorer(Protocol):
    """Scores one case. Must not raise for a bad case: return :meth:`Score.failed`."""

    name: str

    async def score(self, case: Case, output: Output) -> Score: ...
