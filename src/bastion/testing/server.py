"""Run a real ``bastion serve`` process for tests (uvicorn on a free loopback port).

>>> with run_bastion(policy_yaml, tmp_path) as srv:
...     client = openai.OpenAI(base_url=srv.url, api_key=srv.admin_key)
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class BastionServer:
    """A running server: ``url`` for SDKs (``.../v1``), ``base`` for raw HTTP."""

    def __init__(
        self,
        port: int,
        proc: subprocess.Popen[bytes],
        data_dir: Path,
        policy: Path | None,
        admin_key: str,
        log_path: Path,
    ) -> None:
        self.port = port
        self.proc = proc
        self.data_dir = data_dir
        self.policy_path = policy
        self.admin_key = admin_key
        self.log_path = log_path
        self.base = f"http://127.0.0.1:{port}"
        self.url = self.base + "/v1"

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")

    def metrics(self) -> str:
        return httpx.get(self.base + "/metrics", timeout=5).text

    def metric(self, name: str, **labels: str) -> float:
        """Sum of a metric's samples whose labels include ``labels``."""
        total = 0.0
        for line in self.metrics().splitlines():
            if not line.startswith(name + "{") and not line.startswith(name + " "):
                continue
            head, _, value = line.rpartition(" ")
            if all(f'{k}="{v}"' in head for k, v in labels.items()):
                total += float(value)
        return total

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return int(self.proc.returncode)


@contextmanager
def run_bastion(
    policy: str | None,
    data_dir: Path,
    *,
    admin_key: str = "test-admin-key",
    env: dict[str, str] | None = None,
    ready_timeout: float = 30,
) -> Iterator[BastionServer]:
    """Start ``python -m bastion serve`` with ``policy`` (YAML text; None: embedded)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    policy_path = None
    if policy is not None:
        policy_path = data_dir / "policy.yaml"
        policy_path.write_text(policy)
    port = free_port()
    cmd = [
        sys.executable,
        "-m",
        "bastion",
        "serve",
        "--port",
        str(port),
        "--data-dir",
        str(data_dir),
    ]
    if policy_path is not None:
        cmd += ["--policy", str(policy_path)]
    log_path = data_dir / f"server-{port}.log"
    full_env = {**os.environ, "BASTION_ADMIN_KEY": admin_key, **(env or {})}
    with log_path.open("wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=full_env)
    srv = BastionServer(port, proc, data_dir, policy_path, admin_key, log_path)
    try:
        deadline = time.monotonic() + ready_timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"bastion exited with {proc.returncode}:\n{srv.logs()}")
            try:
                if httpx.get(srv.base + "/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"bastion not ready after {ready_timeout}s:\n{srv.logs()}")
            time.sleep(0.05)
        yield srv
    finally:
        srv.stop()
