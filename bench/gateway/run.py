"""Gateway benchmark: Bastion vs LiteLLM proxy vs an nginx hop, in front of a static upstream.

Stdlib only. Usage (from the repository root):

    .venv/bin/python bench/gateway/run.py [--duration 10] [--targets bastion,litellm,nginx-proxy]

Layout: the static nginx upstream and wrk share core 0 (``--client-core``); each gateway under
test runs alone on core 1 (``--gateway-core``). The upstream is measured directly first (the
baseline); "added" latency is gateway latency minus direct latency at the same connection count.
Prints a Markdown table and writes JSON to bench/results/gateway-<timestamp>.json.
Exit status: 0 if every target that ran had only 2xx answers, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness as h

REPO = h.HERE.parent.parent
RESULTS_DIR = REPO / "bench" / "results"
DEFAULT_BASTION = REPO / ".venv" / "bin" / "bastion"
DEFAULT_LITELLM = REPO / "bench" / ".venv-litellm" / "bin" / "litellm"
UPSTREAM_KEY = "sk-upstream-bench"
ALL_TARGETS = ("bastion", "bastion-gov", "bastion-gov-redis", "litellm", "nginx-proxy", "minimal")
GOV_ADMIN_KEY = "bench-admin-key-not-the-bench-key"
# governance on: the bench key is a tenant key with RPM/TPM limits (far above the load, so
# every request passes through the counters without being refused), a daily budget, and
# request events in the audit log (logging: metadata); usage rows go through the queue
GOV_POLICY = """
keys:
  bench: {secret: "env:BENCH_KEY_SECRET", rpm: 100000000, tpm: 100000000000}
governance:
  logging: {default: metadata}
"""


class SkipTarget(Exception):
    """The target cannot run here (not installed / not runnable yet)."""


@dataclass
class Started:
    proc: h.Proc
    url: str
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class Ctx:
    args: argparse.Namespace
    workdir: Path
    upstream_port: int
    procs: list[h.Proc] = field(default_factory=list)

    @property
    def upstream_v1(self) -> str:
        return f"http://127.0.0.1:{self.upstream_port}/v1"


# --------------------------------------------------------------------------- targets


def start_nginx_proxy(ctx: Ctx) -> Started:
    proc, port = h.start_nginx_proxy(
        ctx.workdir / "nginx-proxy", ctx.upstream_port, ctx.args.gateway_core
    )
    ctx.procs.append(proc)
    return Started(proc, f"http://127.0.0.1:{port}", {"version": nginx_version()})


def _version_of(python: Path, dist: str) -> str:
    try:
        cp = subprocess.run(
            [str(python), "-c", f"import importlib.metadata as m; print(m.version({dist!r}))"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return cp.stdout.strip() or "unknown"


def start_litellm(ctx: Ctx) -> Started:
    exe = Path(ctx.args.litellm_bin)
    if not exe.exists():
        raise SkipTarget(
            f"{exe} not found; install with: python3 -m venv bench/.venv-litellm && "
            "bench/.venv-litellm/bin/pip install 'litellm[proxy]'"
        )
    wd = ctx.workdir / "litellm"
    wd.mkdir()
    cfg = wd / "config.yaml"
    cfg.write_text(
        f"""model_list:
  - model_name: {h.BENCH_MODEL}
    litellm_params:
      model: openai/gpt-4o-mini
      api_base: {ctx.upstream_v1}
      api_key: {UPSTREAM_KEY}
litellm_settings:
  telemetry: false
general_settings:
  master_key: {ctx.args.key}
