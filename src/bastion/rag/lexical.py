"""Lexical analysis for BM25: the one analyser both storage backends index with.

Lower-cased alphanumeric tokens (Unicode letters and digits), English stop
words removed, Snowball (Porter 2) stems from PyStemmer. Chunks are analysed
once at ingestion and stored as ``{term: count}``; queries are analysed the
same way and keep their term counts (query-term frequency matters on long
queries). Backends never tokenise: they receive terms, so the embedded index
and PostgreSQL score identically.
"""

from __future__ import annotations

import re
import threading
from collections import Counter
from functools import lru_cache
from typing import Any

from bastion.core.errors import UpstreamConnectError

_TOKEN = re.compile(r"[^\W_]+", re.UNICODE)
MAX_TERM = 40  # longer "words" (hashes, base64) are not useful terms

# The classic English stop list (Lucene's StandardAnalyzer words plus common
# function words), kept small: content words like "flow" or "high" stay.
_STOP = """
a about above after again against all am an and any are as at be because been before
being below between both but by can could did do does doing down during each few for
from further had has have having he her here hers herself him himself his how i if
in into is it its itself just me more most my myself no nor not now of off on once
only or other our ours ourselves out over own same she should so some such than that
the their theirs them themselves then there these they this those through to too
under until up very was we were what when where which while who whom why will with
would you your yours yourself yourselves also may might must shall us been upon s t
"""
STOPWORDS = frozenset(_STOP.split())


class _Stemmer:
    """PyStemmer's English stemmer, one instance per thread (it is not thread-safe)."""

    def __init__(self) -> None:
        self._local = threading.local()

    def get(self) -> Any:
        stemmer = getattr(self._local, "stemmer", None)
        if stemmer is None:
            try:
                import Stemmer
            except ImportError as exc:  # pragma: no cover - the rag extra is missing
                raise UpstreamConnectError(
                    "RAG needs PyStemmer; install Bastion's `rag` extra"
                ) from exc
            stemmer = Stemmer.Stemmer("english")
            self._local.stemmer = stemmer
        return stemmer


_STEMMER = _Stemmer()


@lru_cache(maxsize=200_000)
def stem(word: str) -> str:
    """The Snowball stem of a lower-cased word (cached: vocabularies are small)."""
    result: str = _STEMMER.get().stemWord(word)
    return result


def tokens(text: str) -> list[str]:
    """Analysed terms of ``text`` in order (stop words dropped, stemmed)."""
    return [
        stem(w) for w in _TOKEN.findall(text.lower()) if w not in STOPWORDS and len(w) <= MAX_TERM
    ]


def analyze(text: str) -> dict[str, int]:
    """``{term: count}`` of ``text``."""
    return dict(Counter(tokens(text)))
