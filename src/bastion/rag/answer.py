"""Grounded answers: context assembly, the RAG system prompt, citations and their check.

* :func:`assemble` numbers the retrieved chunks as sources ``[1]``, ``[2]``…,
  drops duplicates (same text, or a chunk contained in one already taken) and
  stops at a token budget.
* :func:`system_prompt` tells the model to answer only from the sources, to
  cite them as ``[n]`` and to say so when they do not hold the answer. The
  sources are spotlighted (delimited with a random boundary) as untrusted data.
* :func:`cite` reads the answer back: every sentence that makes a claim is
  checked against the sources it cites (``explicit`` citations). Support is
  the share of the sentence's content terms (stemmed, stop words dropped)
  found in the cited chunk; a citation below ``min_support`` is marked
  unsupported. A sentence that cites nothing is attributed to the source that
  supports it best, when one does (``attributed``), else marked unsupported.
  Each citation quotes the chunk sentence that overlaps the claim most.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from bastion.guard.spotlight import delimit, instruction
from bastion.rag.lexical import tokens
from bastion.rag.retrieve import Result

NO_ANSWER = "I could not find anything relevant to this question in the documents available to you."
_SENTENCE = re.compile(r"[^.!?\n]+(?:[.!?]+|\n|$)")
_MARK = re.compile(r"\[(\d{1,3})\]")
MIN_CLAIM_TERMS = 3


@dataclass(slots=True)
class Source:
    number: int
    result: Result

    def label(self) -> str:
        c = self.result.chunk
        where = []
        page = c.metadata.get("page")
        if page:
            where.append(f"page {page}")
        heading = c.metadata.get("heading_path") or []
        if heading:
            where.append(" / ".join(heading))
        title = c.title or c.document_id
        return f"[{self.number}] {title}" + (f" ({', '.join(where)})" if where else "")


@dataclass(slots=True)
class Context:
    sources: list[Source]
    tokens: int

    def block(self) -> str:
        return "\n\n".join(f"{s.label()}\n{s.result.chunk.text}" for s in self.sources)


def assemble(
    results: Sequence[Result],
    *,
    budget_tokens: int = 2000,
    count: Callable[[str], int] | None = None,
) -> Context:
    """Numbered, de-duplicated sources in rank order, within ``budget_tokens``."""
    measure = count or (lambda text: max(1, len(text) // 4))
    taken: list[Source] = []
    used = 0
    for r in results:
        text = r.chunk.text.strip()
        if not text or any(text in s.result.chunk.text for s in taken):
            continue
        cost = r.chunk.tokens or measure(text)
        if taken and used + cost > budget_tokens:
            break
        taken.append(Source(len(taken) + 1, r))
        used += cost
    return Context(taken, used)


def system_prompt(context: Context, *, base: str | None = None) -> str:
    """The grounding instructions with the spotlighted sources."""
    block, boundary = delimit(context.block())
    lines = [
        base.strip() if base else "You answer questions from the company's documents.",
        "Answer using only the numbered sources below. After each sentence that uses a "
        "source, cite it with its number in square brackets, like [1]. If the sources do "
        "not contain the answer, say that you could not find it in the documents; do not "
        "guess.",
        instruction("delimit", boundary),
        "Sources:",
        block,
    ]
    return "\n\n".join(lines)


@dataclass(slots=True)
class Citation:
    source: int
    kind: str  # explicit | attributed
    sentence: int
    support: float
    supported: bool
    quote: str
    result: Result

    def to_json(self) -> dict[str, Any]:
        c = self.result.chunk
        return {
            "source": self.source,
            "chunk_id": c.chunk_id,
            "document_id": c.document_id,
            "collection": self.result.collection,
            "title": c.title,
            "uri": c.source,
            "page": c.metadata.get("page"),
            "heading_path": c.metadata.get("heading_path") or [],
            "quote": self.quote,
            "sentence": self.sentence,
            "kind": self.kind,
            "support": round(self.support, 3),
            "supported": self.supported,
        }


@dataclass(slots=True)
class Sentence:
    text: str
    start: int
    end: int
    claim: bool
    sources: list[int] = field(default_factory=list)
    supported: bool = True

    def to_json(self) -> dict[str, Any]:
        return {
            "text": self.text,
            "start": self.start,
            "end": self.end,
            "sources": self.sources,
            "supported": self.supported,
        }


@dataclass(slots=True)
class Grounding:
    citations: list[Citation]
    sentences: list[Sentence]

    @property
    def unsupported(self) -> int:
        return sum(1 for s in self.sentences if s.claim and not s.supported)

    def to_json(self) -> dict[str, Any]:
        return {
            "sentences": [s.to_json() for s in self.sentences if s.claim],
            "unsupported": self.unsupported,
        }


def _support(claim: set[str], chunk_terms: set[str]) -> float:
    return len(claim & chunk_terms) / len(claim) if claim else 0.0


def _quote(claim: set[str], text: str) -> str:
    best, best_score = "", -1.0
    for m in _SENTENCE.finditer(text):
        piece = m.group().strip()
        if not piece:
            continue
        score = _support(claim, set(tokens(piece))) if claim else 0.0
        if score > best_score:
            best, best_score = piece, score
    return best[:400]


def cite(answer: str, context: Context, *, min_support: float = 0.5) -> Grounding:
    """Citations of ``answer`` and a support verdict for each of its sentences."""
    by_number = {s.number: s for s in context.sources}
    terms = {
        s.number: set(tokens(s.result.chunk.text + " " + s.result.chunk.title))
        for s in context.sources
    }
    citations: list[Citation] = []
    sentences: list[Sentence] = []
    for m in _SENTENCE.finditer(answer):
        raw = m.group()
        if not raw.strip():
            continue
        numbers = [int(n) for n in _MARK.findall(raw)]
        claim = set(tokens(_MARK.sub(" ", raw)))
        sent = Sentence(raw.strip(), m.start(), m.end(), claim=len(claim) >= MIN_CLAIM_TERMS)
        index = len(sentences)
        sentences.append(sent)
        if not sent.claim:
            continue
        cited = [n for n in dict.fromkeys(numbers) if n in by_number]
        if cited:
            ok = False
            for n in cited:
                support = _support(claim, terms[n])
                good = support >= min_support
                ok = ok or good
                src = by_number[n]
                citations.append(
                    Citation(
                        n,
                        "explicit",
                        index,
                        support,
                        good,
                        _quote(claim, src.result.chunk.text),
                        src.result,
                    )
                )
                sent.sources.append(n)
            sent.supported = ok
            continue
        best_n, best = 0, 0.0
        for n in by_number:
            support = _support(claim, terms[n])
            if support > best:
                best_n, best = n, support
        if best_n and best >= min_support:
            src = by_number[best_n]
            citations.append(
                Citation(
                    best_n,
                    "attributed",
                    index,
                    best,
                    True,
                    _quote(claim, src.result.chunk.text),
                    src.result,
                )
            )
            sent.sources.append(best_n)
        else:
            sent.supported = False
    return Grounding(citations, sentences)


def relevant(
    results: Sequence[Result],
    *,
    min_similarity: float = 0.25,
    min_coverage: float = 0.5,
    query: str = "",
) -> list[Result]:
    """The results that are plausibly about the query.

    A chunk counts when its dense similarity reaches ``min_similarity`` or it
    contains at least ``min_coverage`` of the query's content terms.
    """
    q = set(tokens(query))
    keep = []
    for r in results:
        if r.vector_score is not None and r.vector_score >= min_similarity:
            keep.append(r)
            continue
        if q and _support(q, set(tokens(r.chunk.text + " " + r.chunk.title))) >= min_coverage:
            keep.append(r)
    return keep
