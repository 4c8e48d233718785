"""Structure-aware chunking of a :class:`~bastion.rag.extract.SourceDocument`.

A chunk never spans two sections (so never two heading paths or pages). Inside
a section the text is cut into *pieces* at paragraph breaks (blank lines),
line breaks and sentence ends (``.``, ``!`` or ``?``, optionally closed by a
quote or bracket, then whitespace and a capital letter or digit). A piece
longer than ``size`` tokens is cut at spaces into runs of words, and a single
word still too long is cut into characters. Pieces are packed greedily into
chunks of at most ``size`` tokens; a chunk that is at least half full ends
early at a paragraph break when the next paragraph would not fit whole.
Consecutive chunks of one section overlap: the next chunk starts with the
previous chunk's trailing pieces up to ``overlap`` tokens (or, when its last
piece alone is longer, with that piece's trailing words up to ``overlap``).

Every chunk is an exact slice of ``SourceDocument.text``:
``doc.text[chunk.start:chunk.end] == chunk.text`` (inner whitespace kept,
outer whitespace not part of the chunk).

**Counting.** Every piece is counted once, in one :meth:`TokenCounter.count`
call per document (plus small calls for over-long pieces and overlap tails),
and a chunk's ``tokens`` is the sum of its pieces' counts. Pieces meet at
whitespace, where WordPiece (and whitespace) counts are additive, so for the
bundled counters the sum is the exact count of the chunk text. A counter
without ``additive = True`` gets its chunks recounted, and sections with a
chunk over ``size`` are packed again with a smaller budget.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from bastion.core.errors import InvalidRequest
from bastion.rag.counters import (
    WORD,
    WS_CHARS,
    TokenCounter,
    WhitespaceCounter,
    WordPieceCounter,
)
from bastion.rag.extract import SourceDocument

__all__ = [
    "ChunkDraft",
    "TokenCounter",
    "WhitespaceCounter",
    "WordPieceCounter",
    "chunk_document",
]

_W = "[" + re.escape(WS_CHARS) + "]"
_H_CHARS = WS_CHARS.replace("\n", "")
_H = "[" + re.escape(_H_CHARS) + "]"
_CLOSE = "[\"'\u201d\u2019)\\]]"
_OPEN = "[\"'\u201c\u2018(\\[]"
# Both patterns start with a literal or a small set, which the regex engine scans for fast.
_SENTENCE_END = re.compile(
    rf"[.!?]{_CLOSE}{{0,2}}({_H}+)(?={_OPEN}{{0,2}}[A-Z0-9\u00c0-\u00d6\u00d8-\u00de])"
)
_LINE_BREAK = re.compile(rf"\n{_W}*")

CHARS_PER_TOKEN_CAP = 20
"""A piece or chunk holds at most ``size * CHARS_PER_TOKEN_CAP`` characters
(bounds chunks of text the counter sees as few tokens, e.g. over-long words)."""


def _separators(text: str, lo: int, hi: int) -> list[tuple[int, int]]:
    """Spans of whitespace in ``text[lo:hi]`` to cut at: sentence ends and line breaks."""
    cuts = [m.span(1) for m in _SENTENCE_END.finditer(text, lo, hi)]
    breaks: list[tuple[int, int]] = []
    for m in _LINE_BREAK.finditer(text, lo, hi):
        s, e = m.span()
        while s > lo and text[s - 1] in _H_CHARS:  # spaces before the line break
            s -= 1
        breaks.append((s, e))
    return sorted(cuts + breaks) if breaks else cuts


@dataclass(slots=True)
class ChunkDraft:
    """A chunk before embedding: ``text == doc.text[start:end]``."""

    text: str
    ordinal: int
    tokens: int
    heading_path: tuple[str, ...]
    page: int | None
    start: int
    end: int


class _Pieces:
    """A document's pieces as parallel lists (fast to build and to pack)."""

    __slots__ = ("ends", "glued", "para", "para_tokens", "starts", "tokens")

    def __init__(self) -> None:
        self.starts: list[int] = []
        self.ends: list[int] = []
        self.tokens: list[int] = []
        self.para: list[bool] = []  # the piece opens a paragraph
        self.glued: list[bool] = []  # no whitespace before it (a cut inside a word)
        self.para_tokens: list[int] = []  # at a paragraph's first piece: the paragraph's tokens

    def add(self, start: int, end: int, tokens: int, para: bool, glued: bool = False) -> None:
        self.starts.append(start)
        self.ends.append(end)
        self.tokens.append(tokens)
        self.para.append(para)
        self.glued.append(glued)


