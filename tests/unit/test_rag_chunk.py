"""Chunking: token limits, overlap, sections, offsets, edge cases."""

from __future__ import annotations

import functools
import itertools
import random
import string
from collections.abc import Sequence
from typing import Any

import pytest

from bastion.core.errors import InvalidRequest, UpstreamConnectError
from bastion.rag import counters
from bastion.rag.chunk import (
    ChunkDraft,
    WhitespaceCounter,
    WordPieceCounter,
    chunk_document,
)
from bastion.rag.extract import Section, SourceDocument, extract_bytes

_VOCABULARY = """
the gateway routes each request to a healthy deployment while the governor keeps
budgets tenants keys and teams apart retrieval augments prompts with chunks that
were embedded by the bundled model tokenizer counts pieces once per document
"""
_WORDS = _VOCABULARY.split()


@pytest.fixture(scope="module")
def wordpiece() -> WordPieceCounter:
    counter = WordPieceCounter()
    try:
        counter.count(["probe"])
    except UpstreamConnectError as exc:  # pragma: no cover - venv without the local extra
        pytest.skip(f"bundled tokenizer unavailable: {exc}")
    return counter


@functools.cache
def _tokenizer() -> Any:
    """The bundled tokenizer loaded directly: the reference every count must match."""
    from tokenizers import Tokenizer

    from bastion.providers.models import bundled_embedder_paths

    tokenizer = Tokenizer.from_file(str(bundled_embedder_paths()[1]))
    tokenizer.no_truncation()
    tokenizer.no_padding()
    return tokenizer


def _reference(texts: Sequence[str]) -> list[int]:
    encodings = _tokenizer().encode_batch(list(texts), add_special_tokens=False)
    return [len(e.ids) for e in encodings]


def _prose(rng: random.Random, sentences: int) -> str:
    out = []
    for _ in range(sentences):
        words = rng.choices(_WORDS, k=rng.randint(4, 30))
        out.append(" ".join(words).capitalize() + rng.choice([".", ".", "!", "?"]))
    return " ".join(out)


def _paragraphs(rng: random.Random, count: int) -> str:
    return "\n\n".join(_prose(rng, rng.randint(1, 8)) for _ in range(count))


def _doc(*sections: Section) -> SourceDocument:
    return SourceDocument(id="d", title="D", source="upload:d", sections=list(sections))


def _section_spans(doc: SourceDocument) -> list[tuple[int, int]]:
    spans, offset = [], 0
    for s in doc.sections:
        spans.append((offset, offset + len(s.text)))
        offset += len(s.text) + 2
    return spans


def _check_invariants(
    doc: SourceDocument, chunks: list[ChunkDraft], size: int, counter: WordPieceCounter | None
) -> None:
    text = doc.text
    spans = _section_spans(doc)
    assert [c.ordinal for c in chunks] == list(range(len(chunks)))
    for c in chunks:
        assert text[c.start : c.end] == c.text
        assert c.text == c.text.strip() and c.text
        assert 0 < c.tokens <= size
        owners = [k for k, (a, b) in enumerate(spans) if a <= c.start and c.end <= b]
        assert len(owners) == 1, "a chunk must lie inside exactly one section"
        section = doc.sections[owners[0]]
        assert (c.heading_path, c.page) == (section.heading_path, section.page)
    if counter is not None:  # the summed counts are the tokenizer's exact counts
        assert [c.tokens for c in chunks] == _reference([c.text for c in chunks])


def test_wordpiece_counts_without_special_tokens(wordpiece: WordPieceCounter) -> None:
    assert wordpiece.count([]) == []
    assert wordpiece.count(["hello world", ""]) == [2, 0]
    long_text = "word " * 2000  # no truncation at the model's 256/512 tokens
    assert wordpiece.count([long_text]) == [2000]


