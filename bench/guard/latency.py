"""Latency of the whole input guard pipeline on one core.

Runs the built-in full pipeline (normalisation, injection rules over the text
and its decoded payloads, the injection classifier, secrets, PII) on benign
texts of 200, 2,000 and 20,000 characters and prints p50/p95 per size, plus
each scanner alone. Usage (from the repository root):

    .venv/bin/python bench/guard/latency.py [--runs 200] [--core 1]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import time
from pathlib import Path

from bastion.guard.base import ScanContext
from bastion.guard.presets import full_pipeline

TEXT = (
    "the quarterly report shows revenue grew in every region while costs stayed flat and the "
    "team shipped the new billing service ahead of schedule customers asked for better exports "
    "please contact support at help@example.com or call +1 415 555 0100 if the invoice is wrong "
    "we reviewed the architecture and agreed to move the queue to a managed service next month"
)
WORDS = TEXT.split(" ")


def text_of(chars: int, rng: random.Random) -> str:
    out: list[str] = []
    n = 0
    while n < chars:
        sentence = " ".join(rng.choice(WORDS) for _ in range(rng.randint(8, 18))).capitalize()
        out.append(sentence + ".")
        n += len(sentence) + 2
    return " ".join(out)[:chars]


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p * len(xs)))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--core", type=int, default=None, help="pin to this core")
    a = ap.parse_args()
    if a.core is not None:
        os.sched_setaffinity(0, {a.core})
    rng = random.Random(7)
    pipeline = full_pipeline()
    ctx = ScanContext("input")
    pipeline.scan("warm up the models", "input", ctx)
    results: dict[str, dict[str, float]] = {}
    print("| scanner | chars | p50 ms | p95 ms |")
    print("|---|---|---|---|")
    for chars in (200, 2000, 20000):
        runs = a.runs if chars < 20000 else max(20, a.runs // 5)
        texts = [text_of(chars, rng) for _ in range(runs)]
        rows: dict[str, list[float]] = {"pipeline": []}
        for t in texts:
            t0 = time.perf_counter()
            pipeline.scan(t, "input", ctx)
            rows["pipeline"].append(time.perf_counter() - t0)
            for step in pipeline.steps["input"]:
                t0 = time.perf_counter()
                step.scanner.scan(t, ctx)
                rows.setdefault(step.config.type, []).append(time.perf_counter() - t0)
        for name, xs in rows.items():
            p50, p95 = pct(xs, 0.5) * 1000, pct(xs, 0.95) * 1000
            results[f"{name}@{chars}"] = {
                "p50_ms": p50,
                "p95_ms": p95,
                "mean_ms": statistics.mean(xs) * 1000,
            }
            print(f"| {name} | {chars:,} | {p50:.2f} | {p95:.2f} |")
    out = Path(__file__).resolve().parents[1] / "results"
    out.mkdir(exist_ok=True)
    path = out / f"guard-latency-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(results, indent=2))
    print(f"JSON: {path}")


if __name__ == "__main__":
    main()