class _Chunker:
    def __init__(self, doc: SourceDocument, counter: TokenCounter, size: int, overlap: int):
        self.text = doc.text
        self.counter = counter
        self.size = size
        self.overlap = overlap
        self.char_cap = size * CHARS_PER_TOKEN_CAP
        self.sections = doc.sections

    def _raw_pieces(self) -> tuple[list[tuple[int, int, bool]], list[tuple[int, int]]]:
        """Pieces (start, end, opens paragraph) and each section's piece index range."""
        text = self.text
        pieces: list[tuple[int, int, bool]] = []
        ranges: list[tuple[int, int]] = []
        offset = 0
        for section in self.sections:
            body = section.text
            lo = offset + len(body) - len(body.lstrip(WS_CHARS))
            hi = offset + len(body.rstrip(WS_CHARS))
            first = len(pieces)
            pos, para = lo, True
            if lo < hi:
                for s, e in _separators(text, lo, hi):
                    if s > pos:
                        pieces.append((pos, s, para))
                        para = False
                    if text.count("\n", s, e) >= 2:
                        para = True
                    pos = e
                if pos < hi:
                    pieces.append((pos, hi, para))
            ranges.append((first, len(pieces)))
            offset += len(body) + 2
        return pieces, ranges

    def _fits(self, start: int, end: int, tokens: int) -> bool:
        return tokens <= self.size and end - start <= self.char_cap

    def _split_chars(self, start: int, end: int, tokens: int) -> list[tuple[int, int, int]]:
        """Cut one over-long word into character runs of at most ``size`` tokens.

        Each run's length is guessed from the characters per token seen so far
        (aiming at 95% of ``size``), counted, and shortened until it fits.
        """
        done: list[tuple[int, int, int]] = []
        per_token = (end - start) / max(1, tokens)
        pos = start
        while pos < end:
            guess = min(end - pos, self.char_cap, max(1, int(self.size * 0.95 * per_token)))
            while True:
                n = self.counter.count([self.text[pos : pos + guess]])[0]
                if n <= self.size or guess == 1:
                    break
                guess = max(1, min(guess - 1, int(guess * self.size * 0.95 / n)))
            done.append((pos, pos + guess, n))
            per_token = guess / max(1, n)
            pos += guess
        return done

    def _split_long(self, pieces: _Pieces, start: int, end: int, para: bool) -> None:
        """Add an over-long piece as runs of whole words (and cut words) that fit."""
        words = [m.span() for m in WORD.finditer(self.text, start, end)]
        counts = self.counter.count([self.text[a:b] for a, b in words])
        run: tuple[int, int, int] | None = None
        for (a, b), n in zip(words, counts, strict=True):
            if not self._fits(a, b, n):
                if run is not None:
                    pieces.add(*run, para)
                    para, run = False, None
                for k, (x, y, m) in enumerate(self._split_chars(a, b, n)):
                    pieces.add(x, y, m, para, glued=k > 0)
                    para = False
            elif run is None:
                run = (a, b, n)
            elif self._fits(run[0], b, run[2] + n):
                run = (run[0], b, run[2] + n)
            else:
                pieces.add(*run, para)
                para, run = False, (a, b, n)
        if run is not None:
            pieces.add(*run, para)

    def pieces(self) -> tuple[_Pieces, list[tuple[int, int]]]:
        """All pieces counted and fitting, and each section's index range into them."""
        raw, raw_ranges = self._raw_pieces()
        counts = self.counter.count([self.text[s:e] for s, e, _ in raw])
        out = _Pieces()
        ranges: list[tuple[int, int]] = []
        for lo, hi in raw_ranges:
            first = len(out.starts)
            for k in range(lo, hi):
                s, e, para = raw[k]
                if self._fits(s, e, counts[k]):
                    out.add(s, e, counts[k], para)
                else:
                    self._split_long(out, s, e, para)
            ranges.append((first, len(out.starts)))
        total = 0
        out.para_tokens = [0] * len(out.starts)
        for k in range(len(out.starts) - 1, -1, -1):
            total += out.tokens[k]
            if out.para[k]:
                out.para_tokens[k], total = total, 0
        return out, ranges

    def _tail(self, p: _Pieces, j: int, limit: int) -> tuple[int, int] | None:
        """A word-aligned suffix of piece ``j`` with 1..``limit`` tokens: (start, tokens)."""
        words = [m.start() for m in WORD.finditer(self.text, p.starts[j], p.ends[j])]
        if len(words) < 2 or limit <= 0:
            return None
        k = min(len(words) - 1, max(1, int(limit * len(words) / max(1, p.tokens[j]))))
        while k >= 1:
            start = words[-k]
            n = self.counter.count([self.text[start : p.ends[j]]])[0]
            if n <= limit:
                return (start, n) if n > 0 else None
            k = min(k - 1, int(k * limit / n))
        return None

    def _carry(self, p: _Pieces, first: int, last: int) -> tuple[int, int] | None:
        """The overlap for the chunk after pieces ``first..last``: (start offset, tokens)."""
        if self.overlap <= 0:
            return None
        start, tokens = None, 0
        j = last
        while j >= first and tokens + p.tokens[j] <= self.overlap:
            start, tokens = p.starts[j], tokens + p.tokens[j]
            j -= 1
        if j >= first and tokens * 2 < self.overlap:
            tail = self._tail(p, j, self.overlap - tokens)
            if tail is not None:
                start, tokens = tail[0], tokens + tail[1]
        return (start, tokens) if start is not None and tokens > 0 else None

    def pack(self, p: _Pieces, lo: int, hi: int, budget: int) -> list[tuple[int, int, int]]:
        """Chunks (start, end, tokens) of pieces ``lo..hi-1`` with at most ``budget`` tokens."""
        chunks: list[tuple[int, int, int]] = []
        starts, ends, tokens, para, glued = p.starts, p.ends, p.tokens, p.para, p.glued
        half = budget // 2
        carry: tuple[int, int] | None = None
        i = lo
        while i < hi:
            first = i
            if (
                carry is not None
                and carry[1] + tokens[i] <= budget
                and ends[i] - carry[0] <= self.char_cap
            ):
                start, total = carry
            else:
                start, total = starts[i], 0
            total += tokens[i]
            i += 1
            while i < hi and not glued[i]:
                t = tokens[i]
                if total + t > budget or ends[i] - start > self.char_cap:
                    break
                if para[i] and total >= half and total + p.para_tokens[i] > budget:
                    break
                total += t
                i += 1
            chunks.append((start, ends[i - 1], total))
            carry = self._carry(p, first, i - 1) if i < hi and not glued[i] else None
        return chunks


