"""The NER scanner (optional ``ner`` extra): typed spans, hard negatives, redaction, errors.

Skipped where presidio-analyzer is not installed, except in CI (``CI=true``),
where the extra is installed and a missing one must fail loudly.
"""

from __future__ import annotations

import importlib.util
import os
import threading

import pytest

if os.environ.get("CI") != "true":
    pytest.importorskip("presidio_analyzer")

from bastion.config.schema import GuardPipelineConfig, ScannerConfig
from bastion.core.errors import Unsupported
from bastion.guard import ner
from bastion.guard.base import ScanContext, Scanner
from bastion.guard.ner import ENTITIES, NerScanner, NerUnavailable, chunks
from bastion.guard.pipeline import Pipeline, Redactions
from bastion.guard.registry import build_scanner

CTX = ScanContext("input")
SCANNER = NerScanner()


def found(
    text: str, scanner: NerScanner = SCANNER, threshold: float = 0.5
) -> list[tuple[str, str]]:
    return [
        (f.entity, text[f.start : f.end]) for f in scanner.scan(text, CTX) if f.score >= threshold
    ]


def test_is_a_scanner() -> None:
    scanner: Scanner = SCANNER
    assert scanner.name == "ner"
    assert SCANNER.scan("", CTX) == []
    assert SCANNER.scan("1234 5678 -- 42", CTX) == []
    f = SCANNER.scan("Yesterday Maria Garcia called.", CTX)[0]
    assert (f.scanner, f.category, f.entity, f.start, f.end) == ("ner", "PERSON", "PERSON", 10, 22)
    assert f.score == pytest.approx(0.85)  # Presidio's SpacyRecognizer score


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "John Smith moved from Paris to Berlin to work for Siemens AG.",
            [
                ("PERSON", "John Smith"),
                ("LOCATION", "Paris"),
                ("LOCATION", "Berlin"),
                ("ORGANIZATION", "Siemens AG"),
            ],
        ),
        (
            "Wei Chen and Carlos Garcia met at Deutsche Bank in Frankfurt.",
            [
                ("PERSON", "Wei Chen"),
                ("PERSON", "Carlos Garcia"),
                ("ORGANIZATION", "Deutsche Bank"),
                ("LOCATION", "Frankfurt"),
            ],
        ),
        (
            "Contact: Sarah O'Connor, Acme Corp, Dublin",
            [("PERSON", "Sarah O'Connor"), ("ORGANIZATION", "Acme Corp"), ("LOCATION", "Dublin")],
        ),
        (
            "We moved here from Toronto, Canada in 2019.",
            [("LOCATION", "Toronto"), ("LOCATION", "Canada")],
        ),
        # FAC is a LOCATION too
        (
            "Dr. Aisha Patel works at Mount Sinai Hospital in New York.",
            [
                ("PERSON", "Aisha Patel"),
                ("LOCATION", "Mount Sinai Hospital"),
                ("LOCATION", "New York"),
            ],
        ),
        # a name that opens a sentence and that the tagger calls a proper noun keeps its score
        ("John moved to Paris last year.", [("PERSON", "John"), ("LOCATION", "Paris")]),
        (
            "Apple reported record revenue in Cupertino.",
            [("ORGANIZATION", "Apple"), ("LOCATION", "Cupertino")],
        ),
    ],
)
def test_entities_with_spans_and_types(text: str, expected: list[tuple[str, str]]) -> None:
    assert found(text) == expected


def test_offsets_index_the_given_text() -> None:
    text = "Notes\n\n  Meeting with Ada Lovelace in London.\n"
    for f in SCANNER.scan(text, CTX):
        assert text[f.start : f.end] in ("Ada Lovelace", "London")
        assert text[f.start : f.end] == text[f.start : f.end].strip()


@pytest.mark.parametrize(
    "text",
    [
        "Apple pie recipe: mix apples and sugar.",  # sentence-initial capital, not a name
        "Shipped on time.\n- Next steps: review the queue.",
        "please review the list of fruits, prices and dates before we ship the new build",
        "the quick brown fox jumps over the lazy dog while the server restarts",
        "def get_user(name):\n    return db.query(User).filter_by(name=name).first()",
        "for (let i = 0; i < items.length; i++) { console.log(items[i].name); }",
        "import numpy as np\nx = np.zeros((3, 3))\nprint(x.sum())",
        "Summary: Refactor the cache layer and add retries.",
    ],
)
def test_hard_negatives(text: str) -> None:
    assert found(text) == []


def test_weak_findings_are_scored_low_not_dropped() -> None:
    [f] = SCANNER.scan("Apple pie recipe: mix apples and sugar.", CTX)
    assert (f.entity, f.start, f.end) == ("ORGANIZATION", 0, 5)
    assert f.score == pytest.approx(0.85 * 0.4)
    assert "sentence opener" in f.reason


