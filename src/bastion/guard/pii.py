"""Fast, offline PII detection for the guardrail hot path.

:class:`PiiScanner` finds e-mail addresses, phone numbers, payment-card
numbers, IBANs, US social-security numbers and IP addresses with compiled
regular expressions, then validates every candidate (Luhn and issuer prefixes
for cards, ISO 7064 mod-97 and per-country lengths for IBANs, the SSA's
invalid ranges for SSNs, octet and :mod:`ipaddress` checks for IPs, and
``phonenumbers`` metadata for phone numbers). Only candidates are validated,
so a 2,000-character request costs well under a millisecond on one core.

Scores say how strong the evidence is: ``1.0`` for checksum-validated cards
and IBANs; ``0.95`` e-mail; ``0.9`` a phone number valid for its ``+``
country code, or an SSN with ``SSN``/``social security`` just before it;
``0.85`` a dashed SSN or an IP address; ``0.8`` a phone number valid in one of
the configured regions; ``0.6`` a number only accepted because ``phone``,
``call`` ... stands next to it; ``0.5`` a space-separated SSN with no
keyword. Findings never overlap: where two entities claim the same
characters, the stronger (then longer) one wins.

Names, places and organisations are out of scope here: the NER models that
find them cost tens of milliseconds per request on a CPU.
"""

from __future__ import annotations

import bisect
import ipaddress
import re
from collections.abc import Callable, Iterable, Sequence

from bastion.guard.base import Finding, ScanContext

try:  # validation metadata for phone numbers; a digit-count fallback without it
    import phonenumbers as _pn
except ImportError:  # pragma: no cover - exercised only without the dependency
    _pn = None  # type: ignore[assignment]

__all__ = ["ENTITIES", "PiiScanner", "dedupe_overlaps", "iban_valid", "luhn_valid"]

ENTITIES: tuple[str, ...] = ("EMAIL", "PHONE", "CREDIT_CARD", "IBAN", "US_SSN", "IP_ADDRESS")
DEFAULT_PHONE_REGIONS: tuple[str, ...] = ("US", "GB", "DE", "FR", "ES", "IT", "NL", "IN", "AU")

_CONTEXT_WINDOW = 40
_PHONE_WORDS = ("phone", "tel", "mobile", "cell", "call", "fax", "whatsapp", "sms", "text",
                "contact", "dial", "ring", "reach")  # fmt: skip
_PHONE_AFTER = ("phone", "mobile", "cell", "landline", "fax")
_SSN_WORDS = ("ssn", "social security", "ss#", "ss no", "taxpayer")
_VERSION_BEFORE = re.compile(r"(?i)\b(?:version|ver|release|build|firmware|v)[\s.:=]*$")

# -- patterns ------------------------------------------------------------------

_EMAIL = re.compile(
    r"(?<![\w.%+-])[A-Za-z0-9][A-Za-z0-9._%+-]{0,63}@"
    r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,24}(?![\w-])"
)
_CARD = re.compile(r"(?<![\w.,+-])\d{1,19}(?:[ -]\d{1,19}){0,7}(?![\w-]|[.,]\d)")
_IBAN = re.compile(r"\b[A-Za-z]{2}\d{2}(?: ?[A-Za-z0-9]){8,34}")
_SSN = re.compile(r"(?<![\w-])(\d{3})([- ]?)(\d{2})\2(\d{4})(?![\w-]|[.,]\d)")
_IPV4 = re.compile(r"(?<![\w.])(?:\d{1,3}\.){3}\d{1,3}(?!\w|\.\d)")
_IPV6 = re.compile(
    r"(?<![\w:])(?:[0-9A-Fa-f]{0,4}:){2,7}(?:(?:\d{1,3}\.){3}\d{1,3}|[0-9A-Fa-f]{1,4})?"
    r"(?:%[\w.]+)?(?![\w:])"
)
_PHONE_TOKEN = r"(?:\(\d{1,5}\)|\d{1,15})"
_PHONE = re.compile(
    r"(?<![\w+/.:-])(?:\+ ?)?"
    + _PHONE_TOKEN
    + r"(?:(?: ?[./-] ?| )"
    + _PHONE_TOKEN
    + r"|\(\d{1,5}\)|(?<=\))\d{1,15}){0,7}(?![\w/-]|[.:]\d)"
)
_SSN_SHAPE = re.compile(r"\d{3}([- ])\d{2}\1\d{4}")
_DOTTED_QUAD = re.compile(r"\d{1,3}(?:\.\d{1,3}){3}")
_IBAN_HEAD = re.compile(r"\b[A-Za-z]{2}\d{2}(?: [A-Za-z0-9]{4}){0,7} $")  # before an IBAN's tail
_ZIP4 = re.compile(r"\d{5}-\d{4}")
_DATE = re.compile(r"\d{1,4}([./-])\d{1,2}\1\d{1,4}")
_DIGIT_RUN = re.compile(r"\d+\)?")
_HAS_DIGIT = re.compile(r"\d")
_DIGITS = re.compile(r"\d+")
_NON_DIGITS = re.compile(r"\D+")

