"""Fast rules for prompt injection and jailbreaks (the first detector layer).

Each rule is a regular expression over *normalised* text
(:func:`bastion.guard.normalize.normalize`) with a category and a score:

* ``instruction_override``: "ignore / disregard / forget ... previous
  instructions", "new instructions:", "from now on you ...";
* ``jailbreak_roleplay``: DAN and "developer mode" personas, "you are now an
  unrestricted AI", "without any restrictions / filters / ethics";
* ``prompt_extraction``: asking for the system prompt, hidden instructions or
  "the text above";
* ``fake_role``: chat-template markers and fake turns inside user content
  (``<|im_start|>system``, ``[INST]``, ``<<SYS>>``, a line ``system:``);
* ``exfiltration``: markdown images or links that carry data in their query
  string, and instructions to render them.

The first four also come in Spanish, Portuguese, Italian, French and German
("ignora las instrucciones anteriores", "ignorez toutes les consignes
précédentes", "vergiss alles, was dir gesagt wurde", "a partir de agora você
é ...", "mostrami il tuo prompt di sistema"). Rules run on accent-folded text
(``é`` -> ``e``; same length, so spans still index the text).

A match inside quotes, or in a sentence asking what a phrase *means*, scores
low (0.35): talking about an attack is not performing one. The learned
classifier and the pipeline's thresholds decide such cases.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, replace

from bastion.guard.base import Finding, ScanContext
from bastion.guard.normalize import decoded_variants, normalize
from bastion.guard.rules_i18n import I18N_RULES, fold_lower

# Patterns are lower case, without IGNORECASE (much faster): they run on the text
# accent-folded and lower-cased (:func:`~bastion.guard.rules_i18n.fold_lower`).
_F = re.DOTALL

_TARGET = (
    r"(?:instructions?|prompts?|rules|directions|guidelines|directives|guardrails|"
    r"restrictions|constraints|programming|system\s+message|context|commands?)"
)
RULES: list[tuple[str, float, re.Pattern[str]]] = [
    (
        "instruction_override",
        0.95,
        re.compile(
            r"\b(?:ignore|disregard|forget|override|bypass|skip|drop|abandon|neglect)\s+"
            r"(?:[\w'-]+\s+){0,3}?(?:all|any|every|the|your|my|previous|prior|above|earlier|"
            r"preceding|initial|original|former|system|existing|these|those)\s+"
            r"(?:[\w'-]+\s+){0,2}?" + _TARGET + r"\b",
            _F,
        ),
    ),
    (
        "instruction_override",
        0.85,
        re.compile(
            r"\b(?:new|updated|real|actual|revised)\s+(?:system\s+)?instructions?\s*[:\-]"
            r"|\bfrom\s+now\s+on,?\s+(?:you|your|ignore|respond|answer|act)\b"
            r"|\byour\s+(?:new|real|true)\s+(?:task|goal|purpose|instructions?)\s+(?:is|are)\b"
            r"|\b(?:ignore|disregard|forget)\s+(?:all\s+(?:of\s+)?)?the\s+(?:above|previous|preceding)"
            r"\s*(?:[,.;:!]|and\b|then\b|$)"
            r"|\b(?:ignore|disregard|forget)\s+everything\s+(?:(?:that\s+)?(?:you\s+(?:were|have\s+been)"
            r"|i(?:'ve|\s+have)?)\s+(?:told|said|given)|(?:said\s+|written\s+)?(?:above|before|so\s+far|"
            r"previously))",
            _F,
        ),
    ),
    (
        "jailbreak_roleplay",
        0.95,
        re.compile(
            r"\bdan\b[^.\n]{0,60}\b(?:do\s+anything|mode|jailbreak)|\bdo\s+anything\s+now\b"
            r"|\b(?:developer|god|jailbreak|unrestricted|evil|dev)\s+mode\b"
            r"|\byou\s+are\s+(?:now\s+)?(?:an?\s+)?(?:unrestricted|unfiltered|uncensored|"
            r"jailbroken|evil|amoral)\b"
            r"|\b(?:without|free\s+(?:of|from)|no)\s+(?:any\s+)?(?:ethical|moral|safety|content)"
            r"\s+(?:guidelines|restrictions|filters|limits|constraints|policies)\b"
            r"|\bpretend\s+(?:that\s+)?(?:you\s+are|to\s+be)\b[^.\n]{0,80}\b(?:no|without|any)\s+"
            r"(?:restrictions|rules|limits|filters)\b",
            _F,
        ),
    ),
    (
        "prompt_extraction",
        0.9,
        re.compile(
            r"\b(?:reveal|print|show|repeat|output|display|leak|dump|recite|give\s+me|tell\s+me|"
            r"what\s+(?:is|are|was|were))\b[^.?!\n]{0,30}?\b(?:your|the|its)\s+(?:full\s+|entire\s+|"
            r"exact\s+|complete\s+)?(?:system|initial|original|hidden|secret|developer|"
            r"confidential)\s+(?:prompt|instructions?|message|rules|guidelines)\b"
            r"|\brepeat\s+(?:all\s+)?(?:the\s+)?(?:words|text|everything)\s+(?:above|before)\b"
            r"|\bwhat\s+(?:was|were)\s+you\s+told\s+(?:before|at\s+the\s+start)\b",
            _F,
        ),
    ),
    (
        "fake_role",
        0.9,
        re.compile(
            r"<\|im_start\|>\s*(?:system|assistant)|<\|(?:system|assistant)\|>|\[/?inst\]"
            r"|<<\s*/?sys\s*>>|<\|endoftext\|>|<\|eot_id\|>|<\|start_header_id\|>"
            r"|(?:^|\n)\s*#{0,3}\s*(?:system|assistant)\s*(?:message|prompt)?\s*:\s*\S",
            _F,
        ),
    ),
    (
        "exfiltration",
        0.9,
        re.compile(
            r"!\[[^\]]*\]\(\s*https?://[^)\s]+\?[^)\s]{12,}\)"
            r"|\b(?:render|include|append|add|embed|insert)\b[^.\n]{0,60}\b(?:markdown\s+)?image\b"
            r"[^.\n]{0,80}\b(?:url|link|https?://)"
            r"|\b(?:send|append|encode|include)\b[^.\n]{0,50}\b(?:conversation|chat\s+history|"
            r"previous\s+messages|user'?s?\s+data|the\s+secret)\b[^.\n]{0,40}\b(?:url|link|query)\b",
            _F,
        ),
    ),
]

_QUOTE_BEFORE = re.compile(
    "[\"'`\u00ab\u00bb\u201c\u201d\u201e\u2018\u2019\u201a\u2039\u203a]\\s*$"
)
_META = re.compile(
    r"\b(?:what\s+does|what\s+is\s+meant\s+by|meaning\s+of|definition\s+of|explain|"
    r"is\s+it\s+(?:safe|dangerous)|how\s+do(?:es)?\s+(?:i|we|you)\s+(?:detect|prevent|defend|"
    r"block|stop)|example\s+of|called)\b"
    # the same questions in es / pt / it / fr / de (on accent-folded text)
    r"|\b(?:que\s+(?:significa|quiere\s+decir|quer\s+dizer|veut\s+dire|signifie)|"
    r"(?:che\s+)?cosa\s+(?:significa|vuol\s+dire)|was\s+(?:bedeutet|heisst|heißt|meint)|"
    r"significado\s+de|significato\s+di|signification\s+de|bedeutung\s+von|"
    r"ejemplo\s+de|esempio\s+di|exemple\s+de|exemplo\s+de|beispiel\s+(?:fur|eines)|"
    r"(?:como|come|comment|wie)\s+(?:\w+\s+){0,2}?(?:detectar|prevenir|evitar|bloquear|"
    r"rilevare|prevenire|bloccare|detecter|bloquer|empecher|erkennen|verhindern|blockieren|"
    r"abwehren)|expli(?:ca|que|quez)|spiega|erklar(?:e|en)?|se\s+llama|si\s+chiama|"
    r"s'appelle|se\s+chama|nennt\s+man)\b",
    re.IGNORECASE,
)
MENTION_SCORE = 0.35


def _sentence(text: str, start: int, end: int) -> str:
    left = max(text.rfind(c, 0, start) for c in ".!?\n")
    right_candidates = [i for i in (text.find(c, end) for c in ".!?\n") if i != -1]
    right = min(right_candidates) if right_candidates else len(text)
    return text[left + 1 : right + 1]


def _mentioned(text: str, start: int, end: int) -> bool:
    """True when the match is quoted or sits in a question about what it means."""
    if _QUOTE_BEFORE.search(text[max(0, start - 3) : start]):
        return True
    return bool(_META.search(_sentence(text, start, end)))


@dataclass
class InjectionRules:
    """The rule layer as a :class:`~bastion.guard.base.Scanner`.

    Scans the normalised text and every decoded payload in it; a finding in a
    payload covers the payload's span in the original text, with its encoding
    in ``reason``.
    """

    name: str = "injection_rules"

    def scan(self, text: str, ctx: ScanContext) -> list[Finding]:
        norm = normalize(text)
        same_length = len(norm) == len(text)
        findings = [
            f if same_length else replace(f, start=0, end=len(text)) for f in self._scan(norm)
        ]
        for v in decoded_variants(text):
            for f in self._scan(v.text):
                findings.append(
                    Finding(
                        self.name,
                        f.category,
                        f.score,
                        v.start,
                        v.end,
                        reason=f"{v.encoding}-encoded: {f.reason}",
                    )
                )
        return findings

    def _scan(self, text: str) -> list[Finding]:
        low = fold_lower(text)  # same length as ``text``
        hits = [
            (category, score, m)
            for category, score, pattern in RULES
            for m in itertools.islice(pattern.finditer(low), 1)  # one finding per rule
        ]
        hits += [
            (r.category, r.score, m)
            for r in I18N_RULES
            for m in itertools.islice(r.matches(low, text), 1)
        ]
        return [
            Finding(
                self.name,
                category,
                MENTION_SCORE if _mentioned(low, m.start(), m.end()) else score,
                m.start(),
                m.end(),
                reason=category,
            )
            for category, score, m in hits
        ]