def test_entities_subset() -> None:
    only = NerScanner(entities=["PERSON"])
    assert found("Ada Lovelace lived in London.", only) == [("PERSON", "Ada Lovelace")]
    with pytest.raises(ValueError, match="unknown NER entities: EMAIL"):
        NerScanner(entities=["PERSON", "EMAIL"])
    assert set(ENTITIES) == {"PERSON", "LOCATION", "ORGANIZATION"}


def test_redaction_through_a_pipeline() -> None:
    cfg = GuardPipelineConfig(
        input=[
            ScannerConfig(type="pii", action="redact"),
            ScannerConfig(type="ner", action="redact"),
        ]
    )
    pipeline = Pipeline("ner", cfg)
    red = Redactions()
    text = "John Smith from Acme Corp flew to Berlin. Write to ann@example.org. John Smith agreed."
    verdict = pipeline.scan(text, "input", CTX, red)
    assert verdict.action == "redact"
    assert verdict.text == (
        "<PERSON_1> from <ORGANIZATION_1> flew to <LOCATION_1>. Write to <EMAIL_1>. "
        "<PERSON_1> agreed."
    )
    red.mark_restorable()
    assert red.restore("Hello <PERSON_1> in <LOCATION_1>") == "Hello John Smith in Berlin"


def test_threshold_applies_to_weak_findings() -> None:
    strict = Pipeline("t", GuardPipelineConfig(input=[ScannerConfig(type="ner", action="block")]))
    text = "Apple pie recipe: mix apples and sugar."
    assert strict.scan(text, "input", CTX).action == "allow"
    loose = Pipeline(
        "t", GuardPipelineConfig(input=[ScannerConfig(type="ner", action="flag", threshold=0.3)])
    )
    assert loose.scan(text, "input", CTX).action == "flag"


def test_registry_builds_it() -> None:
    scanner = build_scanner(ScannerConfig(type="ner", entities=["LOCATION"]))
    assert isinstance(scanner, NerScanner)
    assert scanner.entities == ("LOCATION",)


def test_long_texts_are_chunked() -> None:
    sentence = "Ada Lovelace wrote to Charles Babbage from London about the engine. "
    text = sentence * 40
    small = NerScanner(chunk_chars=300)
    a = [(f.entity, f.start, f.end) for f in SCANNER.scan(text, CTX)]
    b = [(f.entity, f.start, f.end) for f in small.scan(text, CTX)]
    assert len(b) == 3 * 40
    assert a == b


def test_chunks_cover_the_text() -> None:
    text = ("word " * 30 + "end. ") * 20 + "\n" + "x" * 700
    pieces = list(chunks(text, 200))
    assert "".join(p for _, p in pieces) == text
    assert all(len(p) <= 200 for _, p in pieces)
    assert all(text[o : o + len(p)] == p for o, p in pieces)
    assert pieces[0][1].endswith(". ")  # cut after a sentence, not inside a word


def test_thread_safe() -> None:
    text = "Ada Lovelace met Charles Babbage in London at the Royal Society."
    expected = [(f.entity, f.start, f.end) for f in SCANNER.scan(text, CTX)]
    results: list[list[tuple[str, int, int]]] = []

    def work() -> None:
        for _ in range(5):
            results.append([(f.entity, f.start, f.end) for f in SCANNER.scan(text, CTX)])

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 20
    assert all(r == expected for r in results)


def test_missing_model_package_is_a_clear_error() -> None:
    with pytest.raises(NerUnavailable, match=r"en_core_web_nonexistent.*bastion\[ner\]"):
        NerScanner(model="en_core_web_nonexistent")
    with pytest.raises(NerUnavailable, match="not a spaCy model package name"):
        NerScanner(model="../models/en")


def test_an_installed_package_that_is_no_spacy_model() -> None:
    scanner = NerScanner(model="pytest")  # installed, so construction passes
    with pytest.raises(NerUnavailable, match="cannot load spaCy model 'pytest'"):
        scanner.scan("Ada Lovelace", CTX)


def test_missing_extra_names_it(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec

    def without_presidio(name: str, package: str | None = None) -> object:
        return None if name == "presidio_analyzer" else real(name, package)

    monkeypatch.setattr(ner.importlib.util, "find_spec", without_presidio)
    with pytest.raises(NerUnavailable) as err:
        build_scanner(ScannerConfig(type="ner"))
    assert isinstance(err.value, Unsupported)
    assert err.value.status == 400
    assert "presidio_analyzer" in err.value.message
    assert "pip install 'bastion[ner]'" in err.value.message
