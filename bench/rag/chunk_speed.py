"""Chunking speed: tokens per second for ~2 MB of synthetic prose.

Run with one core for the per-core figure (optionally also chunking real
files or folders, e.g. a folder of Markdown docs)::

    taskset -c 0 .venv/bin/python bench/rag/chunk_speed.py [PATH ...]

Builds a deterministic Markdown-like document (sections of paragraphs of
sentences), chunks it with the bundled WordPiece counter at the default size
(256) and overlap (32), and prints tokens per second: first with an empty word-count
cache, then for a second document of the same kind (warm cache, new text). The
speed of the tokenizer itself (``encode_batch`` of the paragraphs) is shown
for comparison.
"""

from __future__ import annotations

import argparse
import itertools
import random
import time
from typing import Any

from bastion.rag.chunk import WordPieceCounter, chunk_document
from bastion.rag.extract import Section, SourceDocument, extract_paths


def vocabulary(counter: WordPieceCounter) -> list[str]:
    """Whole English words of the tokenizer's vocabulary (ids roughly follow frequency)."""
    vocab = counter._load().get_vocab()
    words = [w for w, _ in sorted(vocab.items(), key=lambda kv: kv[1]) if w.isalpha()]
    return [w for w in words if len(w) > 1 or w in ("a", "i")]


def synthetic_document(words: list[str], target_bytes: int, seed: int = 0) -> SourceDocument:
    """About ``target_bytes`` of prose in sections of 3-12 paragraphs.

    Words are drawn by a Zipf law over ``words`` and one in 25 is a made-up
    compound of two words (split into several tokens, and mostly unique): a
    long tail of distinct word forms like real text, so the word-count cache
    misses about as often as it would on real documents.
    """
    rng = random.Random(seed)
    weights = [1.0 / (rank + 10) ** 1.05 for rank in range(len(words))]
    cumulative = list(itertools.accumulate(weights))

    def word() -> str:
        if rng.random() < 0.04:
            a, b = rng.choices(words, cum_weights=cumulative, k=2)
            return a + b
        return rng.choices(words, cum_weights=cumulative, k=1)[0]

    sections: list[Section] = []
    size = 0
    number = 0
    while size < target_bytes:
        number += 1
        paragraphs = []
        for _ in range(rng.randint(3, 12)):
            sentences = []
            for _ in range(rng.randint(2, 9)):
                parts = [word() for _ in range(rng.randint(6, 32))]
                for k in range(2, len(parts) - 1, 7):
                    parts[k] += rng.choice([",", "", ";", ""])
                sentences.append(" ".join(parts).capitalize() + rng.choice(".....!?"))
            paragraphs.append(" ".join(sentences))
        text = f"## Section {number}\n\n" + "\n\n".join(paragraphs)
        sections.append(Section(text, ("Bench", f"Section {number}")))
        size += len(text) + 2
    return SourceDocument(id="bench", title="Bench", source="upload:bench", sections=sections)


def measure(label: str, docs: list[SourceDocument], counter: WordPieceCounter, args: Any) -> None:
    """Chunk ``docs`` with ``counter``; print tokens per wall and per CPU second.

    CPU time (this process's) is the fairer figure on a busy machine. Tokens are
    counted beforehand by a separate counter, so ``counter``'s cache stays as it was.
    """
    tokens = sum(WordPieceCounter().count([d.text for d in docs]))
    wall, cpu = time.perf_counter(), time.process_time()
    chunks = [
        c for d in docs for c in chunk_document(d, counter, size=args.size, overlap=args.overlap)
    ]
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    over = sum(1 for c in chunks if c.tokens > args.size)
    print(
        f"{label}: {tokens:,} tokens, {len(chunks):,} chunks (over size: {over}); "
        f"{tokens / wall:,.0f} tokens/s wall ({wall:.3f} s), {tokens / cpu:,.0f} tokens/s CPU"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="*", help="also chunk these files or folders")
    parser.add_argument("--megabytes", type=float, default=2.0)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--overlap", type=int, default=32)
    args = parser.parse_args()

    probe = WordPieceCounter()
    words = vocabulary(probe)
    first = synthetic_document(words, int(args.megabytes * 1_000_000), seed=1)
    second = synthetic_document(words, int(args.megabytes * 1_000_000), seed=2)
    paragraphs = first.text.split("\n\n")
    tokenizer = probe._load()
    t0 = time.process_time()
    encodings = tokenizer.encode_batch(paragraphs, add_special_tokens=False)
    encode_s = time.process_time() - t0
    tokens = sum(len(e.ids) for e in encodings)
    print(
        f"synthetic text: {len(first.text) / 1e6:.2f} MB, {tokens:,} tokens, "
        f"{len(set(first.text.split())):,} distinct words, {len(first.sections)} sections; "
        f"size={args.size}, overlap={args.overlap}"
    )
    print(f"tokenizers encode_batch of its paragraphs: {tokens / encode_s:,.0f} tokens/s CPU")
    counter = WordPieceCounter()  # an empty word cache
    measure("synthetic, cold word cache", [first], counter, args)
    measure("synthetic, warm word cache, new text", [second], counter, args)
    if args.paths:
        docs, failures = extract_paths(args.paths)
        size = sum(len(d.text) for d in docs)
        print(f"files: {len(docs)} documents, {size / 1e6:.2f} MB, {len(failures)} failures")
        measure("files, cold word cache", docs, WordPieceCounter(), args)


if __name__ == "__main__":
    main()