def test_wordpiece_counts_match_the_tokenizer(
    wordpiece: WordPieceCounter, monkeypatch: pytest.MonkeyPatch
) -> None:
    rng = random.Random(0)
    alphabet = string.printable + "éüßçØ中文字ℕ😀\u200b\u00a0\u3000\x85\x1c\ufffd\x00"
    texts = ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 150))) for _ in range(3000)]
    texts += [
        "unaffable re-embedding tokenizers' [CLS]x a[SEP] [MASK] ##ing",
        "x" * 101 + " " + "ab" * 60 + " naïve café Ünïcödé",
        "word\x0cword word\x1cword word\x85word",  # deleted controls join words
        "Hello, world! (e.g. U.S.A.) -- 3.14159 https://example.com/a_b?c=d",
    ]
    expected = _reference(texts)
    assert wordpiece.count(texts) == expected
    assert wordpiece.count(texts) == expected  # again, from the word cache
    monkeypatch.setattr(counters, "WORD_CACHE_SIZE", 50)  # the cache empties when full
    fresh = WordPieceCounter()
    assert [fresh.count([t])[0] for t in texts[:200]] == expected[:200]
    assert len(fresh._cache) <= 50 + max(len(t.split()) for t in texts[:200])


def test_whitespace_counter_counts_words() -> None:
    assert WhitespaceCounter().count(["a b\n c", "", "  x  "]) == [3, 0, 1]


def test_prose_chunks_fit_are_exact_and_overlap(wordpiece: WordPieceCounter) -> None:
    rng = random.Random(7)
    doc = _doc(
        Section(_paragraphs(rng, 12), ("Intro",)),
        Section(_paragraphs(rng, 20), ("Intro", "Details"), page=None),
        Section("A tiny closing section.", ("Tiny",)),
    )
    chunks = chunk_document(doc, wordpiece, size=64, overlap=16)
    _check_invariants(doc, chunks, 64, wordpiece)
    assert len(chunks) > 10
    pairs = [(a, b) for a, b in itertools.pairwise(chunks) if a.heading_path == b.heading_path]
    assert pairs
    overlapping = 0
    for a, b in pairs:
        assert b.start > a.start and b.end > a.end  # always progresses
        if b.start < a.end:
            overlapping += 1
            shared = doc.text[b.start : a.end]
            assert _reference([shared])[0] <= 16
    assert overlapping == len(pairs)  # prose always has words to carry over
    # The last, small section is one chunk that never borrows from its neighbour.
    assert chunks[-1].heading_path == ("Tiny",)
    assert chunks[-1].text == doc.sections[2].text


def test_no_overlap_when_zero(wordpiece: WordPieceCounter) -> None:
    doc = _doc(Section(_paragraphs(random.Random(3), 10)))
    chunks = chunk_document(doc, wordpiece, size=48, overlap=0)
    _check_invariants(doc, chunks, 48, wordpiece)
    assert all(b.start > a.end for a, b in itertools.pairwise(chunks))
    assert " ".join(c.text for c in chunks).split() == doc.text.split()


def test_pages_and_heading_paths_are_carried(wordpiece: WordPieceCounter) -> None:
    rng = random.Random(11)
    doc = _doc(Section(_prose(rng, 20), page=1), Section(_prose(rng, 20), page=2))
    chunks = chunk_document(doc, wordpiece, size=40, overlap=8)
    _check_invariants(doc, chunks, 40, wordpiece)
    pages = [c.page for c in chunks]
    assert pages == sorted(pages) and set(pages) == {1, 2}


def test_paragraph_breaks_are_preferred(wordpiece: WordPieceCounter) -> None:
    para = "Alpha beta gamma delta. " * 6  # 30 tokens a paragraph
    doc = _doc(Section("\n\n".join(para.strip() for _ in range(4))))
    chunks = chunk_document(doc, wordpiece, size=70, overlap=0)
    _check_invariants(doc, chunks, 70, wordpiece)
    # Two whole paragraphs per chunk rather than 2⅓ paragraphs cut mid-paragraph.
    assert [c.tokens for c in chunks] == [60, 60]
    assert all(c.text.count("\n\n") == 1 for c in chunks)


def test_heading_line_stays_with_its_body(wordpiece: WordPieceCounter) -> None:
    md = b"# Guide\n\n## Install\n\nRun the installer. Then restart.\n\n## Use\n\nCall it."
    doc = extract_bytes(md, "g.md")[0]
    chunks = chunk_document(doc, wordpiece, size=256, overlap=32)
    _check_invariants(doc, chunks, 256, wordpiece)
    assert [c.text for c in chunks] == [
        "# Guide\n\n## Install\n\nRun the installer. Then restart.",
        "## Use\n\nCall it.",
    ]
    assert [c.heading_path for c in chunks] == [("Guide", "Install"), ("Guide", "Use")]