"""
    )
    port = h.free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_HOST")}
    env.update(
        LITELLM_LOG="ERROR",
        LITELLM_TELEMETRY="False",
        LITELLM_LOCAL_MODEL_COST_MAP="True",
        LITELLM_MODE="PRODUCTION",
        NO_DOCS="True",
        HOME=str(wd),
    )
    argv = [str(exe), "--config", str(cfg), "--host", "127.0.0.1", "--port", str(port)]
    argv += ["--num_workers", "1", "--telemetry", "False"]
    proc = h.Proc(
        "litellm",
        h.pinned(ctx.args.gateway_core, argv),
        env=env,
        cwd=wd,
        log_path=wd / "litellm.log",
    )
    ctx.procs.append(proc)
    base = f"http://127.0.0.1:{port}"
    h.wait_http(f"{base}/health/liveliness", proc, timeout=ctx.args.ready_timeout)
    version = _version_of(exe.parent / "python", "litellm")
    return Started(proc, base, {"version": version, "config": cfg.read_text()})


def bastion_policy(ctx: Ctx) -> str:
    policy = f"""providers:
  up: {{type: openai, base_url: "{ctx.upstream_v1}", api_key: "env:UPSTREAM_KEY"}}
models:
  {h.BENCH_MODEL}:
    routes: [{{provider: up, model: gpt-4o-mini}}]
