"""Content scanners: operator deny lists and a profanity check.

:class:`DenyListScanner` matches an operator's keywords and topic phrases
(whole words, case-insensitive, Unicode-aware; compiled once into one trie
regex) and regexes (compiled once; patterns with nested unbounded quantifiers
such as ``(a+)+`` are rejected, since they can backtrack catastrophically).
Per-tenant lists are separate instances: the pipeline picks one by tenant.

:class:`ProfanityScanner` uses the word list that ships with
``better-profanity`` (offline, MIT licensed) with its own tokeniser instead of
the library's matcher, which takes ~200-350 ms per 2,000 characters. Tokens
are normalised for leetspeak (``sh1t``, ``a$$``, ``f*ck``) and stretched
letters (``fuuuck``) and looked up in a set: whole words only, so
"Scunthorpe", "assessment" and "cocktail" never match. Words of that list that
are ordinary, clinical or identity terms ("god", "kill", "organ", "gay") are
left out by default.
"""

from __future__ import annotations

import functools
import importlib.util
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from bastion.guard.base import Finding, ScanContext

__all__ = ["DEFAULT_ALLOW", "MILD", "DenyListScanner", "ProfanityScanner", "Topic"]


@dataclass(frozen=True, slots=True)
class Topic:
    """A named deny-list topic: any of its keywords or phrases matches it."""

    name: str
    phrases: tuple[str, ...]


def _norm_phrase(phrase: str) -> str:
    return " ".join(phrase.lower().split())


def _trie_regex(phrases: Iterable[str]) -> re.Pattern[str] | None:
    """One whole-word, case-insensitive regex for ``phrases`` (a trie, so it stays fast)."""
    trie: dict[str, dict[str, object]] = {}
    for phrase in phrases:
        node = trie
        for ch in phrase:
            node = node.setdefault(ch, {})  # type: ignore[assignment]
        node[""] = {}
    if not trie:
        return None

    def emit(node: dict[str, dict[str, object]]) -> str:
        alts = [
            (r"\s+" if ch == " " else re.escape(ch)) + emit(child)  # type: ignore[arg-type]
            for ch, child in sorted(node.items())
            if ch
        ]
        if not alts:
            return ""
        if "" not in node and len(alts) == 1:
            return alts[0]
        return "(?:" + "|".join(alts) + (")?" if "" in node else ")")

    return re.compile(r"(?<!\w)" + emit(trie) + r"(?!\w)")


@functools.lru_cache(maxsize=256)
def _ignorecase(pattern: re.Pattern[str]) -> re.Pattern[str]:
    return re.compile(pattern.pattern, pattern.flags | re.IGNORECASE)


def _finditer_ci(pattern: re.Pattern[str], text: str) -> Iterator[re.Match[str]]:
    """Case-insensitive matches of a lower-case ``pattern`` (matching on ``text.lower()``
    is several times faster than ``re.IGNORECASE``; spans stay valid when lengths agree)."""
    low = text.lower()
    if len(low) == len(text):
        return pattern.finditer(low)
    return _ignorecase(pattern).finditer(text)


def _risky(pattern: str) -> bool:
    """Whether ``pattern`` repeats a group that itself holds an unbounded quantifier."""
    stack: list[bool] = [False]
    i, n = 0, len(pattern)
    while i < n:
        ch = pattern[i]
        if ch == "\\":
            i += 2
            continue
        if ch == "[":  # skip a character class
            i += 2 if pattern[i + 1 : i + 2] == "]" else 1
            while i < n and pattern[i] != "]":
                i += 2 if pattern[i] == "\\" else 1
        elif ch == "(":
            stack.append(False)
        elif ch == ")" and len(stack) > 1:
            inner = stack.pop()
            if inner and pattern[i + 1 : i + 2] in ("*", "+", "{"):
                return True
            stack[-1] = stack[-1] or inner
        elif ch in "*+" or (ch == "{" and re.match(r"\{\d*,\}", pattern[i:])):
            stack[-1] = True
        i += 1
    return False


MAX_PHRASE = 256
_RegexSpec = str | re.Pattern[str] | tuple[str, "str | re.Pattern[str]"]


