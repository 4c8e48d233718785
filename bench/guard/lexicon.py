"""Word-by-word translation of English training rows, for the injection classifier.

The labelled training sets are almost all English, so a classifier trained on them
learns English attack vocabulary only ("ignore", "instructions", "pretend").
:func:`code_switch` rewrites a training row with most of its words replaced by a
dictionary translation into Spanish, Portuguese, Italian, French or German. The
result is not good prose, but its character n-grams carry the other language's
stems ("instrucc", "ignor", "anterior", "vergiss"), which is what the hashed
n-gram features see. Benign and injection rows are rewritten alike, so the model
cannot learn "translated text is an attack".

The dictionaries are FreeDict's English-to-X dictionaries as Debian packages them
(GPL-2+/GPL-3+, used only to build training rows; nothing of them ships)::

    apt-get install dict-freedict-eng-spa dict-freedict-eng-por \\
        dict-freedict-eng-ita dict-freedict-eng-fra dict-freedict-eng-deu
"""

from __future__ import annotations

import gzip
import re
import string
from functools import cache
from pathlib import Path

import numpy as np

DICTD = Path("/usr/share/dictd")
LANGS = {"es": "spa", "pt": "por", "it": "ita", "fr": "fra", "de": "deu"}
PACKAGES = " ".join(f"dict-freedict-eng-{code}" for code in LANGS.values())
_B64 = {
    c: i
    for i, c in enumerate(
        string.ascii_letters[26:] + string.ascii_letters[:26] + string.digits + "+/"
    )
}
_WORD = re.compile(r"[A-Za-z]+(?:'[a-z]+)?")
_SKIP = re.compile(r"^\s*(Note:|see:|Synonyms?:|\"|\[)")
_TAGS = re.compile(r"<[^>]*>|\[[^\]]*\]|\([^)]*\)|\{[^}]*\}")


def _num(s: str) -> int:
    n = 0
    for ch in s.strip():
        n = n * 64 + _B64[ch]
    return n


def _senses(entry: str) -> list[str]:
    """The translations of one dictd entry: the first item of each numbered sense."""
    out: list[str] = []
    for line in entry.split("\n")[1:]:
        if not line.strip() or _SKIP.match(line):
            continue
        line = re.sub(r"^\s*\d+\.\s*", "", _TAGS.sub("", line))
        first = line.split(",")[0].split(";")[0].strip(" .")
        first = re.sub(r"\b(etw|jdm|jdn|jds|sth|sb)\.?\s*", "", first).strip()
        if first and len(first) <= 30 and first not in out:
            out.append(first)
    return out


@cache
def lexicon(lang: str) -> dict[str, list[str]]:
    """English word -> translations, from FreeDict's ``eng-<lang>`` dictionary."""
    code = LANGS[lang]
    index, body = DICTD / f"freedict-eng-{code}.index", DICTD / f"freedict-eng-{code}.dict.dz"
    if not index.exists():
        raise SystemExit(f"missing {index}: apt-get install {PACKAGES}")
    data = gzip.decompress(body.read_bytes())
    out: dict[str, list[str]] = {}
    for line in index.read_text(encoding="utf-8").splitlines():
        parts = line.split("\t")
        if len(parts) < 3 or not _WORD.fullmatch(parts[0]):
            continue
        if parts[0].lower() in out and not parts[0].islower():
            continue  # "All" (All Saints) must not shadow "all"
        offset, length = _num(parts[1]), _num(parts[2])
        senses = _senses(data[offset : offset + length].decode("utf-8", "replace"))
        if senses:
            out[parts[0].lower()] = senses
    for word, translations in FUNCTION_WORDS[lang].items():
        out[word] = translations.replace("_", " ").split("|")
    return out


# The commonest English function words, which the dictionaries translate badly or
# not at all (general knowledge of the languages; alternatives separated by "|").
_FW_EN = (
    "the a and or is are you your i me my to of in on for with without not no all now "
    "this that what if"
)
_FW = {
    "es": "el|la|los|las un|una y o es|está son|están tú|usted tu|su yo me|mí mi a de en en "
    "para|por con sin no no todo|todos|todas ahora este|esta ese|eso qué|lo_que si",
    "pt": "o|a|os|as um|uma e ou é|está são|estão você|tu seu|teu|sua eu me|mim meu|minha "
    "a|para de em em para|por com sem não não todo|todos|todas agora este|esta esse|isso "
    "o_que|que se",
    "it": "il|la|lo|i|le un|una e o è sono tu|voi tuo|tua|vostro io mi|me mio|mia a di in su "
    "per con senza non no tutto|tutti|tutte ora|adesso questo|questa quello|quella "
    "che_cosa|cosa se",
    "fr": "le|la|les un|une et ou est sont tu|vous ton|ta|votre|vos je me|moi mon|ma|mes à de "
    "dans sur pour avec sans ne|pas non tout|tous|toutes maintenant ce|cette cela|ça "
    "quoi|ce_que si",
    "de": "der|die|das ein|eine und oder ist sind du|Sie dein|deine|Ihr ich mich|mir mein|meine "
    "zu von|aus in auf für mit ohne nicht kein|nein alle|alles jetzt|nun dies|diese das|dass "
    "was wenn|ob",
}
FUNCTION_WORDS = {
    lang: dict(zip(_FW_EN.split(), words.split(), strict=True)) for lang, words in _FW.items()
}

_SUFFIXES = ("ies", "es", "s", "ed", "ing", "ly")


def _lookup(word: str, lex: dict[str, list[str]]) -> list[str] | None:
    low = word.lower()
    if low in lex:
        return lex[low]
    for suffix in _SUFFIXES:
        stem = low[: -len(suffix)]
        if low.endswith(suffix) and len(stem) >= 3:
            for cand in (stem, stem + "e", stem + "y"):
                if cand in lex:
                    return lex[cand]
    return None


def code_switch(text: str, lang: str, rng: np.random.Generator, p: float = 0.85) -> str:
    """``text`` with each word found in the ``lang`` dictionary replaced, with
    probability ``p``, by one of its first two translations (case of the first
    letter kept). Words not in the dictionary stay English."""
    lex = lexicon(lang)

    def swap(m: re.Match[str]) -> str:
        word = m.group(0)
        options = _lookup(word, lex)
        if not options or rng.random() > p:
            return word
        out = options[int(rng.integers(min(2, len(options))))]
        return out[:1].upper() + out[1:] if word[:1].isupper() else out

    return _WORD.sub(swap, text)


def translated_rows(
    texts: list[str], labels: list[int], n: int, seed: int
) -> tuple[list[str], list[int]]:
    """``n`` rows drawn from ``texts`` (short ones, classes as they come), each
    rewritten into one of the five languages by :func:`code_switch`."""
    rng = np.random.default_rng(seed)
    pool = [i for i, t in enumerate(texts) if 10 <= len(t) <= 600]
    langs = list(LANGS)
    out_texts, out_labels = [], []
    for k in range(n):
        i = pool[int(rng.integers(len(pool)))]
        out_texts.append(code_switch(texts[i], langs[k % len(langs)], rng))
        out_labels.append(labels[i])
    return out_texts, out_labels
