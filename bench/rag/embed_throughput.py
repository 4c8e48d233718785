"""RAG ingestion embedding throughput: the bundled embedder, before vs now.

Usage (from the repository root)::

    .venv/bin/python bench/rag/embed_throughput.py            # ~1.5 min, 2 idle cores
    .venv/bin/python bench/rag/embed_throughput.py --explore  # + other settings (~1 min)

Embeds N texts (default 512) end to end -- tokenise, ONNX, mean pooling, L2
norm -- and prints tokens/s (real tokens, with [CLS]/[SEP]) and chunks/s for
two sets: ``chunks``, texts of 230-256 WordPiece tokens like the RAG chunker's
output, and ``mixed``, 40-256 tokens. Texts are cut from the Cranfield corpus
(``--corpus``; read-only bench data, not shipped) or, without it, generated
from a word list. Side by side:

* ``before``: the previous ``OnnxEmbedder`` (kept verbatim below as
  ``BaselineEmbedder``): the int8 ONNX export run as folded fp32, onnxruntime
  intra-op threads = cores, batches of 32 texts / 4096 padded tokens, no arena;
* ``now``: ``bastion.providers.local_embed.OnnxEmbedder`` with its defaults.

Also prints the p50 latency of one ~20-token sentence (the gateway's serving
path), the cosine of ``now`` against ``before`` and against the pure-numpy fp32
reference of the test suite (``tests/reference/minilm_numpy.py``), and the
process's peak RSS while ``now`` embeds (measured before ``before`` loads).

The machine may be shared: ``before`` and ``now`` take turns in calls of
``--trial`` texts, so both see the same background load and the ratios stay
fair; the load average is printed, and so is each side's fastest call.
``before`` embeds only the first ``--baseline-texts`` (192) texts of each set,
to keep the run short; the rates are per token and per text.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import random
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from bastion.providers.local_embed import (  # noqa: E402
    OnnxEmbedder,
    available_cores,
)
from bastion.providers.models import bundled_embedder_paths  # noqa: E402

CRANFIELD = Path("/work/shared/data/ir/cranfield/corpus.jsonl")
SENTENCE = "Please summarise the attached quarterly report in three bullet points for the board."

Vectors = NDArray[np.float32]


# -- the previous implementation, verbatim but for names ---------------------------


class BaselineEmbedder:
    """``OnnxEmbedder`` as it was: int8 ONNX (folded to fp32), intra-op threads."""

    def __init__(self, threads: int | None = None) -> None:
        self.max_length = 256
        self.batch_size = 32
        self.token_budget = 4096
        self.threads = threads or min(4, available_cores())
        self._session: Any = None
        self._tokenizer: Any = None
        self._input_names: frozenset[str] = frozenset()

    def load(self) -> None:
        import onnxruntime as ort
        from tokenizers import Tokenizer

        model, tok = bundled_embedder_paths()
        tokenizer = Tokenizer.from_file(str(tok))
        tokenizer.enable_truncation(max_length=self.max_length)
        tokenizer.no_padding()
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = self.threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.log_severity_level = 3
        opts.enable_cpu_mem_arena = False
        session = ort.InferenceSession(
            str(model), sess_options=opts, providers=["CPUExecutionProvider"]
        )
        self._input_names = frozenset(i.name for i in session.get_inputs())
        self._tokenizer = tokenizer
        self._session = session

    def embed_with_counts(self, texts: Sequence[str]) -> tuple[Vectors, list[int]]:
        ids = [e.ids for e in self._tokenizer.encode_batch(list(texts))]
        out = np.zeros((len(ids), 384), dtype=np.float32)
        for batch in self._batches([len(x) for x in ids]):
            out[batch] = self._run([ids[i] for i in batch])
        return out, [len(x) for x in ids]

    def _batches(self, lengths: list[int]) -> list[list[int]]:
        batches: list[list[int]] = []
        current: list[int] = []
        for i in sorted(range(len(lengths)), key=lengths.__getitem__):
            full = len(current) >= self.batch_size
            if current and (full or (len(current) + 1) * lengths[i] > self.token_budget):
                batches.append(current)
                current = []
            current.append(i)
        if current:
            batches.append(current)
        return batches

    def _run(self, batch: list[list[int]]) -> Vectors:
        width = max(len(x) for x in batch)
        ids = np.zeros((len(batch), width), dtype=np.int64)
        mask = np.zeros_like(ids)
        for row, seq in enumerate(batch):
            ids[row, : len(seq)] = seq
            mask[row, : len(seq)] = 1
        feeds = {"input_ids": ids, "attention_mask": mask}
        if "token_type_ids" in self._input_names:
            feeds["token_type_ids"] = np.zeros_like(ids)
        (hidden,) = self._session.run(["last_hidden_state"], feeds)
        m = mask[:, :, None].astype(np.float32)
        pooled = (hidden * m).sum(axis=1) / np.maximum(m.sum(axis=1), 1e-9)
        norms = np.linalg.norm(pooled, axis=1, keepdims=True)
        vecs: Vectors = (pooled / np.maximum(norms, 1e-12)).astype(np.float32)
        return vecs


# -- texts ------------------------------------------------------------------------

_WORD_LIST = """
the a of to and in is that for it as with was on be by this are from at an or
have not which but has were can all their more one other been also its would
system data model results method time analysis process design performance
network user service request response memory storage policy team report value
increase reduce measure compare approach problem solution support provide
different important significant general specific following however therefore
because although while during between through against within without under
customer invoice payment account access security document chunk query index
retrieval embedding vector language question answer evidence experiment theory
"""
_WORDS = _WORD_LIST.split()


def _words(corpus: Path | None, seed: int) -> list[str]:
    if corpus is not None and corpus.is_file():
        with corpus.open(encoding="utf-8") as f:
            docs = [json.loads(line) for line in f]
        return " ".join(f"{d.get('title', '')} {d.get('text', '')}" for d in docs).split()
    rng = random.Random(seed)
    words: list[str] = []
    for _ in range(40_000):  # sentences of 6-18 words
        sentence = [rng.choice(_WORDS) for _ in range(rng.randint(6, 18))]
        words += [sentence[0].capitalize(), *sentence[1:-1], sentence[-1] + "."]
    return words


def make_texts(tokenizer: Any, words: list[str], n: int, lo: int, hi: int, seed: int) -> list[str]:
    """``n`` texts of consecutive words, each ``lo``-``hi`` tokens with [CLS]/[SEP].

    BERT pre-tokenisation splits on whitespace first, so a text's token count is
    the sum of its words' counts, counted once per distinct word.
    """
    vocab = sorted(set(words))
    per_word = dict(
        zip(
            vocab,
            (len(e.ids) for e in tokenizer.encode_batch(vocab, add_special_tokens=False)),
            strict=True,
        )
    )
    counts = [per_word[w] for w in words]
    rng = random.Random(seed)
    texts: list[str] = []
    pos = 0
    for _ in range(n):
        target = rng.randint(lo, hi) - 2
        if pos + 4 * target >= len(words):
            pos = 0
        start, total = pos, 0
        while total + counts[pos] <= target:
            total += counts[pos]
            pos += 1
        texts.append(" ".join(words[start:pos]))
    return texts


# -- measuring --------------------------------------------------------------------


class PeakRss:
    """Peak resident memory of this process since the last :meth:`reset` (Linux)."""

    def reset(self) -> None:
        with contextlib.suppress(OSError):
            Path("/proc/self/clear_refs").write_text("5")

    def mb(self) -> float:
        try:
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
        except OSError:
            pass
        return float("nan")


class Rate:
    """Texts, tokens and seconds of the timed trials of one embedder on one set."""

    def __init__(self) -> None:
        self.texts = 0
        self.tokens = 0
        self.seconds = 0.0
        self.cpu_seconds = 0.0  # of all the process's threads
        self.best = 0.0  # tokens/s of the fastest trial
        self.vectors: list[Vectors] = []

    def add(self, vecs: Vectors, counts: list[int], seconds: float, cpu: float) -> None:
        self.texts += len(counts)
        self.tokens += sum(counts)
        self.seconds += seconds
        self.cpu_seconds += cpu
        self.best = max(self.best, sum(counts) / seconds)
        self.vectors.append(vecs)

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds

    @property
    def texts_per_s(self) -> float:
        return self.texts / self.seconds

    @property
    def tokens_per_cpu_s(self) -> float:
        return self.tokens / self.cpu_seconds


def interleaved(
    embedders: dict[str, tuple[Callable[[Sequence[str]], tuple[Vectors, list[int]]], int]],
    texts: list[str],
    trial: int,
) -> dict[str, Rate]:
    """Time each embedder on ``texts`` in trials of ``trial`` texts, taking turns.

    ``embedders`` maps a name to ``(embed_with_counts, how many texts it embeds)``.
    Taking turns trial by trial (in alternating order) exposes every embedder to
    the same background load, which keeps the ratios fair on a shared machine.
    """
    rates = {name: Rate() for name in embedders}
    for turn, start in enumerate(range(0, len(texts), trial)):
        names = list(embedders) if turn % 2 == 0 else list(reversed(embedders))
        for name in names:
            embed, limit = embedders[name]
            if start >= limit:
                continue
            batch = texts[start : min(start + trial, limit)]
            began, cpu = time.perf_counter(), time.process_time()
            vecs, counts = embed(batch)
            elapsed = time.perf_counter() - began
            rates[name].add(vecs, counts, elapsed, time.process_time() - cpu)
    return rates


def latency_p50(
    embeds: dict[str, Callable[[Sequence[str]], Any]], reps: int, block: int = 25
) -> dict[str, float]:
    """p50 milliseconds of embedding one short sentence.

    Blocks of ``block`` calls alternate between the embedders: alternating single
    calls would let one session's spinning threads slow the other's next call.
    """
    times: dict[str, list[float]] = {k: [] for k in embeds}
    for _ in range(max(1, reps // block)):
        for name, embed in embeds.items():
            for _ in range(block):
                start = time.perf_counter()
                embed([SENTENCE])
                times[name].append(time.perf_counter() - start)
    return {k: 1000 * statistics.median(v) for k, v in times.items()}


def cosines(a: Vectors, b: Vectors) -> tuple[float, float]:
    c = np.sum(a * b, axis=1)
    return float(c.mean()), float(c.min())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("-n", "--texts", type=int, default=512, help="texts per set")
    parser.add_argument(
        "--baseline-texts",
        type=int,
        default=192,
        help="how many of each set's texts 'before' embeds (it is slow)",
    )
    parser.add_argument("--trial", type=int, default=64, help="texts per timed call")
    parser.add_argument("--corpus", type=Path, default=CRANFIELD, help="a BEIR corpus.jsonl")
    parser.add_argument("--latency-reps", type=int, default=100)
    parser.add_argument("--reference", type=int, default=16, help="texts for the fp32 check")
    parser.add_argument("--threads", type=int, default=None, help="OnnxEmbedder(threads=)")
    parser.add_argument("--token-budget", type=int, default=None, help="OnnxEmbedder(...)")
    parser.add_argument("--explore", action="store_true", help="also time other settings")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    import onnxruntime as ort

    kwargs: dict[str, Any] = {}
    if args.threads:
        kwargs["threads"] = args.threads
    if args.token_budget:
        kwargs["token_budget"] = args.token_budget
    now = OnnxEmbedder(**kwargs)
    rss = PeakRss()
    rss.reset()
    now.load()
    tokenizer = now._tokenizer
    words = _words(args.corpus, args.seed)
    source = args.corpus.name if args.corpus.is_file() else "generated from a word list"
    sets = {
        "chunks": make_texts(tokenizer, words, args.texts, 230, 256, args.seed),
        "mixed": make_texts(tokenizer, words, args.texts, 40, 256, args.seed + 1),
    }
    now.embed(sets["chunks"][: args.trial])  # warm-up, and the peak of a full-length run
    peak_now = rss.mb()
    before = BaselineEmbedder()
    before.load()
    before.embed_with_counts(sets["chunks"][:8])

    cores = available_cores()
    print(
        f"cpu: {platform.processor() or platform.machine()}, {cores} cores; "
        f"onnxruntime {ort.__version__}; load average {os.getloadavg()[0]:.2f}"
    )
    print(f"texts: {source}")
    for name, texts in sets.items():
        lengths = now.count_tokens(texts)
        print(
            f"  {name:7s} n={len(texts)} tokens/text mean {statistics.mean(lengths):.0f} "
            f"min {min(lengths)} max {max(lengths)}"
        )
    print(
        "before: int8 model.onnx (weights folded to fp32 at load), "
        f"intra_op_num_threads={min(4, cores)}, 1 batch at a time, "
        "batch <= 32 texts / 4096 padded tokens, ORT_ENABLE_ALL, no arena; "
        f"the first {args.baseline_texts} texts of each set"
    )
    print(
        "now:    fp32 model.safetensors -> fused graph (EmbedLayerNormalization, Attention, "
        f"SkipLayerNormalization, BiasGelu); {now.workers} batches at a time, each "
        f"intra_op_num_threads={now.intra_op_threads}; a one-batch request runs on "
        f"intra_op_num_threads={max(now.threads, now.intra_op_threads)}; batch <= "
        f"{now.batch_size} texts / {now.token_budget} padded tokens, sorted by length; "
        "ORT_ENABLE_ALL, arena on"
    )
    print(f"timed in calls of {args.trial} texts, 'before' and 'now' taking turns")

    rates = {
        name: interleaved(
            {
                "before": (before.embed_with_counts, args.baseline_texts),
                "now": (now.embed_with_counts, len(texts)),
            },
            texts,
            args.trial,
        )
        for name, texts in sets.items()
    }
    lat = latency_p50(
        {"before": before.embed_with_counts, "now": now.embed_with_counts}, args.latency_reps
    )

    print()
    head = ("tokens/s", "chunks/s", "best call tok/s", "tokens/cpu-s")
    print(f"{'set':8s} {'':8s} {head[0]:>9s} {head[1]:>9s} {head[2]:>16s} {head[3]:>13s}")
    for name, r in rates.items():
        for which in ("before", "now"):
            rate = r[which]
            print(
                f"{name:8s} {which:8s} {rate.tokens_per_s:9.0f} {rate.texts_per_s:9.1f} "
                f"{rate.best:16.0f} {rate.tokens_per_cpu_s:13.0f}"
            )
        new, old = r["now"], r["before"]
        print(
            f"{name:8s} {'ratio':8s} {new.tokens_per_s / old.tokens_per_s:8.2f}x {'':9s} "
            f"{new.best / old.best:15.2f}x {new.tokens_per_cpu_s / old.tokens_per_cpu_s:12.2f}x"
        )
    print(
        "(tokens/cpu-s: per second of CPU time of all the process's threads, spinning "
        "included; less sensitive to other load than wall-clock rates)"
    )
    print(
        f"one {len(tokenizer.encode(SENTENCE).ids)}-token text, p50: "
        f"before {lat['before']:.2f} ms, now {lat['now']:.2f} ms"
    )
    print(
        f"peak RSS of the process, 'now' loaded and embedding (before 'before' loads): "
        f"{peak_now:.0f} MB"
    )

    print()
    vectors = {
        (which, name): np.concatenate(r[which].vectors)
        for name, r in rates.items()
        for which in ("before", "now")
    }
    for name in sets:
        prior = vectors["before", name]
        mean, low = cosines(vectors["now", name][: len(prior)], prior)
        print(f"cosine now vs before, {name}: mean {mean:.5f} min {low:.5f}")
    if args.reference > 0:
        try:
            from tests.reference.minilm_numpy import MiniLMReference

            sample = sets["mixed"][: min(args.reference, args.baseline_texts)]
            ref = MiniLMReference().embed(sample)
            for which in ("before", "now"):
                mean, low = cosines(vectors[which, "mixed"][: len(sample)], ref)
                print(
                    f"cosine vs fp32 reference ({len(sample)} mixed texts), {which}: "
                    f"mean {mean:.5f} min {low:.5f}"
                )
        except ImportError as exc:  # safetensors is a dev dependency
            print(f"fp32 reference skipped: {exc}")

    if args.explore:
        del before
        explore(now, sets["chunks"], args.trial)
    print(f"\nload average at the end {os.getloadavg()[0]:.2f}")


def explore(now: OnnxEmbedder, texts: list[str], trial: int) -> None:
    """Other settings, each taking turns with the defaults on 4 calls of the chunk set."""
    cores = available_cores()
    int8_onnx = bundled_embedder_paths()[0]
    variants: dict[str, Callable[[], OnnxEmbedder]] = {
        f"intra-op {cores} threads, 1 batch at a time, budget 512": lambda: OnnxEmbedder(
            threads=cores, intra_op_threads=cores
        ),
        f"intra-op {cores} threads, 1 batch at a time, budget 4096": lambda: OnnxEmbedder(
            threads=cores, intra_op_threads=cores, token_budget=4096
        ),
        f"{cores} batches at a time x 1 thread, budget 256": lambda: OnnxEmbedder(token_budget=256),
        f"{cores} batches at a time x 1 thread, budget 1024": lambda: OnnxEmbedder(
            token_budget=1024
        ),
        f"{cores} batches at a time x 1 thread, budget 4096": lambda: OnnxEmbedder(
            token_budget=4096
        ),
        f"int8 model.onnx, {cores} batches at a time, budget 512": lambda: OnnxEmbedder(int8_onnx),
    }
    sample = texts[: 4 * trial]
    print(f"\nexplore ({len(sample)} chunks; tokens/s of the variant / of the defaults):")
    for label, make in variants.items():
        emb = make()  # one at a time: each holds its own sessions
        emb.embed(texts[:8])
        r = interleaved(
            {
                "variant": (emb.embed_with_counts, len(sample)),
                "now": (now.embed_with_counts, len(sample)),
            },
            sample,
            trial,
        )
        print(f"  {label:56s} {r['variant'].tokens_per_s:7.0f} / {r['now'].tokens_per_s:7.0f}")
        del emb


if __name__ == "__main__":
    main()