class DenyListScanner:
    """Operator deny list: keywords, regexes and topics; findings ``deny:<label>``."""

    def __init__(
        self,
        keywords: Iterable[str] = (),
        regexes: Iterable[_RegexSpec] | Mapping[str, str | re.Pattern[str]] = (),
        topics: Iterable[Topic] | Mapping[str, Iterable[str]] = (),
        *,
        score: float = 1.0,
        regex_flags: int = re.IGNORECASE,
        name: str = "deny_list",
    ) -> None:
        """Compile the lists once; raise ``ValueError`` for a bad or risky regex.

        ``regexes`` is a mapping of label to pattern, or patterns and
        ``(label, pattern)`` pairs (an unlabelled pattern is ``regex<i>``).
        String patterns are compiled with ``regex_flags``.
        """
        self.name = name
        self.score = score
        self._labels: dict[str, str] = {}
        for kw in keywords:
            if key := _norm_phrase(kw):
                self._labels[key] = key
        items = (
            topics.items() if isinstance(topics, Mapping) else ((t.name, t.phrases) for t in topics)
        )
        for topic, phrases in items:
            for phrase in phrases:
                if key := _norm_phrase(phrase):
                    self._labels[key] = topic
        if any(len(key) > MAX_PHRASE for key in self._labels):
            raise ValueError(f"deny-list keywords and phrases are limited to {MAX_PHRASE} chars")
        self._words = _trie_regex(self._labels)
        specs = regexes.items() if isinstance(regexes, Mapping) else regexes
        self._regexes: list[tuple[str, re.Pattern[str]]] = []
        for i, spec in enumerate(specs):
            label, pat = spec if isinstance(spec, tuple) else (f"regex{i}", spec)
            if isinstance(pat, str):
                if _risky(pat):
                    raise ValueError(f"deny-list regex {label!r} may backtrack catastrophically")
                try:
                    pat = re.compile(pat, regex_flags)
                except re.error as exc:
                    raise ValueError(f"deny-list regex {label!r} is invalid: {exc}") from None
            self._regexes.append((label, pat))

    def scan(self, text: str, ctx: ScanContext) -> list[Finding]:
        """One finding per keyword, phrase or regex match, with its span."""
        out: list[Finding] = []
        if self._words is not None:
            for m in _finditer_ci(self._words, text):
                found = text[m.start() : m.end()]
                label = self._labels.get(_norm_phrase(found), found)
                out.append(self._finding(label, m.start(), m.end(), "keyword"))
        for label, pat in self._regexes:
            for m in pat.finditer(text):
                if m.end() > m.start():
                    out.append(self._finding(label, m.start(), m.end(), "regex"))
        return out

    def _finding(self, label: str, start: int, end: int, how: str) -> Finding:
        return Finding(self.name, f"deny:{label}", self.score, start, end, "DENY", f"{how} {label}")


# --- profanity ---------------------------------------------------------------


def _words(text: str) -> frozenset[str]:
    return frozenset(w.strip() for w in text.split(",") if w.strip())


# Words of better-profanity's list that are everyday, clinical, historical or
# identity terms: matching them would flag ordinary requests.
DEFAULT_ALLOW: frozenset[str] = _words(
    "anal, anus, areole, arian, aryan, bondage, breasts, crotch, cum, cow girl, cow girls,"
    "cowgirl, cowgirls, dink, dinks, dong, drunk, dummy, enlargement, erect, erection, extacy,"
    "extasy, facial, fanny, fat, flange, floozy, fondle, foobar, foreskin, fubar, gae, gai,"
    "ganja, gay, gays, glans, god, gonad, gonads, guido, hebe, hemp, heroin, herp, herpes,"
    "hitler, hiv, hoar, homey, homo, hooch, hookah, hump, inbred, kill, knob, kondum, kondums,"
    "labia, lech, len, leper, lesbians, lmao, lmfao, loin, loins, lube, lust, lusting, lusty,"
    "masochist, massa, maxi, menses, menstruate, menstruation, meth, murder, naked, napalm,"
    "nappy, nazi, nazism, niggle, nimrod, ninny, nipple, nipples, nude, omg, opiate, opium,"
    "oral, orally, organ, ovary, ovum, ovums, paddy, pastie, pasty, pawn, pcp, pee, penetrate,"
    "penetration, penial, penile, penis, perversion, peyote, phalli, phallic, pinko, playboy,"
    "pms, pollock, pot, potty, prig, prude, pubic, pubis, punky, queer, queers, quicky, racy,"
    "rectal, rectum, rectus, reich, revue, rum, rump, ruski, sadism, sadist, sandbar, scantily,"
    "screw, screwed, screwing, seaman, seamen, seduce, semen, sex, sexual, sissy, slave, sleaze,"
    "sleazy, slope, snatch, sniper, snuff, sodom, souse, soused, sperm, steamy, stoned, strip,"
    "stroke, stupid, suck, sucked, sucking, tampon, tawdry, teat, teste, testee, testes,"
    "testical, testicle, testis, thrust, thug, tinkle, tit, titi, toke, toots, tramp,"
    "transsexual, trashy, tush, ugly, undies, unwed, urinal, urine, uterus, uzi, vagina, valium,"
    "virgin, vixen, vodka, vomit, voyeur, vulgar, vulva, wad, wang, weed, weenie, weiner,"
    "weirdo, whiz, willies, willy, womb, woody, xx, yury"
)
# Mild words: found, but with a lower score.
MILD: frozenset[str] = _words(
    "crap, damn, hell, he11, fart, poop, jerk, moron, doofus, dopey, dumbass, wtf, stfu, gtfo,"
    "piss, pissed, pissing, bloody, bimbo, turd"
)
_LEET = str.maketrans("@4013$57+!", "aaoiesstti")
_TOKEN = re.compile(r"[\w@$*!+]+(?:[-.][\w@$*!+]+)*")
_RUN3 = re.compile(r"(.)\1{2,}")
_SEP = re.compile(r"[-._]")


