"""Fast, offline detection of credentials: provider keys, tokens and private keys.

:class:`SecretsScanner` recognises the published formats of the keys that
leak into prompts most (OpenAI, Anthropic, AWS, GitHub, Slack, Google,
Stripe and Bastion's own ``bst-`` keys), JSON Web Tokens (the header must
decode to a JSON object with an ``alg``), PEM private-key blocks, passwords
in URLs, and values assigned to a credential-like name (``password=``,
``"api_key": ...``, ``Authorization: Bearer ...``) when they look like a
secret (length, character classes and Shannon entropy). A bare git SHA,
UUID or checksum in prose is never flagged: without a provider prefix a
value is only a secret when its context says so.

Each rule first checks for a literal it cannot match without (``AKIA``,
``eyJ``, ``-----BEGIN``), so a clean 2,000-character text costs a few
microseconds per rule.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from bastion.guard.base import Finding, ScanContext
from bastion.guard.pii import dedupe_overlaps

__all__ = ["SECRET_ENTITIES", "SecretsScanner", "shannon_entropy"]

SECRET_ENTITIES: tuple[str, ...] = (
    "OPENAI_KEY",
    "ANTHROPIC_KEY",
    "AWS_KEY",
    "GITHUB_TOKEN",
    "SLACK_TOKEN",
    "GOOGLE_API_KEY",
    "STRIPE_KEY",
    "BASTION_KEY",
    "JWT",
    "PRIVATE_KEY",
    "SECRET",
)

_PLACEHOLDERS = frozenset(
    re.findall(
        r"\w+",
        "null none nil true false redacted hidden masked secret password token changeme example "
        "undefined placeholder xxxxxx",
    )
)


def shannon_entropy(value: str) -> float:
    """Shannon entropy of ``value`` in bits per character."""
    if not value:
        return 0.0
    n = len(value)
    return -sum(c / n * math.log2(c / n) for c in Counter(value).values())


def _classes(value: str) -> int:
    """How many of lower case, upper case, digits and symbols ``value`` uses."""
    return (
        any(c.islower() for c in value)
        + any(c.isupper() for c in value)
        + any(c.isdigit() for c in value)
        + any(not c.isalnum() for c in value)
    )


def _jwt_header_ok(token: str) -> bool:
    header = token.split(".", 1)[0]
    try:
        decoded = json.loads(base64.urlsafe_b64decode(header + "=" * (-len(header) % 4)))
    except (ValueError, binascii.Error):
        return False
    return isinstance(decoded, dict) and "alg" in decoded


def _mixed(value: str) -> bool:
    return any(c.isdigit() for c in value) and any(c.isalpha() for c in value)


@dataclass(frozen=True, slots=True)
class _Rule:
    entity: str
    pattern: re.Pattern[str]
    hints: tuple[str, ...]  # the text must contain one of these (case-sensitive)
    score: float
    reason: str
    check: Callable[[str], bool] | None = None


_B = r"(?<![\w-])"  # token start: not glued to a longer identifier
_E = r"(?![\w-])"

_RULES: tuple[_Rule, ...] = (
    _Rule(
        "ANTHROPIC_KEY",
        re.compile(_B + r"sk-ant-[A-Za-z0-9_-]{32,}"),
        ("sk-ant-",),
        0.95,
        "anthropic api key",
    ),
    _Rule(
        "OPENAI_KEY",
        re.compile(_B + r"sk-[A-Za-z0-9_-]{8,}T3BlbkFJ[A-Za-z0-9_-]{8,}"),
        ("T3BlbkFJ",),
        0.95,
        "openai key (with the T3BlbkFJ marker)",
    ),
    _Rule(
        "OPENAI_KEY",
        re.compile(_B + r"sk-(?:proj|svcacct|admin)-[A-Za-z0-9_-]{20,}"),
        ("sk-",),
        0.95,
        "openai project/service key",
    ),
    _Rule(
        "OPENAI_KEY",
        re.compile(_B + r"sk-(?!ant-|proj-|svcacct-|admin-)[A-Za-z0-9_-]{32,}" + _E),
        ("sk-",),
        0.85,
        "openai-style sk- key",
        _mixed,
    ),
    _Rule(
        "AWS_KEY",
        re.compile(r"(?<![A-Za-z0-9])(?:AKIA|ASIA)[A-Z0-9]{16}(?![A-Za-z0-9])"),
        ("AKIA", "ASIA"),
        0.95,
        "aws access key id",
    ),
    _Rule(
        "AWS_KEY",
        re.compile(
            r"(?i)(?:aws[\w.-]{0,20}secret|secret_?access)[\w.-]{0,20}[\"']?\s{0,3}(?:=|:|=>)"
            r"\s{0,3}[\"']?(?P<v>[A-Za-z0-9/+]{40})(?![A-Za-z0-9/+=])"
        ),
        ("secret", "SECRET", "Secret"),
        0.95,
        "aws secret access key",
    ),
    _Rule(
        "GITHUB_TOKEN",
        re.compile(
            r"(?<!\w)(?:gh[pousr]_[A-Za-z0-9]{36,255}|github_pat_[A-Za-z0-9_]{22,255})(?!\w)"
        ),
        ("ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_"),
        0.95,
        "github token",
    ),
    _Rule(
        "SLACK_TOKEN",
        re.compile(_B + r"xox[abposr]-[A-Za-z0-9-]{10,}"),
        ("xox",),
        0.9,
        "slack token",
    ),
    _Rule(
        "SLACK_TOKEN",
        re.compile(
            r"https://hooks\.slack\.com/(?:services|workflows|triggers)/[A-Za-z0-9_/-]{16,}"
        ),
        ("hooks.slack.com",),
        0.95,
        "slack webhook url",
    ),
    _Rule(
        "GOOGLE_API_KEY",
        re.compile(_B + r"AIza[0-9A-Za-z_-]{35}" + _E),
        ("AIza",),
        0.95,
        "google api key",
    ),
    _Rule(
        "STRIPE_KEY",
        re.compile(_B + r"(?:sk|rk)_live_[0-9A-Za-z]{16,}"),
        ("_live_",),
        0.95,
        "stripe live key",
    ),
    _Rule(
        "STRIPE_KEY",
        re.compile(_B + r"(?:sk|rk)_test_[0-9A-Za-z]{16,}"),
        ("_test_",),
        0.8,
        "stripe test key",
    ),
    _Rule(
        "BASTION_KEY",
        re.compile(_B + r"bst-[A-Za-z0-9_-]{32,}"),
        ("bst-",),
        0.95,
        "bastion virtual key",
    ),
    _Rule(
        "JWT",
        re.compile(_B + r"eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{2,}\.[A-Za-z0-9_-]*"),
        ("eyJ",),
        0.95,
        "jwt with alg header",
        _jwt_header_ok,
    ),
    _Rule(
        "SECRET",
        re.compile(r"(?i)\b[a-z][a-z0-9+.-]{1,15}://[^\s:/@]{1,64}:(?P<v>[^\s:/@]{3,128})@[\w.-]+"),
        ("://",),
        0.8,
        "password in url",
        lambda v: v.lower() not in _PLACEHOLDERS and not v.startswith(("$", "{", "<", "*")),
    ),
)

_PEM_BEGIN = re.compile(r"-----BEGIN ((?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?)-----")
# A truncated block's body: whole lines of base64, or "Proc-Type: ..." style headers.
_PEM_BODY = re.compile(r"(?:\r?\n[ \t]*(?:[A-Za-z-]+: [^\r\n]*|[A-Za-z0-9+/=]+)[ \t]*(?=\r?\n|$))*")

_NAMES = (
    r"(?P<pw>pass(?:word|wd|phrase)|(?<![a-z])pass(?![a-z])|(?<![a-z])pwd(?![a-z]))"
    r"|secret|token|api[_-]?key|apikey|access[_-]?key|private[_-]?key|signing[_-]?key"
    r"|encryption[_-]?key|credentials?|(?<![a-z])auth(?:orization)?(?![a-z])"
)
_ASSIGNED = re.compile(
    r"(?i)(?:" + _NAMES + r")[\w.-]{0,30}?[\"']?\s{0,3}(?P<op>=|:=|=>|:|\bis\b)\s{0,3}"
    r"(?:bearer\s+|basic\s+)?[\"'`]?(?P<v>[^\s\"'`<>,;(){}\[\]]{6,256})"
)
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*")
_IN_URL = re.compile(r"[?&]\S*$")
_BEARER = re.compile(r"(?i)\bbearer\s+(?P<v>[A-Za-z0-9._~+/-]{16,}=*)")
_NAME_HINTS = ("pass", "pwd", "secret", "token", "key", "auth", "credential")


def _context_score(value: str, password: bool, prose: bool) -> float:
    """How secret an assigned value looks (0.0: not a secret)."""
    low = value.lower()
    if (
        low in _PLACEHOLDERS
        or value.startswith(("$", "{", "<", "%", "*", "your", "YOUR"))
        or len(set(value)) <= 2
        or low.startswith(("xxx", "***", "..."))
    ):
        return 0.0
    if _IDENTIFIER.fullmatch(value) and ("." in value or "_" in value):
        return 0.0  # code: password = os.environ, token = get_token
    entropy = shannon_entropy(value)
    if password and not prose:
        return 0.75 if len(value) >= 6 and _classes(value) >= 2 and entropy >= 2.0 else 0.0
    if prose:  # "the password is ...": only clearly random-looking values
        return 0.7 if len(value) >= 8 and _classes(value) >= 3 and entropy >= 2.5 else 0.0
    if len(value) >= 16 and entropy >= 3.0 and _mixed(value):
        return 0.8
    return 0.0


class SecretsScanner:
    """Provider keys, JWTs, private keys and secrets in context (``OPENAI_KEY``, ``SECRET`` ...).

    ``entities`` picks a subset of :data:`SECRET_ENTITIES` (all by default).
    """

    name = "secrets"

    def __init__(self, entities: Sequence[str] | None = None) -> None:
        chosen = tuple(SECRET_ENTITIES if entities is None else entities)
        unknown = sorted(set(chosen) - set(SECRET_ENTITIES))
        if unknown:
            raise ValueError(f"unknown secret entities: {', '.join(unknown)}")
        self.entities = chosen
        self._rules = tuple(r for r in _RULES if r.entity in chosen)
        self._find_pem = "PRIVATE_KEY" in chosen
        self._context = "SECRET" in chosen

    def scan(self, text: str, ctx: ScanContext | None = None) -> list[Finding]:
        """Credential findings in ``text``, non-overlapping and ordered by offset."""
        if len(text) < 8:
            return []
        found: list[Finding] = []
        for rule in self._rules:
            if not any(h in text for h in rule.hints):
                continue
            for m in rule.pattern.finditer(text):
                span = "v" if "v" in rule.pattern.groupindex else 0
                value = m.group(span)
                if rule.check is not None and not rule.check(value):
                    continue
                found.append(
                    self._hit(rule.entity, rule.score, m.start(span), m.end(span), rule.reason)
                )
        if self._find_pem and "-----BEGIN " in text:
            found.extend(self._pem(text))
        lower = text.lower() if self._context else ""
        if any(h in lower for h in _NAME_HINTS):
            found.extend(self._assigned(text))
        if "earer" in lower:
            for m in _BEARER.finditer(text):
                if _context_score(m.group("v"), False, False):
                    found.append(self._hit("SECRET", 0.8, m.start("v"), m.end("v"), "bearer token"))
        return dedupe_overlaps(found) if len(found) > 1 else found

    def _hit(self, entity: str, score: float, start: int, end: int, reason: str) -> Finding:
        return Finding(self.name, entity, score, start, end, entity=entity, reason=reason)

    def _pem(self, text: str) -> list[Finding]:
        out: list[Finding] = []
        pos = 0
        while (m := _PEM_BEGIN.search(text, pos)) is not None:
            footer = f"-----END {m.group(1)}-----"
            end = text.find(footer, m.end())
            if end >= 0:
                end += len(footer)
            else:  # truncated block: the header and the base64 body after it
                body = _PEM_BODY.match(text, m.end())
                end = body.end() if body else m.end()
            out.append(self._hit("PRIVATE_KEY", 1.0, m.start(), end, "pem private key"))
            pos = end
        return out

    def _assigned(self, text: str) -> list[Finding]:
        out: list[Finding] = []
        for m in _ASSIGNED.finditer(text):
            value = m.group("v")
            if _IN_URL.search(text, max(0, m.start() - 64), m.start()):
                value = value.split("&", 1)[0]  # a query parameter ends at the next "&"
            value = value.rstrip(".:!?")
            if text[m.start("v") + len(value) : m.start("v") + len(value) + 1] in ("(", "["):
                continue  # a call or a subscript: code, not a value
            prose = m.group("op").lower() == "is"
            score = _context_score(value, m.group("pw") is not None, prose)
            if score:
                start = m.start("v")
                out.append(
                    self._hit("SECRET", score, start, start + len(value), "secret in context")
                )
        return out
