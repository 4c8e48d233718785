"""Guard pipelines: scanners per kind of text, findings mapped to one action.

A :class:`Pipeline` is built from a policy's ``guardrails.pipelines.<name>``.
For each kind of text (``input``, ``retrieved``, ``tool_output``,
``output``) it runs its scanners in order; a finding at or above a scanner's
``threshold`` takes that scanner's action. The text's action is the
strongest one (``block`` > ``redact`` > ``flag`` > ``allow``):

* ``block``: the caller gets ``content_blocked`` naming scanners and
  categories, never the offending text;
* ``redact``: each finding's span is replaced by a typed placeholder
  (``<EMAIL_1>``); the same value gets the same placeholder throughout one
  request (:class:`Redactions`), and the pipeline may put the values back
  into the answer (``restore``). A redaction without a span (a verdict on the
  whole text, e.g. an injection score) is a block;
* ``flag``: allowed, and recorded (metrics, audit).
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from bastion.config.schema import GuardPipelineConfig, Policy, ScannerConfig
from bastion.core.errors import ContentBlocked
from bastion.guard.base import ACTION_RANK, Finding, ScanContext, Scanner
from bastion.guard.registry import build_scanner


@dataclass
class Redactions:
    """Placeholders of one request: value -> ``<TYPE_n>`` and back."""

    by_value: dict[tuple[str, str], str] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    originals: dict[str, str] = field(default_factory=dict)
    restorable: set[str] = field(default_factory=set)
    _pattern: re.Pattern[str] | None = None

    def mark_restorable(self) -> None:
        """Placeholders made so far (the request's) may be put back into the answer.

        Placeholders made later (redactions of the answer itself) never are.
        """
        self.restorable = set(self.originals)
        if self.restorable:
            self._pattern = re.compile("|".join(re.escape(p) for p in sorted(self.restorable)))

    def placeholder(self, entity: str, value: str) -> str:
        key = (entity, value)
        ph = self.by_value.get(key)
        if ph is None:
            n = self.counts.get(entity, 0) + 1
            self.counts[entity] = n
            ph = self.by_value[key] = f"<{entity}_{n}>"
            self.originals[ph] = value
        return ph

    def restore(self, text: str) -> str:
        """``text`` with the request's placeholders replaced by their values."""
        if self._pattern is None or "<" not in text:
            return text
        return self._pattern.sub(lambda m: self.originals[m.group(0)], text)


@dataclass
class Verdict:
    """What a pipeline decided about one text."""

    action: str
    text: str
    findings: list[tuple[Finding, str]] = field(default_factory=list)

    @property
    def flagged(self) -> bool:
        return bool(self.findings)

    def reasons(self) -> list[str]:
        seen = dict.fromkeys(f"{f.scanner}:{f.category}" for f, a in self.findings if a == "block")
        return list(seen)

    def raise_if_blocked(self, kind: str) -> None:
        if self.action == "block":
            raise ContentBlocked(
                f"{kind} blocked by guardrails: {', '.join(self.reasons())}",
                reasons=self.reasons(),
            )


@dataclass
class Step:
    config: ScannerConfig
    scanner: Scanner

    def applies(self, ctx: ScanContext) -> bool:
        if self.config.tenants and (ctx.tenant or "") not in self.config.tenants:
            return False
        # the application's own system prompt is trusted: it is not an injection
        return not (ctx.extra.get("trusted") and self.config.type.startswith("injection"))


def apply_redactions(text: str, findings: Iterable[Finding], red: Redactions) -> str:
    """``text`` with the (non-overlapping, earliest first) finding spans replaced."""
    out: list[str] = []
    pos = 0
    for f in sorted(findings, key=lambda f: (f.start, -f.end)):
        if f.start < pos or f.end <= f.start:
            continue
        out.append(text[pos : f.start])
        out.append(red.placeholder(f.entity, text[f.start : f.end]))
        pos = f.end
    out.append(text[pos:])
    return "".join(out)


class Pipeline:
    """One named pipeline of a policy."""

    def __init__(
        self,
        name: str,
        cfg: GuardPipelineConfig,
        build: Callable[[ScannerConfig], Scanner] = build_scanner,
    ) -> None:
        self.name = name
        self.cfg = cfg
        self.steps: dict[str, list[Step]] = {
            kind: [Step(sc, build(sc)) for sc in getattr(cfg, kind)]
            for kind in ("input", "retrieved", "tool_output", "output")
        }

    def has(self, kind: str) -> bool:
        return bool(self.steps.get(kind))

    def scan(
        self, text: str, kind: str, ctx: ScanContext, red: Redactions | None = None
    ) -> Verdict:
        """Scan ``text`` as ``kind``; redactions (if any) are applied to the returned text."""
        verdict = Verdict("allow", text)
        to_redact: list[Finding] = []
        for step in self.steps.get(kind, ()):
            if not step.applies(ctx):
                continue
            for f in step.scanner.scan(text, ctx):
                if f.score < step.config.threshold:
                    continue
                action = step.config.action
                if action == "redact" and not f.entity:
                    action = "block"  # nothing to cut out: the whole text is the problem
                verdict.findings.append((f, action))
                if action == "redact":
                    to_redact.append(f)
                if ACTION_RANK[action] > ACTION_RANK[verdict.action]:
                    verdict.action = action
        if verdict.action == "redact" and to_redact:
            verdict.text = apply_redactions(text, to_redact, red or Redactions())
        return verdict


class Guard:
    """Every pipeline of a policy, and which model uses which."""

    def __init__(self, policy: Policy) -> None:
        g = policy.guardrails
        self.pipelines = {name: Pipeline(name, cfg) for name, cfg in g.pipelines.items()}
        self.default = self.pipelines.get(g.default) if g.default else None
        self._models: dict[str, Pipeline | None] = {}
        for alias, m in policy.models.items():
            if m.guard == "none":
                self._models[alias] = None
            elif m.guard is not None:
                self._models[alias] = self.pipelines[m.guard]
            else:
                self._models[alias] = self.default

    def for_model(self, alias: str) -> Pipeline | None:
        return self._models.get(alias)


_CACHE: dict[int, tuple[Policy, Guard]] = {}
_LOCK = threading.Lock()


def guard_for(policy: Policy) -> Guard:
    """The :class:`Guard` of a policy object (built once per applied policy)."""
    key = id(policy)
    hit = _CACHE.get(key)
    if hit is not None and hit[0] is policy:
        return hit[1]
    with _LOCK:
        guard = Guard(policy)
        _CACHE.clear()
        _CACHE[key] = (policy, guard)
        return guard
