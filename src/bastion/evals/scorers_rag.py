"""RAG scorers: retrieval quality, citation correctness, groundedness, answer relevance.

* ``recall_at_k``, ``mrr``, ``ndcg``: the ranking is the document ids of
  ``output.retrieved`` in order (a repeated id counts at its first position),
  the judgements are ``case.relevant``; the metrics are those of
  :mod:`bastion.rag.evaluation` (trec_eval definitions), cut at ``k``.
* ``citations``: the share of the answer's citations that are supported
  (``support >= min_support``, or Bastion's ``supported`` flag when a
  citation carries no ``support``) and, when the case has relevance
  judgements, point at a relevant document.
* ``groundedness``: the share of the answer's claims (sentences with at
  least three content terms) supported by the retrieved context: Bastion's
  own grounding report when the output has one, else computed with
  :func:`bastion.rag.answer.cite` over ``output.retrieved`` texts, each
  claim attributed to the chunk that supports it best.
* ``answer_relevance``: the share of the question's content terms (stemmed,
  stop words dropped, :mod:`bastion.rag.lexical`) that the answer uses. A
  cheap, deterministic proxy; the ``judge`` scorer is the precise option.

Continuous scores pass a case when they reach the scorer's ``threshold``
(``passed`` is None without one).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from bastion.evals.scorers import BaseScorer, Unscorable
from bastion.evals.suite import ScorerSpec
from bastion.evals.types import JSON, Case, Output, Score
from bastion.rag.answer import Context, Source, cite
from bastion.rag.evaluation import mrr_at_k, ndcg_at_k, recall_at_k
from bastion.rag.lexical import tokens
from bastion.rag.ports import ChunkView
from bastion.rag.retrieve import Result

__all__ = [
    "RAG_SCORERS",
    "AnswerRelevanceScorer",
    "CitationScorer",
    "GroundednessScorer",
    "RetrievalScorer",
    "context_of",
    "ranking_of",
]

_MARKS = re.compile(r"\[\d{1,3}\]")


def ranking_of(retrieved: Sequence[JSON]) -> list[str]:
    """The document ids of ``retrieved`` in order, first occurrence only."""
    ids = (r.get("document_id") for r in retrieved if isinstance(r, dict))
    return list(dict.fromkeys(str(d) for d in ids if d is not None and d != ""))


def _qrels(case: Case) -> Mapping[str, int]:
    if not any(grade > 0 for grade in case.relevant.values()):
        raise Unscorable("no relevance judgements for this case")
    return case.relevant


class RetrievalScorer(BaseScorer):
    """``recall_at_k`` / ``mrr`` / ``ndcg`` of the retrieved documents, cut at ``k``."""

    METRICS: dict[str, Callable[[Sequence[str], Mapping[str, int], int], float]] = {
        "recall_at_k": recall_at_k,
        "mrr": mrr_at_k,
        "ndcg": ndcg_at_k,
    }

    def __init__(self, spec: ScorerSpec) -> None:
        super().__init__(spec)
        self.metric = self.METRICS[spec.type]

    async def _score(self, case: Case, output: Output) -> Score:
        qrels = _qrels(case)
        ranking = ranking_of(output.retrieved)
        value = self.metric(ranking, qrels, self.spec.k)
        found = [d for d in ranking[: self.spec.k] if qrels.get(d, 0) > 0]
        return self.proportion(value, None, k=self.spec.k, retrieved=len(ranking), relevant=found)


def _support_of(citation: Mapping[str, Any], min_support: float) -> bool | None:
    support = citation.get("support")
    if isinstance(support, int | float) and not isinstance(support, bool):
        return float(support) >= min_support
    supported = citation.get("supported")
    return supported if isinstance(supported, bool) else None


class CitationScorer(BaseScorer):
    """Share of citations that are supported and (with judgements) on a relevant document."""

    async def _score(self, case: Case, output: Output) -> Score:
        if not output.text.strip():
            raise Unscorable("no answer to check")
        citations = [c for c in output.citations if isinstance(c, dict)]
        if not citations:
            return self.proportion(0.0, "the answer cites nothing", citations=0)
        relevant = {doc for doc, grade in case.relevant.items() if grade > 0}
        good = unsupported = off_target = 0
        for number, citation in enumerate(citations, start=1):
            ok = _support_of(citation, self.spec.min_support)
            if ok is None:
                raise Unscorable(f"citation {number} has neither 'support' nor 'supported'")
            on_target = not relevant or str(citation.get("document_id", "")) in relevant
            unsupported += not ok
            off_target += not on_target
            good += ok and on_target
        total = len(citations)
        problems = []
        if unsupported:
            problems.append(f"{unsupported} of {total} unsupported")
        if off_target:
            problems.append(f"{off_target} of {total} cite a document not judged relevant")
        return self.proportion(
            good / total,
            "; ".join(problems) or None,
            citations=total,
            unsupported=unsupported,
            off_target=off_target,
        )


def context_of(retrieved: Sequence[JSON]) -> Context:
    """Numbered sources (``[1]``, ``[2]``...) from retrieved dicts that carry ``text``."""
    sources: list[Source] = []
    for r in retrieved:
        text = r.get("text") if isinstance(r, dict) else None
        if not isinstance(text, str) or not text.strip():
            continue
        view = ChunkView(
            chunk_id=str(r.get("chunk_id") or ""),
            document_id=str(r.get("document_id") or ""),
            ordinal=0,
            text=text,
            tokens=0,
            metadata={},
            source=str(r.get("source") or ""),
            title=str(r.get("title") or ""),
            version=0,
            updated_at=0.0,
            document_metadata={},
        )
        result = Result(chunk=view, score=0.0, collection=str(r.get("collection") or ""))
        sources.append(Source(len(sources) + 1, result))
    return Context(sources, 0)


def _reported(grounding: JSON | None) -> list[tuple[str, bool]] | None:
    """Bastion's per-claim verdicts from ``bastion.grounding``; None when absent or malformed."""
    sentences = grounding.get("sentences") if isinstance(grounding, dict) else None
    if not isinstance(sentences, list):
        return None
    out: list[tuple[str, bool]] = []
    for s in sentences:
        if not isinstance(s, dict) or not isinstance(s.get("supported"), bool):
            return None
        if s.get("claim") is False:
            continue
        out.append((str(s.get("text", "")), s["supported"]))
    return out


