"""Eval runner throughput and memory: exact-match suites of 1k, 10k, 50k cases.

A real ``bastion serve`` (no guardrails, no cache, default governance) runs
in front of the fake upstream process, whose default answer ``echo: <input>``
is what every case expects, so every case passes. For each size a JSONL
dataset is generated and the suite is run at concurrency 32 by a **child
process** (``run_suite`` with :class:`HttpModelClient`, rows into a fresh
SQLite results file), so each size's peak RSS (``ru_maxrss``) is its own.
The child reports cases/s, its RSS before the run (imports done) and its
peak; the increment should not grow with the suite (the dataset is streamed,
rows are written in batches, nothing is kept per case).

    .venv/bin/python bench/evals/throughput.py [--sizes 1000,10000,50000] [--concurrency 32]

Prints a Markdown table and writes JSON to bench/results/evals-throughput-<ts>.json.
All traffic stays on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
RESULTS_DIR = REPO / "bench" / "results"
ADMIN_KEY = "bench-evals-admin-key"
UPSTREAM_KEY = "sk-upstream-bench"


def rss_mib() -> float:
    """The current resident set size (Linux /proc), MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def write_suite(workdir: Path, n: int, concurrency: int) -> Path:
    cases = workdir / f"cases-{n}.jsonl"
    with cases.open("w") as f:
        for i in range(n):
            text = f"case number {i} asks a short question"
            f.write(json.dumps({"id": f"c{i:07d}", "input": text, "expected": f"echo: {text}"}))
            f.write("\n")
    suite = workdir / f"suite-{n}.yaml"
    suite.write_text(
        f"""name: throughput-{n}
target: {{model: bench, params: {{max_tokens: 64}}}}
dataset: {{path: {cases.name}}}
scorers:
  - {{type: exact, threshold: 1.0}}
concurrency: {concurrency}
retries: 2
"""
    )
    return suite


def child(suite_path: str, url: str, results: str) -> None:
    """Run one suite in this process and print one JSON line about it."""
    from bastion.evals.client import HttpModelClient
    from bastion.evals.runner import run_suite
    from bastion.evals.suite import load_suite
    from bastion.store.sqlite.evals import SqliteResultStore

    suite = load_suite(suite_path)
    store = SqliteResultStore(results)
    before = rss_mib()

    async def go() -> dict[str, Any]:
        client = HttpModelClient(url, ADMIN_KEY, max_connections=suite.concurrency)
        try:
            t0, c0 = time.perf_counter(), time.process_time()
            run = await run_suite(suite, client=client, store=store)
            elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
        finally:
            await client.aclose()
        s = run.summary
        return {
            "cases": s["rows"],
            "status": run.status,
            "target_errors": s["target_errors"],
            "seconds": round(elapsed, 2),
            "cases_per_s": round(s["rows"] / elapsed, 1),
            "runner_cpu_ms_per_case": round(cpu * 1000 / max(1, s["rows"]), 3),
            "rss_before_mib": round(before, 1),
            "peak_rss_mib": round(peak_rss_mib(), 1),
        }

    out = asyncio.run(go())
    store.close()
    print(json.dumps(out), flush=True)


def policy(upstream_v1: str) -> str:
    return f"""providers:
  up: {{type: openai, base_url: "{upstream_v1}", api_key: "env:UPSTREAM_KEY"}}
models:
  bench:
    routes: [{{provider: up, model: gpt-4o-mini}}]
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--sizes", default="1000,10000,50000", help="comma-separated case counts")
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--child", nargs=3, metavar=("SUITE", "URL", "RESULTS"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(*args.child)
        return 0

    from bastion.testing.fake_upstream import run_fake_upstream
    from bastion.testing.server import run_bastion

    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bastion-evals-bench-") as tmp:
        work = Path(tmp)
        with (
            run_fake_upstream(max_requests=10) as fake,
            run_bastion(
                policy(fake.url),
                work / "data",
                admin_key=ADMIN_KEY,
                env={"UPSTREAM_KEY": UPSTREAM_KEY},
            ) as srv,
        ):
            for n in sizes:
                suite = write_suite(work, n, args.concurrency)
                cmd = [sys.executable, __file__, "--child", str(suite), srv.url]
                cmd.append(str(work / f"evals-{n}.db"))
                cp = subprocess.run(cmd, capture_output=True, text=True, check=False)
                if cp.returncode != 0:
                    print(cp.stderr, file=sys.stderr)
                    return 1
                row = json.loads(cp.stdout.strip().splitlines()[-1])
                row["size"] = n
                results.append(row)
                print(
                    f"{n:>7} cases: {row['cases_per_s']:>7} cases/s, peak RSS "
                    f"{row['peak_rss_mib']} MiB (before run {row['rss_before_mib']} MiB), "
                    f"runner CPU {row['runner_cpu_ms_per_case']} ms/case, {row['status']}",
                    flush=True,
                )
    print()
    print(
        "| cases | cases/s | seconds | runner CPU ms/case | RSS before run (MiB) "
        "| peak RSS (MiB) | status |"
    )
    print("|---:|---:|---:|---:|---:|---:|---|")
    for r in results:
        print(
            f"| {r['size']:,} | {r['cases_per_s']} | {r['seconds']} | "
            f"{r['runner_cpu_ms_per_case']} | {r['rss_before_mib']} "
            f"| {r['peak_rss_mib']} | {r['status']} |"
        )
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"evals-throughput-{time.strftime('%Y%m%d-%H%M%S')}.json"
    meta = {"python": sys.version.split()[0], "machine": platform.machine(), "cpus": os.cpu_count()}
    path.write_text(json.dumps({"meta": meta, "concurrency": args.concurrency, "runs": results}))
    print(f"\nwrote {path}")
    return 0 if all(r["status"] == "passed" for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
