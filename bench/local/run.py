"""Bundled local models: load time, generation speed, embedding throughput, memory.

Usage (from the repository root)::

    .venv/bin/python bench/local/run.py [--tokens 64] [--runs 3] [--sentences 256]

Prints a Markdown table. Runs in-process through the real ``LocalProvider``
(the same code ``bastion serve`` uses), so the numbers include Bastion's
threading and queueing, not just llama.cpp.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import statistics
import time

from bastion.core.types import ChatRequest, EmbeddingRequest
from bastion.providers.base import CallContext
from bastion.providers.local import LocalProvider


def rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


async def main(tokens: int, runs: int, sentences: int) -> None:
    rows: list[tuple[str, str]] = []
    base = rss_mib()
    provider = LocalProvider()
    t0 = time.perf_counter()
    await provider.warm(chat=True, embed=False)
    rows.append(("chat model load", f"{time.perf_counter() - t0:.2f} s"))
    rows.append(("RSS with chat model", f"{rss_mib():.0f} MiB (+{rss_mib() - base:.0f})"))
    prompt = "Write a short story about a lighthouse keeper."
    req = ChatRequest.model_validate(
        {
            "model": "local-chat",
            "messages": [{"role": "user", "content": prompt}],
            "max_tokens": tokens,
            "temperature": 0,
        }
    )
    speeds, ttfts = [], []
    for _ in range(runs):
        t0 = time.perf_counter()
        first = None
        n = 0
        async for chunk in provider.chat_stream(req, "smollm2-135m-instruct", CallContext("b")):
            for choice in chunk.get("choices") or ():
                if (choice.get("delta") or {}).get("content"):
                    first = first or time.perf_counter()
            if chunk.get("usage"):
                n = chunk["usage"]["completion_tokens"]
        end = time.perf_counter()
        assert first is not None
        ttfts.append(first - t0)
        speeds.append((n - 1) / (end - first) if n > 1 else 0.0)
    rows.append(("time to first token (median)", f"{statistics.median(ttfts) * 1000:.0f} ms"))
    speed = f"{statistics.median(speeds):.1f} tok/s"
    rows.append((f"generation speed, {tokens} tokens (median)", speed))
    texts = [f"Sentence {i} about routing, budgets and guardrails." for i in range(sentences)]
    ereq = EmbeddingRequest.model_validate({"model": "local-embed", "input": texts[:1]})
    t0 = time.perf_counter()
    await provider.embed(ereq, "all-minilm-l6-v2", CallContext("b"))
    rows.append(("embedder load + first call", f"{time.perf_counter() - t0:.2f} s"))
    single = []
    for _ in range(20):
        t0 = time.perf_counter()
        await provider.embed(ereq, "all-minilm-l6-v2", CallContext("b"))
        single.append(time.perf_counter() - t0)
    rows.append(("one sentence embedding (median)", f"{statistics.median(single) * 1000:.1f} ms"))
    breq = EmbeddingRequest.model_validate({"model": "local-embed", "input": texts})
    t0 = time.perf_counter()
    res = await provider.embed(breq, "all-minilm-l6-v2", CallContext("b"))
    dt = time.perf_counter() - t0
    assert len(res["data"]) == sentences
    rows.append((f"batch of {sentences} sentences", f"{sentences / dt:.0f} sentences/s"))
    rows.append(("RSS with both models", f"{rss_mib():.0f} MiB"))
    await provider.aclose()
    print("| measure | value |\n|---|---|")
    for k, v in rows:
        print(f"| {k} | {v} |")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--sentences", type=int, default=256)
    a = ap.parse_args()
    asyncio.run(main(a.tokens, a.runs, a.sentences))
