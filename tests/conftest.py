"""Shared fixtures: a loopback-only network guard, the fake upstream, servers."""

from __future__ import annotations

import ipaddress
import os
import shutil
import socket
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

from bastion.testing.fake_upstream import FakeUpstream, run_fake_upstream

_real_connect = socket.socket.connect
_real_connect_ex = socket.socket.connect_ex


def _check(address: object) -> None:
    if isinstance(address, tuple) and address:
        host = str(address[0])
        try:
            ok = ipaddress.ip_address(host).is_loopback
        except ValueError:
            ok = host == "localhost"
        if not ok:
            raise ConnectionRefusedError(f"tests may only connect to loopback, not {host}")


def _guarded_connect(self: socket.socket, address: object) -> None:
    _check(address)
    return _real_connect(self, address)  # type: ignore[arg-type]


def _guarded_connect_ex(self: socket.socket, address: object) -> int:
    _check(address)
    return _real_connect_ex(self, address)  # type: ignore[arg-type]


@pytest.fixture(autouse=True, scope="session")
def loopback_only() -> Iterator[None]:
    """Block every non-loopback connection made from the test process."""
    socket.socket.connect = _guarded_connect  # type: ignore[method-assign]
    socket.socket.connect_ex = _guarded_connect_ex  # type: ignore[method-assign]
    yield
    socket.socket.connect = _real_connect  # type: ignore[method-assign]
    socket.socket.connect_ex = _real_connect_ex  # type: ignore[method-assign]


@pytest.fixture(scope="session")
def upstream() -> Iterator[FakeUpstream]:
    """One fake upstream process for the session; reset before each test using it."""
    with run_fake_upstream() as up:
        yield up


@pytest.fixture
def fake(upstream: FakeUpstream) -> FakeUpstream:
    upstream.reset()
    return upstream


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """A pgserver (PostgreSQL 16 + pgvector) for the session, RAG schema upgraded.

    Its data lives outside pytest's temporary tree: a concurrent pytest run
    prunes old ``pytest-N`` directories, which would pull the data from under
    the server.
    """
    from bastion.store.rag.postgres import upgrade

    base = Path(tempfile.mkdtemp(prefix="bastion-pgserver-"))
    with warnings.catch_warnings():
        # platformdirs warns when XDG_RUNTIME_DIR is unset (pgserver asks it at import).
        warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR")
        try:
            import pgserver
        except ImportError as exc:  # the dev extra is missing: fail in CI, else skip
            shutil.rmtree(base, ignore_errors=True)
            if os.environ.get("CI") == "true":
                pytest.fail(f"pgserver is not installed: {exc}")
            pytest.skip(f"pgserver is not installed: {exc}")
        server = pgserver.get_server(base / "data", cleanup_mode="stop")
    try:
        url = server.get_uri()
        upgrade(url)
        yield url
    finally:
        server.cleanup()
        shutil.rmtree(base, ignore_errors=True)
