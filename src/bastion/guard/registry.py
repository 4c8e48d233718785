"""Scanner types of the policy file -> scanner instances.

``injection`` is the layered detector: rules over normalised and decoded
text, then the learned classifier (its findings are simply merged; the
pipeline's threshold applies to each). Models behind scanners load lazily on
first use and are shared by every pipeline that names the same type. ``ner``
needs the optional ``ner`` extra; without it, building the scanner raises
:class:`~bastion.guard.ner.NerUnavailable` (``400 unsupported``), whose
message names the extra.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from bastion.config.schema import ScannerConfig
from bastion.guard.base import Finding, ScanContext, Scanner
from bastion.guard.rules import InjectionRules


@dataclass
class Layered:
    """Several scanners as one (their findings concatenated)."""

    name: str
    parts: tuple[Scanner, ...]

    def scan(self, text: str, ctx: ScanContext) -> list[Finding]:
        out: list[Finding] = []
        for part in self.parts:
            out.extend(part.scan(text, ctx))
        return out


@functools.cache
def _classifier() -> Scanner:
    from bastion.guard.injection import InjectionClassifier

    return InjectionClassifier()


def build_scanner(cfg: ScannerConfig) -> Scanner:
    """A scanner for one pipeline entry."""
    kind = cfg.type
    if kind == "injection_rules":
        return InjectionRules()
    if kind == "injection_classifier":
        return _classifier()
    if kind == "injection":
        return Layered("injection", (InjectionRules(), _classifier()))
    if kind == "pii":
        from bastion.guard.pii import PiiScanner

        return PiiScanner(entities=cfg.entities) if cfg.entities else PiiScanner()
    if kind == "ner":  # optional extra: raises NerUnavailable (naming it) when not installed
        from bastion.guard.ner import NerScanner

        return NerScanner(entities=cfg.entities or None)
    if kind == "secrets":
        from bastion.guard.secrets import SecretsScanner

        return SecretsScanner(entities=cfg.entities) if cfg.entities else SecretsScanner()
    if kind == "deny_list":
        from bastion.guard.content import DenyListScanner

        return DenyListScanner(keywords=cfg.keywords, regexes=cfg.regexes, topics=cfg.topics)
    if kind == "toxicity":
        from bastion.guard.content import ProfanityScanner

        return ProfanityScanner()
    if kind == "links":
        from bastion.guard.output import LinkFilter

        return LinkFilter(cfg.allowed_domains)
    raise ValueError(f"unknown scanner type {kind!r}")
