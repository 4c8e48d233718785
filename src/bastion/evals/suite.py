"""Eval suites as YAML files: a target, a dataset, scorers with thresholds.

A suite file::

    name: support-smoke
    target:                       # exactly one of model / prompt / collection / http
      model: local-chat
      system: "Answer in one word."
      params: {temperature: 0, max_tokens: 32}
    dataset:
      path: cases.jsonl           # .jsonl, .csv or .yaml, relative to the suite file
      # or: cases: [{input: "2+2?", expected: "4"}]
    scorers:
      - type: exact
        threshold: 0.9            # the mean over scored cases must reach it
      - type: judge
        model: judge
        rubric: "The answer is polite and correct."
        threshold: 0.8
    repetitions: 1
    concurrency: 8

``bastion eval run SUITE`` loads it with :func:`load_suite`; a malformed file
fails with ``file:line: reason`` like a policy file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from bastion.config.loader import load_yaml_model

ScorerType = Literal[
    "exact",
    "contains",
    "regex",
    "numeric",
    "json_schema",
    "recall_at_k",
    "mrr",
    "ndcg",
    "citations",
    "groundedness",
    "answer_relevance",
    "refusal",
    "latency",
    "cost",
    "judge",
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class HttpTarget(_Strict):
    """Any OpenAI-compatible server: ``url`` is its base (``.../v1``)."""

    url: str
    model: str
    api_key_env: str | None = None
    headers: dict[str, str] = {}


class TargetSpec(_Strict):
    """What answers the cases. Exactly one of ``model``, ``prompt``, ``collection``, ``http``.

    * ``model``: a gateway model alias (chat completions).
    * ``prompt``: a registry reference ``NAME@LABEL`` or ``NAME@VERSION``; the
      case's ``variables`` fill it (``extra_body.bastion.prompt``).
    * ``collection``: retrieval only (``POST /v1/rag/query``); with ``model``
      as well, grounded chat over the collection (citations, grounding).
    * ``http``: an external OpenAI-compatible endpoint, called directly.
    """

    model: str | None = None
    prompt: str | None = None
    collection: str | None = None
    http: HttpTarget | None = None
    system: str | None = None
    params: dict[str, Any] = {}
    top_k: int = Field(default=8, ge=1, le=100)
    timeout_s: float = Field(default=120.0, gt=0)

    @model_validator(mode="after")
    def _one_kind(self) -> TargetSpec:
        if self.http is not None and (self.model or self.prompt or self.collection):
            raise ValueError("http cannot be combined with model, prompt or collection")
        if self.prompt is not None and self.collection is not None:
            raise ValueError("prompt and collection cannot be combined")
        if not (self.model or self.prompt or self.collection or self.http):
            raise ValueError("name one of model, prompt, collection or http")
        if self.prompt is not None and "@" not in self.prompt:
            raise ValueError("prompt must be NAME@LABEL or NAME@VERSION")
        return self

    @property
    def kind(self) -> Literal["model", "prompt", "retrieval", "rag_chat", "http"]:
        if self.http is not None:
            return "http"
        if self.prompt is not None:
            return "prompt"
        if self.collection is not None:
            return "rag_chat" if self.model else "retrieval"
        return "model"


class DatasetSpec(_Strict):
    """Where the cases come from; field names map the file's columns to a :class:`Case`."""

    path: str | None = None
    cases: list[dict[str, Any]] | None = None
    id_field: str = "id"
    input_field: str = "input"
    expected_field: str = "expected"
    variables_field: str = "variables"
    relevant_field: str = "relevant"
    limit: int | None = Field(default=None, ge=1)

    @model_validator(mode="after")
    def _one_source(self) -> DatasetSpec:
        if (self.path is None) == (self.cases is None):
            raise ValueError("give exactly one of path or cases")
        return self


class ScorerSpec(_Strict):
    """One scorer: its type, its options, and the suite-level bar.

    ``threshold`` applies to the mean value over the cases it could score;
    ``max_errors`` (default 0) is how many unscorable cases the gate tolerates.
    Options only some scorers read: ``k`` (retrieval), ``pattern`` (regex),
    ``tolerance`` (numeric), ``schema`` (json_schema), ``rubric``, ``model``
    and ``agreement`` (judge), ``max_s`` / ``max_usd`` (latency / cost: the
    per-case bar), ``case_sensitive`` (exact, contains), ``min_support``
    (groundedness, citations).
    """

    type: ScorerType
    name: str | None = None
    threshold: float | None = None
    max_errors: int = Field(default=0, ge=0)
    k: int = Field(default=10, ge=1)
    pattern: str | None = None
    tolerance: float = Field(default=0.0, ge=0)
    relative: bool = False
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    rubric: str | None = None
    model: str | None = None
    agreement: bool = False
    max_s: float | None = Field(default=None, gt=0)
    max_usd: float | None = Field(default=None, ge=0)
    case_sensitive: bool = False
    min_support: float = Field(default=0.5, ge=0, le=1)

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    @property
    def label(self) -> str:
        return self.name or self.type

    @model_validator(mode="after")
    def _needs(self) -> ScorerSpec:
        if self.type == "regex" and not self.pattern:
            raise ValueError("a regex scorer needs pattern")
        if self.type == "judge" and not (self.rubric and self.model):
            raise ValueError("a judge scorer needs rubric and model (the judge's alias)")
        return self


class Suite(_Strict):
    """A whole suite file."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
    description: str = ""
    target: TargetSpec
    dataset: DatasetSpec
    scorers: list[ScorerSpec] = Field(min_length=1)
    repetitions: int = Field(default=1, ge=1, le=100)
    concurrency: int = Field(default=8, ge=1, le=256)
    retries: int = Field(default=2, ge=0, le=10)
    tags: list[str] = []
    base_dir: Path = Field(default=Path("."), exclude=True)

    @model_validator(mode="after")
    def _unique_labels(self) -> Suite:
        seen: set[str] = set()
        for s in self.scorers:
            if s.label in seen:
                raise ValueError(f"two scorers are named {s.label!r}: give one a name")
            seen.add(s.label)
        return self

    def dataset_path(self) -> Path | None:
        if self.dataset.path is None:
            return None
        p = Path(self.dataset.path)
        return p if p.is_absolute() else self.base_dir / p


def load_suite(path: str | Path) -> Suite:
    """Read and validate a suite file (raises PolicyError with file:line: reason)."""
    p = Path(path)
    suite = load_yaml_model(Suite, p)
    suite.base_dir = p.parent
    return suite