"""
    extra = ctx.args.bastion_policy
    if extra:
        p = Path(extra)
        snippet = p.read_text() if p.exists() else extra
        policy += "\n# --bastion-policy snippet\n" + snippet.rstrip() + "\n"
    return policy


def start_bastion(ctx: Ctx, gov: str | None = None) -> Started:
    """Bastion; ``gov`` ("embedded" or "redis") turns governance on for the bench key."""
    exe = Path(ctx.args.bastion_bin)
    if not exe.exists():
        raise SkipTarget(f"{exe} not found (pip install -e . in the main venv)")
    try:
        cp = subprocess.run(
            [str(exe), "serve", "--help"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise SkipTarget(f"`{exe} serve --help` timed out") from None
    if cp.returncode != 0:
        tail = (cp.stderr or cp.stdout).strip().splitlines()[-1:] or ["(no output)"]
        raise SkipTarget(f"`bastion serve` is not runnable yet (rc {cp.returncode}): {tail[0]}")
    wd = ctx.workdir / ("bastion" if gov is None else f"bastion-gov-{gov}")
    (wd / "data").mkdir(parents=True)
    policy = wd / "policy.yaml"
    policy.write_text(bastion_policy(ctx) + (GOV_POLICY if gov else ""))
    port = h.free_port()
    env = dict(os.environ)
    env.update(
        BASTION_ADMIN_KEY=GOV_ADMIN_KEY if gov else ctx.args.key,
        BASTION_DATA_DIR=str(wd / "data"),
        UPSTREAM_KEY=UPSTREAM_KEY,
        BENCH_KEY_SECRET=ctx.args.key,
    )
    if gov == "redis":
        env.update(
            BASTION_REDIS_URL=ctx.args.redis_url,
            BASTION_REDIS_PREFIX=f"bench-{os.getpid()}:",
        )
    for kv in ctx.args.bastion_env:
        k, _, v = kv.partition("=")
        env[k] = v
    argv = [str(exe), "serve", "--policy", str(policy), "--host", "127.0.0.1", "--port", str(port)]
    proc = h.Proc(
        "bastion",
        h.pinned(ctx.args.gateway_core, argv),
        env=env,
        cwd=wd,
        log_path=wd / "bastion.log",
    )
    ctx.procs.append(proc)
    base = f"http://127.0.0.1:{port}"
    h.wait_http(f"{base}/readyz", proc, timeout=ctx.args.ready_timeout)
    if gov:
        add_budget(base)
    version = _version_of(REPO / ".venv" / "bin" / "python", "bastion")
    info = {"version": version, "git": git_rev(), "policy": policy.read_text(), "governance": gov}
    return Started(proc, base, info)


def add_budget(base: str) -> None:
    """A daily budget on the default tenant (large enough never to refuse a bench request)."""
    import urllib.request

    body = json.dumps({"scope": "tenant", "id": "default", "period": "day", "usd": 1e9})
    req = urllib.request.Request(
        f"{base}/admin/budgets",
        data=body.encode(),
        headers={"authorization": f"Bearer {GOV_ADMIN_KEY}", "content-type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        if resp.status != 201:
            raise RuntimeError(f"budget not created: {resp.status}")
    time.sleep(1.5)  # key rings refresh every second


def start_minimal(ctx: Ctx) -> Started:
    """stack_app.py (raw ASGI, uvicorn+uvloop+httptools, aiohttp): the Python floor."""
    try:
        import aiohttp  # noqa: F401
        import orjson  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as e:
        raise SkipTarget(f"run with the project venv (.venv/bin/python): {e}") from None
    wd = ctx.workdir / "minimal"
    wd.mkdir()
    port = h.free_port()
    env = dict(
        os.environ,
        STACK_UPSTREAM=ctx.upstream_v1,
        STACK_CLIENT="aiohttp",
        STACK_KEY=ctx.args.key,
        PYTHONPATH=str(h.HERE),
    )
    argv = [sys.executable, str(h.HERE / "stack_app.py"), "raw", str(port)]
    proc = h.Proc(
        "minimal",
        h.pinned(ctx.args.gateway_core, argv),
        env=env,
        cwd=wd,
        log_path=wd / "minimal.log",
    )
    ctx.procs.append(proc)
    base = f"http://127.0.0.1:{port}"
    h.wait_http(f"{base}/healthz", proc, timeout=60)
    return Started(proc, base, {"version": "stack_app.py raw ASGI + uvicorn + aiohttp"})


STARTERS: dict[str, Callable[[Ctx], Started]] = {
    "bastion": start_bastion,
    "bastion-gov": lambda ctx: start_bastion(ctx, "embedded"),
    "bastion-gov-redis": lambda ctx: start_bastion(ctx, "redis"),
    "litellm": start_litellm,
    "nginx-proxy": start_nginx_proxy,
    "minimal": start_minimal,
}


# --------------------------------------------------------------------------- helpers


def nginx_version() -> str:
    cp = subprocess.run(["nginx", "-v"], capture_output=True, text=True, check=False)
    return cp.stderr.strip().split("/")[-1]


def wrk_version() -> str:
    cp = subprocess.run(["wrk", "-v"], capture_output=True, text=True, check=False)
    first = (cp.stdout or cp.stderr).strip().splitlines()
    return first[0].split(" [")[0] if first else "unknown"


def git_rev() -> str:
    try:
        cp = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
        return cp.stdout.strip() or "unknown"
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"


def machine_info() -> dict[str, Any]:
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu_model": model,
        "cpus": h.cpu_count(),
        "kernel": platform.release(),
        "python": platform.python_version(),
    }


def markdown(results: dict[str, Any], conns: list[int]) -> str:
    hdr = (
        "| target | conns | req/s | p50 ms | p99 ms | added p50 ms | added p99 ms "
        "| CPU µs/req | RSS MiB | non-2xx | noise % gw/client |"
    )
    lines = [hdr, "|" + "---|" * 11]
    for name, res in results.items():
        if "skipped" in res:
            lines.append(f"| {name} | - | SKIPPED: {res['skipped']} |" + " |" * 8)
            continue
        if "error" in res:
            msg = res["error"].replace("\n", " ").replace("|", "/")[:200]
            lines.append(f"| **{name} ⚠ ERROR** | - | {msg} |" + " |" * 8)
            continue
        label = f"**{name} ⚠ NON-2XX/ERRORS**" if res.get("flagged") else name
        rss = f"{res['rss_mib']:.1f}"
        if res["rss_tree_mib"] - res["rss_mib"] > 0.5:
            rss += f" (tree {res['rss_tree_mib']:.1f})"
        for c in conns:
            r = res["runs"][str(c)]
            bad = r["non2xx"] + r["socket_errors"]
            lines.append(
                f"| {label} | {c} | {h.fmt_num(r['rps'])} | {h.fmt_ms(r['p50_us'])} "
                f"| {h.fmt_ms(r['p99_us'])} | {h.fmt_ms(r.get('added_p50_us'))} "
                f"| {h.fmt_ms(r.get('added_p99_us'))} | {h.fmt_num(r['cpu_us_per_req'], 1)} "
                f"| {rss} | {bad if bad else 0} | {h.noise(r)} |"
            )
    return "\n".join(lines)


# The targets for Bastion.
TARGETS = {"added_p50_ms_c1": 0.5, "added_p99_ms_c1": 2.0, "rps_min": 2000.0, "rss_mib": 150.0}


def check_targets(res: dict[str, Any], conns: list[int]) -> list[str]:
    """PASS/FAIL lines for Bastion against the issue's targets."""
    if "runs" not in res:
        return []
    lo, hi = res["runs"].get("1"), res["runs"][str(max(conns))]
    out = []

    def line(ok: bool, text: str) -> None:
        out.append(f"{'PASS' if ok else 'FAIL'}  {text}")

    if lo is not None and lo.get("added_p50_us") is not None:
        p50, p99 = lo["added_p50_us"] / 1000, lo["added_p99_us"] / 1000
        line(p50 <= TARGETS["added_p50_ms_c1"], f"added p50 @c1 {p50:.3f} ms (<= 0.5)")
        line(p99 <= TARGETS["added_p99_ms_c1"], f"added p99 @c1 {p99:.3f} ms (<= 2)")
    line(hi["rps"] >= TARGETS["rps_min"], f"req/s @c{max(conns)} {hi['rps']:,.0f} (>= 2,000)")
    line(res["rss_tree_mib"] <= TARGETS["rss_mib"], f"RSS {res['rss_tree_mib']:.1f} MiB (<= 150)")
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--duration", type=float, default=10.0, help="seconds per measured run")
    p.add_argument("--warmup", type=float, default=3.0, help="warm-up seconds per target")
    p.add_argument("--repeat", type=int, default=1, help="runs per point; medians reported")
    p.add_argument(
        "--quiet-wait",
        type=float,
        default=60.0,
        help="before each run wait up to this many s for both cores to be <= --quiet-pct "
        "busy (0: don't wait)",
    )
    p.add_argument("--quiet-pct", type=float, default=15.0)
    p.add_argument("--connections", default="1,32", help="comma list (wrk -c), -t1 always")
    p.add_argument(
        "--targets",
        default=",".join(ALL_TARGETS),
        help=f"comma list from {','.join(ALL_TARGETS)} (direct baseline always runs)",
    )
    p.add_argument(
        "--bastion-policy",
        default="",
        help="extra YAML appended to the generated policy (file path or text); "
        "must not redefine providers/models",
    )
    p.add_argument(
        "--bastion-env",
        action="append",
        default=[],
        metavar="K=V",
        help="extra environment for bastion serve (repeatable)",
    )
    p.add_argument("--bastion-bin", default=str(DEFAULT_BASTION))
    p.add_argument("--redis-url", default="redis://127.0.0.1:6379/0", help="for bastion-gov-redis")
    p.add_argument("--litellm-bin", default=str(DEFAULT_LITELLM))
    p.add_argument("--key", default=h.BENCH_KEY, help="bench API key (LiteLLM needs sk-...)")
    p.add_argument("--gateway-core", type=int, default=1)
    p.add_argument("--client-core", type=int, default=0, help="core for wrk and the upstream")
    p.add_argument("--ready-timeout", type=float, default=180.0)
    p.add_argument("--out", default="", help="JSON path (default bench/results/gateway-<ts>.json)")
    a = p.parse_args(argv)
    a.connections = [int(x) for x in a.connections.split(",") if x]
    a.targets = [t.strip() for t in a.targets.split(",") if t.strip()]
    for t in a.targets:
        if t not in STARTERS:
            p.error(f"unknown target {t!r}; choose from {', '.join(ALL_TARGETS)}")
    cores = os.sched_getaffinity(0)
    if a.gateway_core not in cores or a.client_core not in cores:
        p.error(f"cores {a.client_core}/{a.gateway_core} not available (have {sorted(cores)})")
    return a