class GroundednessScorer(BaseScorer):
    """Share of the answer's claims supported by the retrieved context."""

    async def _score(self, case: Case, output: Output) -> Score:
        if not output.text.strip():
            raise Unscorable("no answer to check")
        verdicts = _reported(output.grounding)
        origin = "bastion"
        if verdicts is None:
            context = context_of(output.retrieved)
            if not context.sources:
                raise Unscorable("no retrieved context to check the answer against")
            answer = _MARKS.sub(" ", output.text)
            grounding = cite(answer, context, min_support=self.spec.min_support)
            verdicts = [(s.text, s.supported) for s in grounding.sentences if s.claim]
            origin = "computed"
        if not verdicts:
            return self.proportion(1.0, "no claims to check", claims=0, unsupported=0, via=origin)
        bad = [text for text, ok in verdicts if not ok]
        explanation = None
        if bad:
            first = bad[0] if len(bad[0]) <= 120 else bad[0][:119] + "…"
            explanation = f"{len(bad)} of {len(verdicts)} claims unsupported, e.g. {first!r}"
        return self.proportion(
            (len(verdicts) - len(bad)) / len(verdicts),
            explanation,
            claims=len(verdicts),
            unsupported=len(bad),
            via=origin,
        )


class AnswerRelevanceScorer(BaseScorer):
    """Share of the question's content terms the answer covers (a lexical proxy)."""

    async def _score(self, case: Case, output: Output) -> Score:
        question = set(tokens(case.prompt_text()))
        if not question:
            raise Unscorable("the question has no content terms to match")
        answer = set(tokens(output.text))
        covered = question & answer
        missing = sorted(question - answer)
        explanation = None
        if missing:
            explanation = f"answer does not use: {', '.join(missing[:10])}"
        return self.proportion(
            len(covered) / len(question), explanation, terms=len(question), covered=len(covered)
        )


RAG_SCORERS: dict[str, Callable[[ScorerSpec], BaseScorer]] = {
    "recall_at_k": RetrievalScorer,
    "mrr": RetrievalScorer,
    "ndcg": RetrievalScorer,
    "citations": CitationScorer,
    "groundedness": GroundednessScorer,
    "answer_relevance": AnswerRelevanceScorer,
}
"""The RAG scorer class of each scorer type."""
