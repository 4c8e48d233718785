"""Token counters for chunking (re-exported by :mod:`bastion.rag.chunk`).

* :class:`WordPieceCounter` counts tokens of the bundled embedder's tokenizer
  (all-MiniLM-L6-v2, BERT uncased WordPiece), exactly and fast: a text's count
  is the sum of its whitespace-separated words' counts (the BERT normaliser and
  pre-tokenizer never join characters across whitespace, so the sum equals the
  tokenizer's count of the whole text), and each distinct word is counted once
  and remembered. Plain ASCII words are counted in Python by the WordPiece
  algorithm itself (:class:`_AsciiWordPiece`), others by the tokenizer in one
  batched call. The ``tokenizers`` pipeline alone manages well under the
  300,000 tokens/s per core that chunking needs; the word cache does not.
* :class:`WhitespaceCounter` counts words: cheap, for tests and as a fallback.

Both set ``additive = True``: the count of texts joined at whitespace is the
sum of their counts, which lets the chunker count each piece only once.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

from bastion.core.errors import UpstreamConnectError

# Whitespace to cut at: Unicode White_Space without the control characters
# (\x0b, \x0c, \x1c-\x1f, \x85) that the BERT normaliser deletes instead of
# treating as spaces, so cuts stay where the tokenizer also splits.
WS_CHARS = (
    " \t\n\r\u00a0\u1680"
    + "".join(chr(c) for c in range(0x2000, 0x200B))
    + "\u2028\u2029\u202f\u205f\u3000"
)
WORD = re.compile("[^" + re.escape(WS_CHARS) + "]+")
# Whitespace to Python's str.split() that the tokenizer deletes instead (see WS_CHARS).
_ODD_SPACE = re.compile("[\x0b\x0c\x1c-\x1f\x85]")
_ASCII_RUN = re.compile(r"[a-z0-9]+|[^a-z0-9]")

WORD_CACHE_SIZE = 200_000
"""Words whose counts a :class:`WordPieceCounter` remembers (the cache is emptied when full)."""


def split_words(text: str) -> list[str]:
    """``text`` cut at whitespace (:data:`WS_CHARS`), as the WordPiece pre-tokenizer cuts it."""
    return WORD.findall(text) if _ODD_SPACE.search(text) else text.split()


class TokenCounter(Protocol):
    """Counts tokens of texts, without special tokens (``[CLS]``, ``[SEP]``).

    A counter may set ``additive = True`` when the count of texts joined at
    whitespace is always the sum of their counts; the chunker then trusts
    summed counts instead of recounting each chunk.
    """

    def count(self, texts: Sequence[str]) -> list[int]:
        """Tokens of each text."""
        ...


class WhitespaceCounter:
    """Whitespace-separated words as tokens: cheap, dependency-free, for tests."""

    additive = True

    def count(self, texts: Sequence[str]) -> list[int]:
        """Words in each text."""
        return [len(t.split()) for t in texts]


class WordPieceCounter:
    """Tokens of the bundled embedder's WordPiece tokenizer (all-MiniLM-L6-v2).

    ``tokenizer_path`` (a ``tokenizer.json``) defaults to the bundled one. The
    tokenizer loads on first use; counts are without special tokens and without
    truncation. Thread-safe.
    """

    additive = True

    def __init__(self, tokenizer_path: str | Path | None = None) -> None:
        self._path = tokenizer_path
        self._tokenizer: Any = None
        self._ascii: _AsciiWordPiece | None = None
        self._lock = threading.Lock()
        self._cache: dict[str, int] = {}
        self._cache_lock = threading.Lock()

    def _load(self) -> Any:
        if self._tokenizer is not None:
            return self._tokenizer
        with self._lock:
            if self._tokenizer is None:
                from bastion.providers.models import bundled_embedder_paths, existing_file

                try:
                    from tokenizers import Tokenizer
                except ImportError as exc:
                    raise UpstreamConnectError(
                        "token counting needs tokenizers; install Bastion's `local` extra"
                    ) from exc
                path = (
                    existing_file(self._path, "tokenizer")
                    if self._path is not None
                    else bundled_embedder_paths()[1]
                )
                tokenizer = Tokenizer.from_file(str(path))
                tokenizer.no_truncation()
                tokenizer.no_padding()
                self._ascii = _AsciiWordPiece.for_tokenizer(tokenizer)
                self._tokenizer = tokenizer
        return self._tokenizer

    def count(self, texts: Sequence[str]) -> list[int]:
        """WordPiece tokens of each text (the sum of its words' remembered counts)."""
        if not texts:
            return []
        self._load()
        words = [split_words(t) for t in texts]
        with self._cache_lock:
            lookup = self._cache.__getitem__
            counts: list[int] = []
            misses: list[int] = []
            for k, ws in enumerate(words):
                try:
                    counts.append(sum(map(lookup, ws)))
                except KeyError:
                    counts.append(0)
                    misses.append(k)
            if misses:
                self._learn(set().union(*(words[k] for k in misses)))
                lookup = self._cache.__getitem__
                for k in misses:
                    counts[k] = sum(map(lookup, words[k]))
            return counts

    def _learn(self, words: set[str]) -> None:
        """Count and remember the ``words`` not in the cache (under the cache lock)."""
        cache = self._cache
        missing = [w for w in words if w not in cache]
        if len(cache) + len(missing) > WORD_CACHE_SIZE:
            cache.clear()
            missing = list(words)
        rest = missing
        if self._ascii is not None:
            fast, rest = self._ascii.count, []
            for w in missing:
                n = fast(w)
                if n is None:
                    rest.append(w)
                else:
                    cache[w] = n
        if rest:
            encodings = self._tokenizer.encode_batch(rest, add_special_tokens=False)
            cache.update(zip(rest, (len(e.ids) for e in encodings), strict=True))


class _AsciiWordPiece:
    """WordPiece counts of printable-ASCII words in Python, exactly as ``tokenizers`` counts.

    Only for the BERT uncased pipeline (``BertNormalizer`` with lowercasing,
    ``BertPreTokenizer``, ``WordPiece``): lower-case the word, split off each
    punctuation character (one token each), and count each alphanumeric run by
    greedy longest-match-first against the vocabulary (a run longer than
    ``max_input_chars_per_word``, or with no match somewhere, is one ``[UNK]``).
    Words holding an added token (``[CLS]``, ...) are left to the tokenizer.
    """

    def __init__(self, vocab: set[str], prefix: str, max_chars: int, added: list[str]) -> None:
        self.vocab = vocab
        self.prefix = prefix
        self.max_chars = max_chars
        self.longest = max(map(len, vocab), default=1)
        self.added = re.compile("|".join(map(re.escape, added))) if added else None

    @classmethod
    def for_tokenizer(cls, tokenizer: Any) -> _AsciiWordPiece | None:
        """The fast path for ``tokenizer``, or ``None`` when its pipeline is not BERT uncased."""
        normalizer, pre, model = tokenizer.normalizer, tokenizer.pre_tokenizer, tokenizer.model
        if (
            type(normalizer).__name__ != "BertNormalizer"
            or not normalizer.lowercase
            or type(pre).__name__ != "BertPreTokenizer"
            or type(model).__name__ != "WordPiece"
        ):
            return None
        added = [t.content for t in tokenizer.get_added_tokens_decoder().values()]
        return cls(
            set(tokenizer.get_vocab()),
            model.continuing_subword_prefix,
            model.max_input_chars_per_word,
            added,
        )

    def count(self, word: str) -> int | None:
        """Tokens of ``word``, or ``None`` when it is not plain printable ASCII."""
        if not (word.isascii() and word.isprintable()):
            return None
        if self.added is not None and self.added.search(word):
            return None
        lower = word.lower()
        vocab = self.vocab
        if lower.isalnum() and len(lower) <= self.max_chars and lower in vocab:
            return 1
        n = 0
        for run in _ASCII_RUN.findall(lower):
            n += 1 if len(run) == 1 or run in vocab else self._greedy(run)
        return n

    def _greedy(self, run: str) -> int:
        """Greedy longest-match-first pieces of an alphanumeric run (``[UNK]`` counts 1)."""
        length = len(run)
        if length > self.max_chars:
            return 1
        vocab, prefix, longest = self.vocab, self.prefix, self.longest
        start = pieces = 0
        while start < length:
            end = min(length, start + longest)
            while end > start:
                if (run[start:end] if start == 0 else prefix + run[start:end]) in vocab:
                    break
                end -= 1
            else:
                return 1  # no piece matches here: the whole run is one [UNK]
            pieces += 1
            start = end
        return pieces
