"""Shared plumbing for the gateway benchmarks (stdlib only).

Processes, a private nginx (static upstream or proxy hop), wrk runs, and per-process-tree
CPU / RSS accounting from /proc.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
LUA_SCRIPT = HERE / "post.lua"
BENCH_KEY = "sk-bench-0123456789abcdef"
BENCH_MODEL = "bench-model"
CLK_TCK = os.sysconf("SC_CLK_TCK")
CHAT_BODY = (
    b'{"model":"' + BENCH_MODEL.encode() + b'","messages":[{"role":"user","content":"hello"}]}'
)

# The fixed upstream answer (a realistic small non-streaming chat.completion).
UPSTREAM_COMPLETION: dict[str, Any] = {
    "id": "chatcmpl-bench0001",
    "object": "chat.completion",
    "created": 1700000000,
    "model": "gpt-4o-mini-2024-07-18",
    "choices": [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "Hello! How can I help you today?"},
            "logprobs": None,
            "finish_reason": "stop",
        }
    ],
    "usage": {"prompt_tokens": 9, "completion_tokens": 9, "total_tokens": 18},
    "system_fingerprint": "fp_bench",
}


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def require_tools(*names: str) -> None:
    missing = [n for n in names if shutil.which(n) is None]
    if missing:
        sys.exit(
            f"missing tools: {', '.join(missing)} "
            "(Debian: apt-get update && apt-get install -y wrk nginx util-linux)"
        )


def cpu_count() -> int:
    return len(os.sched_getaffinity(0))


# --------------------------------------------------------------------------- processes


class Proc:
    """A child process in its own session (killed as a group on stop())."""

    def __init__(
        self,
        name: str,
        argv: list[str],
        *,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
        log_path: Path | None = None,
        stop_signal: int = signal.SIGTERM,
    ) -> None:
        self.name = name
        self.argv = argv
        self.stop_signal = stop_signal
        self.log_path = log_path
        out = open(log_path, "wb") if log_path else subprocess.DEVNULL  # noqa: SIM115
        self.popen = subprocess.Popen(
            argv,
            env=env,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        if log_path:
            out.close()  # type: ignore[union-attr]

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, n: int = 30) -> str:
        if not self.log_path or not self.log_path.exists():
            return ""
        lines = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(lines[-n:])

    def stop(self, timeout: float = 10.0) -> None:
        if self.popen.poll() is not None:
            return
        try:
            os.killpg(self.popen.pid, self.stop_signal)
        except ProcessLookupError:
            return
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout=timeout)
        # Whatever is left in the group (children, or a stubborn leader) gets SIGKILL.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        try:
            self.popen.wait(timeout=5)
        except subprocess.TimeoutExpired:
            log(f"warning: {self.name} (pid {self.pid}) did not exit")


def pinned(core: int | None, argv: list[str]) -> list[str]:
    return argv if core is None else ["taskset", "-c", str(core), *argv]


# --------------------------------------------------------------------------- /proc accounting


def _children_map() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            raw = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = raw[raw.rindex(")") + 2 :].split()
        kids.setdefault(int(fields[1]), []).append(int(entry))
    return kids


def process_tree(pid: int) -> list[int]:
    kids = _children_map()
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(kids.get(p, []))
    return out


def _cpu_ticks(pid: int) -> int:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0
    fields = raw[raw.rindex(")") + 2 :].split()
    # fields[0] is field 3 (state): utime=14, stime=15, cutime=16, cstime=17
    return sum(int(x) for x in fields[11:15])


def tree_cpu_seconds(pid: int) -> float:
    """utime+stime (+ reaped children's) of pid and all its live descendants."""
    return sum(_cpu_ticks(p) for p in process_tree(pid)) / CLK_TCK


def _rss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def tree_rss_mib(pid: int) -> tuple[float, float]:
    """(RSS of pid, summed RSS of pid's whole tree) in MiB."""
    tree = process_tree(pid)
    return _rss_kib(pid) / 1024, sum(_rss_kib(p) for p in tree) / 1024


def core_ticks() -> dict[int, tuple[int, int, int]]:
    """{core: (busy, total, steal)} jiffies from /proc/stat."""
    out: dict[int, tuple[int, int, int]] = {}
    for line in Path("/proc/stat").read_text().splitlines():
        if not line.startswith("cpu") or line.startswith("cpu "):
            continue
        name, *vals = line.split()
        v = [int(x) for x in vals[:8]]
        total = sum(v)
        idle = v[3] + v[4]
        out[int(name[3:])] = (total - idle, total, v[7])
    return out


def wait_quiet(cores: list[int], max_busy_pct: float, timeout_s: float) -> float:
    """Wait until each core in cores is <= max_busy_pct busy over a 1 s window.

    Returns the seconds waited. Other people's jobs on a shared box ruin tail latencies;
    this skips their bursts (it gives up after timeout_s and goes on).
    """
    t0 = time.monotonic()
    while True:
        a = core_ticks()
        time.sleep(1.0)
        b = core_ticks()
        busy = {c: 100 * (b[c][0] - a[c][0]) / max(1, b[c][1] - a[c][1]) for c in cores if c in b}
        waited = time.monotonic() - t0
        if all(v <= max_busy_pct for v in busy.values()):
            return waited
        if waited >= timeout_s:
            log(f"machine still busy after {waited:.0f}s ({busy}); measuring anyway")
            return waited


# --------------------------------------------------------------------------- HTTP checks


def http_status(
    url: str,
    *,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 5.0,
) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=body, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return int(resp.status), resp.read()
    except urllib.error.HTTPError as e:
        return int(e.code), e.read()
    except (urllib.error.URLError, OSError):
        return 0, b""


def wait_http(
    url: str,
    proc: Proc,
    *,
    timeout: float,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> None:
    deadline = time.monotonic() + timeout
    last = 0
    while time.monotonic() < deadline:
        if not proc.alive():
            raise RuntimeError(f"{proc.name} exited early:\n{proc.log_tail()}")
        last, _ = http_status(url, body=body, headers=headers, timeout=2.0)
        if last == 200:
            return
        time.sleep(0.2)
    raise RuntimeError(f"{proc.name}: {url} not 200 after {timeout:.0f}s (last {last})")


def chat_check(url: str, key: str = BENCH_KEY) -> tuple[int, bytes]:
    return http_status(
        url,
        body=CHAT_BODY,
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {key}"},
        timeout=30.0,
    )


# --------------------------------------------------------------------------- nginx


def _nginx_conf(workdir: Path, port: int, server_block: str, extra_http: str = "") -> str:
    user = "user root;\n" if os.geteuid() == 0 else ""
    return f"""{user}daemon off;
master_process on;
worker_processes 1;
pid {workdir}/nginx.pid;
error_log {workdir}/error.log warn;
events {{ worker_connections 4096; multi_accept on; }}
http {{
    access_log off;
    client_body_temp_path {workdir}/client_body;
    proxy_temp_path {workdir}/proxy;
    fastcgi_temp_path {workdir}/fastcgi;
    uwsgi_temp_path {workdir}/uwsgi;
    scgi_temp_path {workdir}/scgi;
    keepalive_requests 1000000;
    keepalive_timeout 120s;
    {extra_http}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        {server_block}
    }}
}}
"""


def start_nginx_upstream(workdir: Path, core: int | None) -> tuple[Proc, int]:
    """Static upstream: POST /v1/chat/completions returns a fixed chat.completion JSON."""
    port = free_port()
    body = json.dumps(UPSTREAM_COMPLETION, separators=(",", ":"))
    # nginx string literal in single quotes: escape backslashes and single quotes.
    body = body.replace("\\", "\\\\").replace("'", "\\'")
    block = f"""
        default_type application/json;
        location = /v1/chat/completions {{ return 200 '{body}'; }}
        location = /v1/models {{
            return 200 '{{"object":"list","data":[{{"id":"gpt-4o-mini","object":"model"}}]}}';
        }}
        location / {{ return 404 '{{"error":"not found"}}'; }}
    """
    return _start_nginx("nginx-upstream", workdir, port, block, "", core), port


def start_nginx_proxy(workdir: Path, upstream_port: int, core: int | None) -> tuple[Proc, int]:
    """A plain nginx reverse-proxy hop with a keep-alive upstream pool."""
    port = free_port()
    extra = f"upstream up {{ server 127.0.0.1:{upstream_port}; keepalive 64; }}"
    block = """
        location / {
            proxy_pass http://up;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering on;
        }
    """
    return _start_nginx("nginx-proxy", workdir, port, block, extra, core), port


def _start_nginx(
    name: str, workdir: Path, port: int, block: str, extra: str, core: int | None
) -> Proc:
    workdir.mkdir(parents=True, exist_ok=True)
    conf = workdir / "nginx.conf"
    conf.write_text(_nginx_conf(workdir, port, block, extra))
    proc = Proc(
        name,
        pinned(core, ["nginx", "-p", str(workdir), "-c", str(conf)]),
        log_path=workdir / "stdout.log",
        stop_signal=signal.SIGQUIT,
    )
    try:
        wait_http(f"http://127.0.0.1:{port}/v1/models", proc, timeout=15)
    except RuntimeError:
        err = (workdir / "error.log").read_text() if (workdir / "error.log").exists() else ""
        proc.stop()
        raise RuntimeError(f"{name} failed to start:\n{proc.log_tail()}\n{err}") from None
    return proc


# --------------------------------------------------------------------------- wrk


@dataclass
class WrkResult:
    connections: int
    requests: int
    duration_s: float
    rps: float
    p50_us: int
    p90_us: int
    p99_us: int
    mean_us: float
    max_us: int
    non2xx: int
    socket_errors: int
    first_non2xx: str = ""
    cpu_s: float | None = None
    cpu_us_per_req: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d.pop("extra")
        d.update(self.extra)
        return d


def run_wrk(
    url: str,
    *,
    connections: int,
    duration_s: float,
    core: int | None,
    threads: int = 1,
    key: str = BENCH_KEY,
    measure_pid: int | None = None,
    client_pid: int | None = None,
    timeout_s: float = 10.0,
) -> WrkResult:
    argv = pinned(
        core,
        [
            "wrk",
            f"-t{threads}",
            f"-c{connections}",
            f"-d{max(1, round(duration_s))}s",
            f"--timeout={timeout_s:g}s",
            "-s",
            str(LUA_SCRIPT),
            url,
        ],
    )
    env = dict(os.environ, BENCH_KEY=key, BENCH_MODEL=BENCH_MODEL)
    cpu0 = tree_cpu_seconds(measure_pid) if measure_pid else None
    up0 = tree_cpu_seconds(client_pid) if client_pid else 0.0
    kids0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    ticks0 = core_ticks()
    cp = subprocess.run(
        argv, env=env, capture_output=True, text=True, timeout=duration_s + 60, check=False
    )
    ticks1 = core_ticks()
    kids1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    up1 = tree_cpu_seconds(client_pid) if client_pid else 0.0
    cpu1 = tree_cpu_seconds(measure_pid) if measure_pid else None
    # CPU of wrk itself (the only child reaped meanwhile) plus the upstream's, if given.
    client_cpu = kids1.ru_utime + kids1.ru_stime - kids0.ru_utime - kids0.ru_stime + (up1 - up0)
    line = next((ln for ln in cp.stdout.splitlines() if ln.startswith("BENCH_RESULT ")), None)
    if cp.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed (rc {cp.returncode}):\n{cp.stdout}\n{cp.stderr}")
    data = json.loads(line.removeprefix("BENCH_RESULT "))
    res = WrkResult(
        connections=connections,
        requests=int(data["requests"]),
        duration_s=data["duration_us"] / 1e6,
        rps=float(data["rps"]),
        p50_us=int(data["p50_us"]),
        p90_us=int(data["p90_us"]),
        p99_us=int(data["p99_us"]),
        mean_us=float(data["mean_us"]),
        max_us=int(data["max_us"]),
        non2xx=int(data["non2xx"]),
        socket_errors=sum(
            int(data[k]) for k in ("connect_errors", "read_errors", "write_errors", "timeouts")
        ),
        first_non2xx=str(data.get("first_non2xx", "")),
    )
    if cpu0 is not None and cpu1 is not None:
        res.cpu_s = round(cpu1 - cpu0, 3)
        if res.requests:
            res.cpu_us_per_req = round((cpu1 - cpu0) * 1e6 / res.requests, 1)
    cores: dict[str, Any] = {}
    for core, (b1, t1, s1) in ticks1.items():
        b0, t0, s0 = ticks0.get(core, (b1, t1, s1))
        if t1 > t0:
            cores[str(core)] = {
                "busy_pct": round(100 * (b1 - b0) / (t1 - t0), 1),
                "steal_pct": round(100 * (s1 - s0) / (t1 - t0), 1),
            }
    res.extra["cores"] = cores
    res.extra["client_cpu_s"] = round(client_cpu, 3)
    return res


def make_tempdir(prefix: str) -> Path:
    return Path(tempfile.mkdtemp(prefix=prefix))


def fmt_ms(us: float | None) -> str:
    return "n/a" if us is None else f"{us / 1000:.3f}"


def fmt_num(x: float | None, digits: int = 0) -> str:
    return "n/a" if x is None else f"{x:,.{digits}f}"


@dataclass
class BenchParams:
    connections: list[int]
    duration_s: float
    warmup_s: float
    client_core: int | None
    key: str = BENCH_KEY
    repeat: int = 1
    gateway_core: int | None = None
    quiet_timeout_s: float = 0.0
    quiet_pct: float = 15.0
    upstream_pid: int | None = None


def baseline_of(direct: dict[str, Any]) -> dict[int, tuple[int, int]]:
    """{connections: (p50_us, p99_us)} from a bench_target() result."""
    return {int(c): (r["p50_us"], r["p99_us"]) for c, r in direct.get("runs", {}).items()}


def bench_target(
    name: str,
    url: str,
    pid: int,
    bp: BenchParams,
    baseline: dict[int, tuple[int, int]] | None,
) -> dict[str, Any]:
    """Preflight one chat request, warm up, then one wrk run per connection count.

    CPU is the utime+stime delta of pid's process tree over each measured run; RSS is read
    after the last run. A preflight that is not a 200 chat.completion aborts the target
    (result has "error"); non-2xx answers or socket errors during runs set "flagged".
    """
    chat = f"{url}/v1/chat/completions"
    status, body = chat_check(chat, bp.key)
    out: dict[str, Any] = {"preflight_status": status}
    if status != 200 or b'"choices"' not in body:
        out["error"] = f"preflight POST returned {status}: {body[:300]!r}"
        return out
    if bp.warmup_s > 0:
        log(f"{name}: warm-up {bp.warmup_s:g}s at -c{max(bp.connections)}")
        run_wrk(
            chat,
            connections=max(bp.connections),
            duration_s=bp.warmup_s,
            core=bp.client_core,
            key=bp.key,
        )
    runs: dict[str, Any] = {}
    for c in bp.connections:
        samples = []
        for i in range(max(1, bp.repeat)):
            rep = f" (run {i + 1}/{bp.repeat})" if bp.repeat > 1 else ""
            waited = 0.0
            if bp.quiet_timeout_s > 0:
                cores = [x for x in (bp.client_core, bp.gateway_core) if x is not None]
                waited = wait_quiet(cores, bp.quiet_pct, bp.quiet_timeout_s)
            log(f"{name}: {bp.duration_s:g}s at -c{c} -t1{rep}")
            r = run_wrk(
                chat,
                connections=c,
                duration_s=bp.duration_s,
                core=bp.client_core,
                key=bp.key,
                measure_pid=pid,
                client_pid=bp.upstream_pid,
            )
            if r.non2xx or r.socket_errors:
                log(
                    f"WARNING {name} -c{c}: {r.non2xx} non-2xx, {r.socket_errors} socket "
                    f"errors (first: {r.first_non2xx})"
                )
            sample = r.to_json()
            sample["waited_for_quiet_s"] = round(waited, 1)
            samples.append(sample)
        # The direct baseline measures the upstream itself: nothing of ours on the gateway core.
        gw_core = bp.gateway_core if pid != bp.upstream_pid else None
        d = aggregate(samples, gw_core, bp.client_core)
        if gw_core is None and bp.gateway_core is not None:
            d["gateway_core_other_pct"] = max(
                (s["cores"].get(str(bp.gateway_core), {}).get("busy_pct", 0.0) for s in samples),
                default=None,
            )
        if baseline and c in baseline:
            d["added_p50_us"] = d["p50_us"] - baseline[c][0]
            d["added_p99_us"] = d["p99_us"] - baseline[c][1]
        runs[str(c)] = d
    rss, rss_tree = tree_rss_mib(pid)
    out.update(
        runs=runs,
        rss_mib=round(rss, 1),
        rss_tree_mib=round(rss_tree, 1),
        processes=len(process_tree(pid)),
        flagged=any(r["non2xx"] or r["socket_errors"] for r in runs.values()),
    )
    return out


def aggregate(
    samples: list[dict[str, Any]], gateway_core: int | None, client_core: int | None = None
) -> dict[str, Any]:
    """Median of each metric over repeated runs; error counts are summed."""
    med_keys = ("rps", "p50_us", "p90_us", "p99_us", "mean_us", "cpu_us_per_req")
    d: dict[str, Any] = {"connections": samples[0]["connections"], "repeat": len(samples)}
    for k in med_keys:
        vals = [s[k] for s in samples if s.get(k) is not None]
        d[k] = statistics.median(vals) if vals else None
    for k in ("p50_us", "p90_us", "p99_us"):
        d[k] = round(d[k]) if d[k] is not None else None
    d["max_us"] = max(s["max_us"] for s in samples)
    for k in ("requests", "non2xx", "socket_errors"):
        d[k] = sum(int(s[k]) for s in samples)
    d["first_non2xx"] = next((s["first_non2xx"] for s in samples if s["first_non2xx"]), "")
    # Share of each core used by processes other than ours (noise from the rest of the box).
    # Gateway core: busy minus the gateway's CPU. Client core: busy minus wrk + upstream.
    gw, cl = [], []
    for s in samples:
        dur = s["duration_s"]
        cores = s.get("cores", {})
        if dur <= 0:
            continue
        if gateway_core is not None and str(gateway_core) in cores and s.get("cpu_s") is not None:
            own = 100 * s["cpu_s"] / dur
            gw.append(max(0.0, cores[str(gateway_core)]["busy_pct"] - own))
        if client_core is not None and str(client_core) in cores:
            own = 100 * s.get("client_cpu_s", 0.0) / dur
            cl.append(max(0.0, cores[str(client_core)]["busy_pct"] - own))
    if gw:
        d["gateway_core_other_pct"] = round(max(gw), 1)
    if cl:
        d["client_core_other_pct"] = round(max(cl), 1)
    d["samples"] = samples
    return d


def noise(r: dict[str, Any]) -> str:
    """Load from other processes on the gateway core / the client core, in percent."""
    gw, cl = r.get("gateway_core_other_pct"), r.get("client_core_other_pct")
    return f"{fmt_num(gw, 0)}/{fmt_num(cl, 0)}"