@functools.cache
def _wordlist() -> tuple[str, ...]:
    """better-profanity's word list, read from the installed package (not imported)."""
    spec = importlib.util.find_spec("better_profanity")
    if spec is None or spec.origin is None:
        raise RuntimeError("ProfanityScanner needs the better-profanity package")
    path = Path(spec.origin).parent / "profanity_wordlist.txt"
    return tuple(w.strip().lower() for w in path.read_text("utf-8").splitlines() if w.strip())


class ProfanityScanner:
    """Profanity and slurs, whole-word with leetspeak; findings ``profanity`` with spans."""

    name: str

    def __init__(
        self,
        *,
        extra_words: Iterable[str] = (),
        allow_words: Iterable[str] = (),
        default_allow: bool = True,
        score: float = 0.9,
        mild_score: float = 0.5,
        name: str = "toxicity",
    ) -> None:
        """Configure the list; the word list itself is loaded on the first scan."""
        self.name = name
        self.score, self.mild_score = score, mild_score
        self._extra = tuple(w.lower() for w in extra_words)
        allow = {w.lower() for w in allow_words}
        self._allow = allow | DEFAULT_ALLOW if default_allow else allow
        self._index: dict[str, str] | None = None  # plain words
        self._leet: dict[str, str] = {}  # leet-normalised forms, for tokens with leet chars
        self._phrases: re.Pattern[str] | None = None

    def _load(self) -> dict[str, str]:
        words = [w for w in (*_wordlist(), *self._extra) if w not in self._allow]
        index: dict[str, str] = {}
        leet: dict[str, str] = {}
        for w in words:
            if " " not in w:
                index.setdefault(w, w)
                leet.setdefault(w.translate(_LEET), w)
                leet.setdefault(_SEP.sub("", w).translate(_LEET), w)
        leet.update(index)
        self._leet = leet  # built whole, then published: safe for concurrent first scans
        self._phrases = _trie_regex({_norm_phrase(w) for w in words if " " in w})
        self._index = index
        return index

    def scan(self, text: str, ctx: ScanContext) -> list[Finding]:
        """One finding per profane word or phrase."""
        index = self._index if self._index is not None else self._load()
        # Fast pass over the distinct tokens; positions are only computed on a hit.
        low = text.lower()
        hit = any(self._token(tok, 0, index) for tok in set(_TOKEN.findall(low)))
        out: list[Finding] = []
        if hit:
            for m in _TOKEN.finditer(low if len(low) == len(text) else text):
                out.extend(self._token(m.group().lower(), m.start(), index))
        if self._phrases is not None:
            for m in _finditer_ci(self._phrases, text):
                phrase = _norm_phrase(text[m.start() : m.end()])
                out.append(self._finding(phrase, m.start(), m.end()))
            out.sort(key=lambda f: f.start)
        return out

    def _token(self, tok: str, start: int, index: dict[str, str]) -> list[Finding]:
        """Findings for one lower-cased token starting at ``start``."""
        if tok.isalpha():
            if (word := index.get(tok)) is not None:
                return [self._finding(word, start, start + len(tok))]
            if len(tok) < 4 or not _RUN3.search(tok):
                return []
        elif tok.isdigit():
            return []
        # Leetspeak, stretched letters or separators: the slow path.
        core = tok.rstrip("!*+.").lstrip("!*+")
        start += tok.index(core) if core else 0
        if (word := self._lookup(core)) is not None:
            return [self._finding(word, start, start + len(core))]
        parts = _SEP.split(core)
        if len(parts) < 2:
            return []
        if all(len(p) == 1 for p in parts) and (word := self._lookup("".join(parts))):
            return [self._finding(word, start, start + len(core))]  # "f-u-c-k"
        found: list[Finding] = []
        for part in parts:
            if (word := self._lookup(part)) is not None:
                found.append(self._finding(word, start, start + len(part)))
            start += len(part) + 1
        return found

    def _lookup(self, tok: str) -> str | None:
        """The listed word ``tok`` spells, through leetspeak, stretching and ``*``."""
        if tok.isalpha():  # no leet characters: plain words only ("sob" is not "s0b")
            index, cands = self._index or {}, [tok]
        elif any(c.isalpha() for c in tok):  # numbers like 455 are not "ass"
            index, cands = self._leet, [tok.translate(_LEET)]
            if "@" in tok:
                cands.append(tok.replace("@", "o").translate(_LEET))
        else:
            return None
        for c in list(cands):
            if _RUN3.search(c):
                cands += [_RUN3.sub(r"\1\1", c), _RUN3.sub(r"\1", c)]
        for c in cands:
            if (word := index.get(c)) is not None:
                return word
            if "*" in c and c.count("*") <= len(c) // 2 and len(c) >= 3:
                pat = re.compile(re.escape(c).replace(r"\*", "[a-z]"))
                for w in index:
                    if len(w) == len(c) and pat.fullmatch(w):
                        return index[w]
        return None

    def _finding(self, word: str, start: int, end: int) -> Finding:
        score = self.mild_score if word in MILD else self.score
        return Finding(self.name, "profanity", score, start, end, "PROFANITY", f"profanity: {word}")
