"""Choose Bastion's server stack by measurement.

Runs the minimal gateway hot path in stack_app.py under each server x upstream-client
combination, pinned to one core, in front of the same static nginx upstream as run.py:

  servers: uvicorn-raw (uvicorn + uvloop + httptools, raw ASGI app),
           uvicorn-starlette (same server, Starlette Route/Request/Response),
           granian-raw, granian-starlette (granian ASGI, uvloop, 1 worker, 1 runtime thread)
  clients: aiohttp (ClientSession), httpx (AsyncClient)

Usage (from the repository root; needs granian in .venv for the granian rows):

    .venv/bin/python bench/gateway/stack_choice.py [--duration 10] [--servers ...] [--clients ...]

Prints a Markdown table and writes JSON to bench/results/stack-choice-<timestamp>.json.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import signal
import sys
import time
from pathlib import Path
from types import FrameType
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness as h

REPO = h.HERE.parent.parent
RESULTS_DIR = REPO / "bench" / "results"
SERVERS = ("uvicorn-raw", "uvicorn-starlette", "granian-raw", "granian-starlette")
CLIENTS = ("aiohttp", "httpx")


def server_argv(server: str, port: int) -> list[str]:
    py = sys.executable
    kind = "raw" if server.endswith("-raw") else "starlette"
    if server.startswith("uvicorn"):
        return [py, str(h.HERE / "stack_app.py"), kind, str(port)]
    granian = shutil.which("granian", path=str(Path(py).parent)) or "granian"
    return [
        granian,
        "--interface",
        "asgi",
        "--loop",
        "uvloop",
        "--http",
        "1",
        "--no-ws",
        "--workers",
        "1",
        "--runtime-threads",
        "1",
        "--log-level",
        "warning",
        "--no-access-log",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        f"stack_app:{kind}_app",
    ]


def versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {}
    for dist in ("uvicorn", "uvloop", "httptools", "starlette", "granian", "aiohttp", "httpx"):
        try:
            out[dist] = md.version(dist)
        except md.PackageNotFoundError:
            out[dist] = "not installed"
    out["python"] = sys.version.split()[0]
    return out


def bench_combo(
    server: str,
    client: str,
    workdir: Path,
    upstream_v1: str,
    core: int,
    bp: h.BenchParams,
    baseline: dict[int, tuple[int, int]],
    app_env: dict[str, str],
) -> dict[str, Any]:
    name = f"{server}+{client}"
    if (
        server.startswith("granian")
        and shutil.which("granian", path=str(Path(sys.executable).parent)) is None
    ):
        return {"skipped": "granian not installed in this venv (pip install granian)"}
    if server.endswith("-starlette") and importlib.util.find_spec("starlette") is None:
        return {"skipped": "starlette not installed in this venv (pip install starlette)"}
    port = h.free_port()
    env = dict(
        os.environ,
        STACK_UPSTREAM=upstream_v1,
        STACK_CLIENT=client,
        STACK_KEY=bp.key,
        PYTHONPATH=str(h.HERE),
    )
    env.update(app_env)
    proc = h.Proc(
        name,
        h.pinned(core, server_argv(server, port)),
        env=env,
        cwd=h.HERE,
        log_path=workdir / f"{name}.log",
    )
    try:
        h.wait_http(f"http://127.0.0.1:{port}/healthz", proc, timeout=60)
        return h.bench_target(name, f"http://127.0.0.1:{port}", proc.pid, bp, baseline)
    except RuntimeError as e:
        return {"error": str(e)}
    finally:
        proc.stop()


def markdown(results: dict[str, Any], hi: int, lo: int) -> str:
    lines = [
        f"| server | client | req/s c{hi} | p50 ms c{hi} | p99 ms c{hi} | CPU µs/req c{hi} "
        f"| req/s c{lo} | added p50 ms c{lo} | added p99 ms c{lo} | RSS MiB | non-2xx "
        "| noise % gw/client |",
        "|" + "---|" * 12,
    ]
    for name, res in results.items():
        if name == "nginx-direct":
            continue
        server, client = name.split("+")
        if "runs" not in res:
            msg = (res.get("skipped") or res.get("error") or "?").replace("\n", " ")[:150]
            lines.append(f"| {server} | {client} | {msg} |" + " |" * 9)
            continue
        a, b = res["runs"][str(hi)], res["runs"][str(lo)]
        bad = sum(r["non2xx"] + r["socket_errors"] for r in res["runs"].values())
        flag = " ⚠" if bad else ""
        lines.append(
            f"| {server}{flag} | {client} | {h.fmt_num(a['rps'])} | {h.fmt_ms(a['p50_us'])} "
            f"| {h.fmt_ms(a['p99_us'])} | {h.fmt_num(a['cpu_us_per_req'], 1)} "
            f"| {h.fmt_num(b['rps'])} | {h.fmt_ms(b.get('added_p50_us'))} "
            f"| {h.fmt_ms(b.get('added_p99_us'))} | {res['rss_tree_mib']:.1f} | {bad} "
            f"| {h.noise(a)}, {h.noise(b)} |"
        )
    return "\n".join(lines)


def _on_signal(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--duration", type=float, default=10.0, help="seconds per measured run")
    p.add_argument("--warmup", type=float, default=2.0)
    p.add_argument("--repeat", type=int, default=1, help="runs per point; medians reported")
    p.add_argument(
        "--quiet-wait",
        type=float,
        default=60.0,
        help="before each run wait up to this many s for both cores to be <= --quiet-pct "
        "busy (0: don't wait)",
    )
    p.add_argument("--quiet-pct", type=float, default=15.0)
    p.add_argument("--connections", default="32,1", help="comma list; max and min are tabled")
    p.add_argument("--servers", default=",".join(SERVERS))
    p.add_argument("--clients", default=",".join(CLIENTS))
    p.add_argument("--gateway-core", type=int, default=1)
    p.add_argument("--client-core", type=int, default=0)
    p.add_argument(
        "--app-env",
        action="append",
        default=[],
        metavar="K=V",
        help="extra env for stack_app.py, e.g. STACK_ACCESS_LOG=1 or STACK_WATCH=/tmp/dir",
    )
    p.add_argument("--out", default="")
    a = p.parse_args(argv)
    app_env = dict(kv.partition("=")[::2] for kv in a.app_env)
    conns = [int(x) for x in a.connections.split(",") if x]
    servers = [s for s in a.servers.split(",") if s]
    clients = [c for c in a.clients.split(",") if c]
    for s in servers:
        if s not in SERVERS:
            p.error(f"unknown server {s!r}")
    for c in clients:
        if c not in CLIENTS:
            p.error(f"unknown client {c!r}")
    h.require_tools("wrk", "nginx", "taskset")
    signal.signal(signal.SIGTERM, _on_signal)
    ts = time.strftime("%Y%m%d-%H%M%S")
    bp = h.BenchParams(
        conns,
        a.duration,
        a.warmup,
        a.client_core,
        repeat=a.repeat,
        quiet_timeout_s=a.quiet_wait,
        quiet_pct=a.quiet_pct,
        gateway_core=a.gateway_core,
    )
    workdir = h.make_tempdir("bastion-stack-")
    results: dict[str, Any] = {}
    upstream: h.Proc | None = None
    try:
        upstream, up_port = h.start_nginx_upstream(workdir / "upstream", a.client_core)
        bp.upstream_pid = upstream.pid
        direct = h.bench_target(
            "nginx-direct", f"http://127.0.0.1:{up_port}", upstream.pid, bp, None
        )
        results["nginx-direct"] = direct
        baseline = h.baseline_of(direct)
        for server in servers:
            for client in clients:
                h.log(f"--- {server} + {client}")
                results[f"{server}+{client}"] = bench_combo(
                    server,
                    client,
                    workdir,
                    f"http://127.0.0.1:{up_port}/v1",
                    a.gateway_core,
                    bp,
                    baseline,
                    app_env,
                )
    finally:
        if upstream is not None:
            upstream.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    report = {
        "timestamp": ts,
        "versions": versions(),
        "layout": {"client_core": a.client_core, "gateway_core": a.gateway_core},
        "params": {
            "duration_s": a.duration,
            "warmup_s": a.warmup,
            "connections": conns,
            "repeat": a.repeat,
            "app_env": app_env,
        },
        "results": results,
    }
    out = Path(a.out) if a.out else RESULTS_DIR / f"stack-choice-{ts}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    d = results.get("nginx-direct", {}).get("runs", {})
    base = ", ".join(
        f"c{c}: p50 {h.fmt_ms(r['p50_us'])} ms, p99 {h.fmt_ms(r['p99_us'])} ms"
        for c, r in d.items()
    )
    print(f"nginx direct baseline: {base}\n")
    print(markdown(results, max(conns), min(conns)))
    print(f"\nJSON: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