def chunk_document(
    doc: SourceDocument, counter: TokenCounter, *, size: int = 256, overlap: int = 32
) -> list[ChunkDraft]:
    """Cut ``doc`` into chunks of at most ``size`` tokens overlapping by about ``overlap``.

    Deterministic; a document without text gives no chunks. ``size`` must be
    at least 1 and ``overlap`` between 0 and ``size - 1``. A single character
    the counter sees as more than ``size`` tokens is the only thing that can
    exceed ``size``.
    """
    if size < 1:
        raise InvalidRequest(f"chunk size must be at least 1 token, not {size}", param="size")
    if not 0 <= overlap < size:
        raise InvalidRequest(
            f"chunk overlap must be between 0 and {size - 1} tokens, not {overlap}",
            param="overlap",
        )
    chunker = _Chunker(doc, counter, size, overlap)
    pieces, ranges = chunker.pieces()
    packed = [chunker.pack(pieces, lo, hi, size) for lo, hi in ranges]
    text = chunker.text
    if not getattr(counter, "additive", False):
        packed = _verified(chunker, pieces, ranges, packed)
    drafts: list[ChunkDraft] = []
    for section, chunks in zip(doc.sections, packed, strict=True):
        for start, end, tokens in chunks:
            drafts.append(
                ChunkDraft(
                    text=text[start:end],
                    ordinal=len(drafts),
                    tokens=tokens,
                    heading_path=section.heading_path,
                    page=section.page,
                    start=start,
                    end=end,
                )
            )
    return drafts


def _verified(
    chunker: _Chunker,
    pieces: _Pieces,
    ranges: list[tuple[int, int]],
    packed: list[list[tuple[int, int, int]]],
) -> list[list[tuple[int, int, int]]]:
    """Recount chunks; pack sections with a chunk over ``size`` again with a smaller budget.

    Terminates: a budget shrinks on every round and a chunk of one piece fits
    (each piece was counted alone).
    """
    text, size = chunker.text, chunker.size
    budgets = [size] * len(ranges)
    while True:
        flat = [(k, c) for k, chunks in enumerate(packed) for c in chunks]
        counts = chunker.counter.count([text[s:e] for _, (s, e, _) in flat])
        over: dict[int, int] = {}
        result: list[list[tuple[int, int, int]]] = [[] for _ in packed]
        for (k, (s, e, _)), n in zip(flat, counts, strict=True):
            result[k].append((s, e, n))
            if n > size and budgets[k] > 1:
                over[k] = max(over.get(k, 0), n - size)
        if not over:
            return result
        for k, excess in over.items():
            budgets[k] = max(1, budgets[k] - excess)
            packed[k] = chunker.pack(pieces, *ranges[k], budgets[k])