# ISO 13616 registry: country code -> IBAN length.
_IBAN_LENGTHS: dict[str, int] = {
    item[:2]: int(item[2:])
    for item in re.findall(
        r"\w+",
        "AD24 AE23 AL28 AT20 AZ28 BA20 BE16 BG22 BH22 BI27 BR29 BY28 CH21 CR22 CY28 CZ24 "
        "DE22 DJ27 DK18 DO28 EE20 EG29 ES24 FI18 FK18 FO18 FR27 GB22 GE22 GI23 GL18 GR27 "
        "GT28 HN28 HR21 HU28 IE22 IL23 IQ23 IS26 IT27 JO30 KW30 KZ20 LB28 LC32 LI21 LT20 "
        "LU20 LV21 LY25 MC27 MD24 ME22 MK19 MN20 MR27 MT31 MU30 NI28 NL18 NO15 OM23 PK24 "
        "PL28 PS29 PT25 QA29 RO24 RS22 RU33 SA24 SC31 SD18 SE24 SI19 SK24 SM27 SO23 ST25 "
        "SV28 TL23 TN24 TR26 UA29 VA22 VG24 XK20 YE30",
    )
}


# -- validators ----------------------------------------------------------------


def luhn_valid(digits: str) -> bool:
    """The Luhn (mod 10) check used by every payment-card number."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def card_issuer_ok(digits: str) -> bool:
    """Whether a digit string has a known issuer prefix (IIN) for its length."""
    n = len(digits)
    p2, p3, p4, p6 = int(digits[:2]), int(digits[:3]), int(digits[:4]), int(digits[:6])
    if digits[0] == "4":  # Visa
        return n in (13, 16, 19)
    if 51 <= p2 <= 55 or 2221 <= p4 <= 2720 or 2200 <= p4 <= 2204:  # Mastercard, Mir
        return n == 16
    if p2 in (34, 37):  # American Express
        return n == 15
    if 300 <= p3 <= 305 or p4 == 3095 or p2 in (36, 38, 39):  # Diners Club
        return 14 <= n <= 19
    if 3528 <= p4 <= 3589:  # JCB
        return 16 <= n <= 19
    if p4 == 6011 or 644 <= p3 <= 649 or p2 == 65 or 622126 <= p6 <= 622925:  # Discover
        return 16 <= n <= 19
    if p2 in (62, 81, 82, 60):  # UnionPay, RuPay
        return 16 <= n <= 19
    if p4 in (5018, 5020, 5038, 5893, 6304, 6759, 6761, 6762, 6763) or p2 in (50, 56, 57, 58):
        return 13 <= n <= 19  # Maestro
    return False


def iban_valid(compact: str) -> bool:
    """ISO 7064 mod-97 check of an upper-case IBAN without spaces."""
    if _IBAN_LENGTHS.get(compact[:2]) != len(compact) or not compact.isalnum():
        return False
    rearranged = compact[4:] + compact[:4]
    return int("".join(str(int(ch, 36)) for ch in rearranged)) % 97 == 1


def _ssn_valid(area: str, group: str, serial: str) -> bool:
    return not (area in ("000", "666") or area[0] == "9" or group == "00" or serial == "0000")


def _before(text: str, start: int, words: Iterable[str]) -> bool:
    window = text[max(0, start - _CONTEXT_WINDOW) : start].lower()
    return any(w in window for w in words)


# -- overlap resolution ---------------------------------------------------------


def dedupe_overlaps(findings: Iterable[Finding]) -> list[Finding]:
    """Keep the strongest (then longest, then earliest) of overlapping findings."""
    starts: list[int] = []  # kept findings, ordered by start (they never overlap)
    kept: list[Finding] = []
    for f in sorted(findings, key=lambda f: (-f.score, f.start - f.end, f.start)):
        i = bisect.bisect_right(starts, f.start)
        if (i and kept[i - 1].end > f.start) or (i < len(kept) and kept[i].start < f.end):
            continue
        starts.insert(i, f.start)
        kept.insert(i, f)
    return kept


# -- the scanner ---------------------------------------------------------------


class PiiScanner:
    """Regex-and-checksum PII scanner (``EMAIL``, ``PHONE``, ``CREDIT_CARD``, ...).

    ``entities`` picks a subset of :data:`ENTITIES` (all by default);
    ``phone_regions`` are the ISO regions tried for phone numbers written
    without a ``+`` country code, in order. ``max_phone_checks`` bounds the
    ``phonenumbers`` validations of one scan (a text stuffed with number-like
    decoys stays cheap); past it, candidates are judged by digit counts alone,
    which over-reports rather than misses.
    """

    name = "pii"

    def __init__(
        self,
        entities: Sequence[str] | None = None,
        phone_regions: Sequence[str] = DEFAULT_PHONE_REGIONS,
        max_phone_checks: int = 64,
    ) -> None:
        chosen = tuple(ENTITIES if entities is None else entities)
        unknown = sorted(set(chosen) - set(ENTITIES))
        if unknown:
            raise ValueError(f"unknown PII entities: {', '.join(unknown)}")
        self.entities = chosen
        self.phone_regions = tuple(r.upper() for r in phone_regions)
        self.max_phone_checks = max_phone_checks
        # Which regions to try for a number written without "+": NANP-style ten digits;
        # a leading trunk "0"; or (with three or more groups) no trunk prefix at all.
        self._ten = tuple(r for r in self.phone_regions if r in ("US", "CA", "IN"))
        self._zero = tuple(r for r in self.phone_regions if r not in ("US", "CA"))
        self._bare: tuple[str, ...] = ()
        self._lengths: dict[str, frozenset[int]] = {}  # national lengths, trunk "0" included
        if _pn is not None:
            meta = [(r, _pn.PhoneMetadata.metadata_for_region(r)) for r in self.phone_regions]
            self._bare = tuple(r for r, m in meta if m is not None and not m.national_prefix)
            for r, m in meta:
                if m is not None and m.general_desc is not None:
                    trunk = 1 if m.national_prefix == "0" else 0
                    self._lengths[r] = frozenset(n + trunk for n in m.general_desc.possible_length)
        finders: dict[str, Callable[[str], Iterable[Finding]]] = {
            "EMAIL": self._emails,
            "PHONE": self._phones,
            "CREDIT_CARD": self._cards,
            "IBAN": self._ibans,
            "US_SSN": self._ssns,
            "IP_ADDRESS": self._ips,
        }
        self._finders = [finders[e] for e in ENTITIES if e in chosen]
        # Every entity but EMAIL needs a digit: a text without one skips those finders.
        self._wordy = [finders[e] for e in ("EMAIL",) if e in chosen]
        if _pn is not None and "PHONE" in chosen:  # all metadata up front (~35 ms, 1.5 MB)
            _pn.PhoneMetadata.load_all()
            for region in self.phone_regions:
                example = _pn.example_number(region)
                if example is not None:
                    _pn.is_valid_number(example)

    def scan(self, text: str, ctx: ScanContext | None = None) -> list[Finding]:
        """PII findings in ``text``, non-overlapping and ordered by offset."""
        if not text:
            return []
        found: list[Finding] = []
        for finder in self._finders if _HAS_DIGIT.search(text) else self._wordy:
            found.extend(finder(text))
        return dedupe_overlaps(found) if len(found) > 1 else found

    def _hit(self, entity: str, score: float, start: int, end: int, reason: str) -> Finding:
        return Finding(self.name, entity, score, start, end, entity=entity, reason=reason)

    # Each finder returns its candidates; cheap `in` tests skip most texts.

    def _emails(self, text: str) -> Iterable[Finding]:
        if "@" not in text:
            return ()
        return [
            self._hit("EMAIL", 0.95, m.start(), m.end(), "email") for m in _EMAIL.finditer(text)
        ]

    def _cards(self, text: str) -> list[Finding]:
        out: list[Finding] = []
        for m in _CARD.finditer(text):
            cand = m.group()
            if len(cand) < 13 or _IBAN_HEAD.search(text, max(0, m.start() - 40), m.start()):
                continue
            groups = [(g.start(), g.end()) for g in _DIGITS.finditer(cand)]
            if sum(b - a for a, b in groups) < 13:
                continue
            # From the start of the run: the longest valid card, then the next one right
            # after it. Never a number carved out of the middle of a longer one.
            i = 0
            while i < len(groups):
                for j in range(len(groups), i, -1):
                    digits = "".join(cand[a:b] for a, b in groups[i:j])
                    if 13 <= len(digits) <= 19 and self._card_ok(digits, cand, groups[i:j]):
                        s, e = m.start() + groups[i][0], m.start() + groups[j - 1][1]
                        out.append(self._hit("CREDIT_CARD", 1.0, s, e, "luhn and issuer prefix"))
                        i = j
                        break
                else:
                    break
        return out

    @staticmethod
    def _card_ok(digits: str, cand: str, groups: list[tuple[int, int]]) -> bool:
        if len(groups) > 1:
            seps = {cand[groups[k][1] : groups[k + 1][0]] for k in range(len(groups) - 1)}
            sizes = [b - a for a, b in groups]
            if len(seps) != 1 or sizes[0] != 4 or any(not 2 <= s <= 6 for s in sizes[1:-1]):
                return False
        return card_issuer_ok(digits) and luhn_valid(digits)

    def _ibans(self, text: str) -> list[Finding]:
        out: list[Finding] = []
        for m in _IBAN.finditer(text):
            cand = m.group()
            length = _IBAN_LENGTHS.get(cand[:2].upper())
            if length is None:
                continue
            compact: list[str] = []
            end = 0
            for k, ch in enumerate(cand):
                if ch != " ":
                    compact.append(ch)
                    if len(compact) == length:
                        end = k + 1
                        break
            if not end or (end < len(cand) and cand[end] != " "):
                continue  # too short, or the IBAN runs on into more characters
            s = m.start()
            if s + end < len(text) and text[s + end].isalnum():
                continue
            if iban_valid("".join(compact).upper()):
                out.append(self._hit("IBAN", 1.0, s, s + end, "mod-97 checksum"))
        return out

    def _ssns(self, text: str) -> list[Finding]:
        out: list[Finding] = []
        for m in _SSN.finditer(text):
            area, sep, group, serial = m.groups()
            if not _ssn_valid(area, group, serial):
                continue
            if _before(text, m.start(), _SSN_WORDS):
                score = 0.9  # beats a phone number reading of the same digits
            elif sep == "-":
                score = 0.85
            elif sep:
                score = 0.5
            else:
                continue  # nine bare digits with no "SSN" nearby: an order number
            out.append(self._hit("US_SSN", score, m.start(), m.end(), "ssn format"))
        return out

    def _ips(self, text: str) -> list[Finding]:
        out: list[Finding] = []
        if "." in text:
            for m in _IPV4.finditer(text):
                octets = m.group().split(".")
                if any(int(o) > 255 or (len(o) > 1 and o[0] == "0") for o in octets):
                    continue
                if m.group() == "0.0.0.0" or _VERSION_BEFORE.search(
                    text, max(0, m.start() - 20), m.start()
                ):
                    continue
                out.append(self._hit("IP_ADDRESS", 0.85, m.start(), m.end(), "ipv4"))
        if "::" in text or text.count(":") >= 7:
            for m in _IPV6.finditer(text):
                cand = m.group()
                if not _HAS_DIGIT.search(cand):
                    continue
                try:
                    ipaddress.IPv6Address(cand.split("%", 1)[0])
                except ValueError:
                    continue
                out.append(self._hit("IP_ADDRESS", 0.85, m.start(), m.end(), "ipv6"))
        return out

    def _phones(self, text: str) -> list[Finding]:
        out: list[Finding] = []
        budget = [self.max_phone_checks]  # per scan: scanners are shared across threads
        for m in _PHONE.finditer(text):
            cand, start = m.group(), m.start()
            if len(cand) < 7 or _DATE.fullmatch(cand) or _DOTTED_QUAD.fullmatch(cand):
                continue
            if _IBAN_HEAD.search(text, max(0, start - 40), start) or text[start - 1 : start] == "#":
                continue  # the tail of an IBAN; an order or ticket number
            # The whole candidate, or without one short trailing group (a year, a count).
            runs = [r.end() for r in _DIGIT_RUN.finditer(cand)]
            cuts = runs[-1:] if len(runs) < 3 or runs[-1] - runs[-2] > 5 else runs[:-3:-1]
            for cut in cuts:
                score = self._phone_score(cand[:cut], text, start, budget)
                if score:
                    out.append(self._hit("PHONE", score, start, start + cut, "phone"))
                    break
        return out

    def _phone_score(self, cand: str, text: str, start: int, budget: list[int]) -> float:
        digits = _NON_DIGITS.sub("", cand)
        n = len(digits)
        intl = cand[0] == "+" or (digits[:2] == "00" and n >= 10)
        if n < 7 or n > (17 if intl else 15) or (not intl and _SSN_SHAPE.fullmatch(cand)):
            return 0.0
        # A bare run of digits, or a US ZIP+4, is a phone number only when a keyword says so.
        bare = n == len(cand) or _ZIP4.fullmatch(cand)
        if not intl and bare and not self._phone_context(text, start, start + len(cand)):
            return 0.0
        if _pn is None or budget[0] <= 0:
            return _fallback_phone_score(digits, intl)
        regions: tuple[str | None, ...] = ()
        if intl:
            cand, regions = (cand if cand[0] == "+" else "+" + digits[2:]), (None,)
        elif digits[0] == "0":
            regions = tuple(r for r in self._zero if n in self._lengths.get(r, (n,)) and n >= 9)
        elif n == 10 or (n == 11 and digits[0] == "1"):
            regions = self._ten
        elif n in (8, 9) and len(_DIGIT_RUN.findall(cand)) >= 3:
            regions = tuple(r for r in self._bare if n in self._lengths.get(r, (n,)))
        possible = False
        for region in regions:
            budget[0] -= 1
            try:
                parsed = _pn.parse(cand, region)
            except _pn.NumberParseException:
                continue
            if (
                _pn.is_valid_number_for_region(parsed, region)
                if region
                else _pn.is_valid_number(parsed)
            ):
                return 0.9 if intl else 0.8
            possible = possible or _pn.is_possible_number(parsed)
        if not (possible or (n >= 10 and not regions)):
            return 0.0
        return 0.6 if self._phone_context(text, start, start + len(cand)) else 0.0

    @staticmethod
    def _phone_context(text: str, start: int, end: int) -> bool:
        after = text[end : end + 25].lower()
        return _before(text, start, _PHONE_WORDS) or any(w in after for w in _PHONE_AFTER)


def _fallback_phone_score(digits: str, intl: bool) -> float:
    """Digit-count rules used when ``phonenumbers`` is not installed."""
    n = len(digits)
    if intl:
        return 0.6 if 8 <= n <= 15 else 0.0
    if digits[0] == "0":
        return 0.6 if 9 <= n <= 12 else 0.0
    nanp = digits[-10:]
    return 0.6 if n in (10, 11) and nanp[0] in "23456789" and nanp[3] in "23456789" else 0.0
