"""Normalisation: make detectors see what the model would see.

Attackers hide instructions from pattern matchers with look-alike
characters (Cyrillic ``\u043e`` for Latin ``o``), fullwidth and mathematical
letters, zero-width and bidirectional control characters inside words, and
encodings the model happily decodes (base64, hex, rot13, percent-encoding).
:func:`normalize` undoes the first group; :func:`decoded_variants` returns
the decoded payloads found in a text, so injection detectors can scan them
too.

Normalised text is for *detection* only: redaction works on the original
text, whose offsets callers keep.
"""

from __future__ import annotations

import base64
import binascii
import codecs
import re
import unicodedata
from dataclasses import dataclass
from urllib.parse import unquote

_INVISIBLE = dict.fromkeys(
    map(
        ord,
        "\u200b\u200c\u200d\u2060\ufeff\u00ad\u180e\u034f\u115f\u1160\u3164"
        "\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u200e\u200f\u061c",
    )
)
# Letters NFKC keeps but that look like Latin ones (Cyrillic, Greek, others).
_CONFUSABLES = str.maketrans(
    "\u0430\u0435\u043e\u0440\u0441\u0443\u0445\u0456"
    "\u0458\u0455\u0501\u0261\u04bb\u04cf\u0578\u051b"
    "\u0475\u051d\u0410\u0412\u0415\u0417\u0406\u0408"
    "\u041a\u041c\u041d\u041e\u0420\u0421\u0422\u0425"
    "\u0423\u050c\u0474\u051c\u03b1\u03b2\u03b5\u03b9"
    "\u03ba\u03bd\u03bf\u03c1\u03c4\u03c5\u03c7\u0391"
    "\u0392\u0395\u0396\u0397\u0399\u039a\u039c\u039d"
    "\u039f\u03a1\u03a4\u03a5\u03a7\u0131\u0269\u2113",
    "aeopcyxijsdghlnqvwABE3IJKMHOPCTXYGVWabeikvoptuxABEZHIKMNOPTYXiil",
)
_SPACES = re.compile(r"[ \t\u00a0\u2000-\u200a\u202f\u205f\u3000]+")


def normalize(text: str) -> str:
    """NFKC, without invisible/bidi characters, look-alikes mapped to Latin."""
    text = unicodedata.normalize("NFKC", text)
    text = text.translate(_INVISIBLE).translate(_CONFUSABLES)
    return _SPACES.sub(" ", text)


_B64 = re.compile(r"(?<![A-Za-z0-9+/_-])[A-Za-z0-9+/_-]{16,}={0,2}(?![A-Za-z0-9+/=_-])")
_HEX = re.compile(r"(?<![0-9A-Fa-f])(?:[0-9A-Fa-f]{2}[ :]?){12,}(?![0-9A-Fa-f])")
_PCT = re.compile(r"(?:%[0-9A-Fa-f]{2}){4,}")
_ROT13_HINT = re.compile(r"rot[\s_-]?13|caesar|rotate", re.IGNORECASE)
_MAX_VARIANTS = 16


def _printable(raw: bytes) -> str | None:
    """``raw`` as text if it is mostly printable UTF-8 (a real payload), else None."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return None
    if len(text) < 8:
        return None
    good = sum(ch.isprintable() or ch in "\n\t" for ch in text)
    letters = sum(ch.isalpha() for ch in text)
    enough = letters >= 0.5 * len(text.replace(" ", ""))
    return text if good >= 0.95 * len(text) and enough else None


@dataclass(frozen=True, slots=True)
class Variant:
    """A decoded payload: how it was encoded, where it sits, and its text."""

    encoding: str
    start: int
    end: int
    text: str


def decoded_variants(text: str) -> list[Variant]:
    """Payloads hidden in ``text`` as base64, hex, percent-encoding or rot13."""
    out: list[Variant] = []
    for m in _B64.finditer(text):
        token = m.group(0)
        if token.isalpha() or token.isdigit():
            continue  # a plain word or number, not a payload
        padded = token + "=" * (-len(token) % 4)
        for decode in (base64.b64decode, base64.urlsafe_b64decode):
            try:
                decoded = _printable(decode(padded))
            except (binascii.Error, ValueError):
                continue
            if decoded is not None:
                out.append(Variant("base64", m.start(), m.end(), normalize(decoded)))
                break
    for m in _HEX.finditer(text):
        digits = re.sub(r"[ :]", "", m.group(0))
        if len(digits) % 2:
            continue
        decoded = _printable(bytes.fromhex(digits))
        if decoded is not None:
            out.append(Variant("hex", m.start(), m.end(), normalize(decoded)))
    for m in _PCT.finditer(text):
        decoded = unquote(m.group(0))
        if len(decoded) >= 4:
            out.append(Variant("url", m.start(), m.end(), normalize(decoded)))
    if _ROT13_HINT.search(text):
        out.append(Variant("rot13", 0, len(text), normalize(codecs.decode(text, "rot13"))))
    return out[:_MAX_VARIANTS]
