"""Handles on a fake upstream process: :class:`FakeUpstream` and :func:`run_fake_upstream`.

:func:`run_fake_upstream` starts ``python -m bastion.testing.fake_upstream`` on a
free loopback port and yields a :class:`FakeUpstream`, which wraps the URLs and
the ``/_control`` API.
"""

from __future__ import annotations

import contextlib
import select
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx

from bastion.testing.fake_upstream.plan import JSON
from bastion.testing.fake_upstream.server import READY


class FakeUpstream:
    """A handle on a running fake upstream: its URLs and its control API."""

    def __init__(self, base: str, process: subprocess.Popen[str] | None = None) -> None:
        self.base = base.rstrip("/")
        """``http://127.0.0.1:PORT`` (the Anthropic SDK's ``base_url``)."""
        self.url = self.base + "/v1"
        """``http://127.0.0.1:PORT/v1`` (the OpenAI SDK's ``base_url``)."""
        self.port = int(self.base.rsplit(":", 1)[1])
        self.process = process
        self._http = httpx.Client(base_url=self.base, timeout=10.0)

    def script(self, steps: list[JSON] | JSON, match: str | None = None) -> None:
        """Queue steps (one per model request), optionally only for ``match``-ing requests."""
        steps = [steps] if isinstance(steps, dict) else steps
        self._http.post(
            "/_control/script", json={"steps": steps, "match": match}
        ).raise_for_status()

    def reset(self) -> None:
        """Drop queued steps, recorded requests and counters."""
        self._http.post("/_control/reset").raise_for_status()

    def requests(self, limit: int | None = None) -> list[JSON]:
        """The last received model requests, oldest first.

        Each is ``{"method", "path", "query", "headers", "body", "time"}``; header names
        are lower-cased, values raw (``authorization`` included, for tests to assert).
        """
        params = {} if limit is None else {"limit": limit}
        r = self._http.get("/_control/requests", params=params)
        r.raise_for_status()
        items: list[JSON] = r.json()["requests"]
        return items

    def stats(self) -> JSON:
        """``{"total", "by_path": {path: {status: n}}, "in_flight", "max_in_flight"}``."""
        r = self._http.get("/_control/stats")
        r.raise_for_status()
        out: JSON = r.json()
        return out

    def close(self) -> None:
        """Close the control client and stop the process, if this handle owns one."""
        self._http.close()
        proc = self.process
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        if proc is not None and proc.stdout is not None:
            proc.stdout.close()


@contextlib.contextmanager
def run_fake_upstream(
    *, api_key: str | None = None, max_requests: int = 1000, startup_timeout: float = 20.0
) -> Iterator[FakeUpstream]:
    """Start the fake upstream as a subprocess on a free loopback port; stop it on exit."""
    cmd = [sys.executable, "-m", "bastion.testing.fake_upstream", "--port", "0"]
    cmd += ["--max-requests", str(max_requests)]
    if api_key is not None:
        cmd += ["--api-key", api_key]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    deadline = time.monotonic() + startup_timeout
    line = ""
    while not line.startswith(READY):
        left = deadline - time.monotonic()
        if left <= 0 or proc.poll() is not None:
            proc.kill()
            proc.wait()
            raise RuntimeError(f"fake upstream did not start (exit code {proc.poll()})")
        if select.select([proc.stdout], [], [], left)[0]:
            line = proc.stdout.readline()
    fake = FakeUpstream(f"http://127.0.0.1:{int(line.split()[1])}", proc)
    try:
        yield fake
    finally:
        fake.close()