def _on_signal(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    h.require_tools("wrk", "nginx", "taskset")
    signal.signal(signal.SIGTERM, _on_signal)
    ts = time.strftime("%Y%m%d-%H%M%S")
    workdir = h.make_tempdir("bastion-bench-")
    upstream: h.Proc | None = None
    ctx: Ctx | None = None
    results: dict[str, Any] = {}
    try:
        upstream, up_port = h.start_nginx_upstream(workdir / "upstream", a.client_core)
        ctx = Ctx(a, workdir, up_port)
        params = h.BenchParams(
            a.connections,
            a.duration,
            a.warmup,
            a.client_core,
            a.key,
            repeat=a.repeat,
            quiet_timeout_s=a.quiet_wait,
            quiet_pct=a.quiet_pct,
            gateway_core=a.gateway_core,
            upstream_pid=upstream.pid,
        )
        h.log(f"nginx upstream on 127.0.0.1:{up_port} (core {a.client_core}, with wrk)")
        direct = h.bench_target(
            "nginx-direct", f"http://127.0.0.1:{up_port}", upstream.pid, params, None
        )
        results["nginx-direct"] = direct
        if "runs" not in direct:
            raise RuntimeError(f"upstream baseline failed: {direct}")
        baseline = h.baseline_of(direct)
        for name in a.targets:
            h.log(f"--- {name}")
            started: Started | None = None
            try:
                started = STARTERS[name](ctx)
                res = h.bench_target(name, started.url, started.proc.pid, params, baseline)
                res.update(started.info)
                results[name] = res
                if "error" in res:
                    h.log(f"{name}: {res['error']}")
            except SkipTarget as e:
                h.log(f"{name}: SKIPPED - {e}")
                results[name] = {"skipped": str(e)}
            except RuntimeError as e:
                h.log(f"{name}: ERROR - {e}")
                results[name] = {"error": str(e)}
            finally:
                if started is not None:
                    started.proc.stop()
    finally:
        for p in ctx.procs if ctx else []:
            p.stop()
        if upstream is not None:
            upstream.stop()
        shutil.rmtree(workdir, ignore_errors=True)

    report = {
        "timestamp": ts,
        "machine": machine_info(),
        "layout": {
            "client_core": a.client_core,
            "gateway_core": a.gateway_core,
            "note": "wrk and the static nginx upstream share client_core; the gateway under "
            "test runs alone on gateway_core",
        },
        "tools": {"wrk": wrk_version(), "nginx": nginx_version()},
        "params": {
            "duration_s": a.duration,
            "warmup_s": a.warmup,
            "connections": a.connections,
            "repeat": a.repeat,
            "wrk_threads": 1,
        },
        "results": results,
        "bastion_targets": check_targets(results.get("bastion", {}), a.connections),
    }
    out = Path(a.out) if a.out else RESULTS_DIR / f"gateway-{ts}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(markdown(results, a.connections))
    checks = check_targets(results.get("bastion", {}), a.connections)
    if checks:
        print("\nBastion vs targets:\n" + "\n".join(f"  {c}" for c in checks))
    print(
        "\nadded = target minus nginx-direct at the same -c; noise % = load from other processes "
        "on the gateway core / on the wrk+upstream core during the run (max over repeats)"
    )
    print(f"\nJSON: {out}")
    flagged = [n for n, r in results.items() if r.get("flagged") or "error" in r]
    if flagged:
        print(f"FLAGGED (non-2xx, socket errors or failures): {', '.join(flagged)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