def test_giant_sentence_is_cut_at_words(wordpiece: WordPieceCounter) -> None:
    sentence = " ".join(random.Random(5).choices(_WORDS, k=900))  # no punctuation at all
    doc = _doc(Section("Short lead. " + sentence + ". Tail sentence."))
    chunks = chunk_document(doc, wordpiece, size=100, overlap=10)
    _check_invariants(doc, chunks, 100, wordpiece)
    assert len(chunks) >= 9
    assert all(c.tokens >= 80 for c in chunks[:-1])  # well packed, not one word per chunk
    assert chunks[-1].text.endswith("Tail sentence.")


def test_giant_word_is_cut_into_characters(wordpiece: WordPieceCounter) -> None:
    blob = "ab1-cd2+" * 1500  # one whitespace-free "word" of thousands of tokens
    doc = _doc(Section(f"Before the blob. {blob} After the blob."))
    chunks = chunk_document(doc, wordpiece, size=64, overlap=8)
    _check_invariants(doc, chunks, 64, wordpiece)
    assert chunks[0].text == "Before the blob."
    assert chunks[-1].text.endswith(" After the blob.")
    # The blob's pieces follow each other without gaps or overlap (a cut word is never
    # carried over), and each is nearly full.
    blob_chunks = chunks[1:]
    assert blob_chunks[0].start == len("Before the blob. ")
    assert all(a.end == b.start for a, b in itertools.pairwise(blob_chunks))
    assert all(c.tokens >= 56 for c in blob_chunks[:-1])


def test_whitespace_counter_caps_characters_of_a_long_word() -> None:
    doc = _doc(Section("x" * 3000 + " tail"))
    chunks = chunk_document(doc, WhitespaceCounter(), size=10, overlap=2)
    _check_invariants(doc, chunks, 10, None)
    assert all(len(c.text) <= 10 * 20 for c in chunks)
    assert [c.text for c in chunks] == ["x" * 200] * 15 + ["tail"]
    assert [c.tokens for c in chunks] == [1] * 16


def test_empty_document_gives_no_chunks(wordpiece: WordPieceCounter) -> None:
    assert chunk_document(_doc(), wordpiece) == []
    assert chunk_document(_doc(Section("   \n\n  "), Section("")), wordpiece) == []


def test_offsets_exact_with_odd_whitespace(wordpiece: WordPieceCounter) -> None:
    text = (
        "  Leading spaces.\u00a0Non-breaking!\n\n\n  Indented line\r\n\tTabbed line.  \u3000End?  "
    )
    doc = _doc(Section("First."), Section(text, ("X",)), Section("Last one."))
    chunks = chunk_document(doc, wordpiece, size=5, overlap=2)
    _check_invariants(doc, chunks, 5, wordpiece)
    assert chunks[0].text == "First." and chunks[-1].text == "Last one."


def test_deterministic(wordpiece: WordPieceCounter) -> None:
    doc = _doc(Section(_paragraphs(random.Random(1), 15), ("A",)))
    first = chunk_document(doc, wordpiece, size=50, overlap=12)
    assert first == chunk_document(doc, wordpiece, size=50, overlap=12)


class _CharCounter:
    """Not additive: a quarter of the characters, rounded up, plus one."""

    def count(self, texts: Sequence[str]) -> list[int]:
        return [len(t) // 4 + 1 if t else 0 for t in texts]


def test_non_additive_counter_is_verified() -> None:
    rng = random.Random(9)
    doc = _doc(Section(_paragraphs(rng, 8)), Section(_prose(rng, 10), page=2))
    counter = _CharCounter()
    chunks = chunk_document(doc, counter, size=40, overlap=8)
    assert chunks
    for c in chunks:
        assert doc.text[c.start : c.end] == c.text
        assert c.tokens == counter.count([c.text])[0] <= 40


@pytest.mark.parametrize(("size", "overlap"), [(0, 0), (10, 10), (10, -1)])
def test_invalid_settings(size: int, overlap: int) -> None:
    with pytest.raises(InvalidRequest):
        chunk_document(_doc(Section("x")), WhitespaceCounter(), size=size, overlap=overlap)
