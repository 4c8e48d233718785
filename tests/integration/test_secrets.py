"""Canary secrets never leak into anything a Bastion server writes or serves to operators.

One embedded server (SQLite) runs with canary values for every kind of secret:
the upstream provider keys (``gateway_policy``), a key declared in the policy
file (``env:CANARY_KEY``), the admin key, keys created through the admin API
(one of them revoked) and a wrong key presented by a caller. Traffic covers
OpenAI chat (plain and streamed), Anthropic messages (plain and streamed),
embeddings, upstream 401 and 500 errors, a rejected key and the admin API;
prompts of a ``red-`` tenant (logging mode ``redacted``) carry the canaries
themselves, which the redactor must mask. Spans go to an in-process OTLP/HTTP
collector.

After a SIGTERM (so every queue drains), every canary is searched for in the
server log, every file of the data directory (the SQLite database, and its WAL
while the server runs),
a dump of every table, the audit export, ``/metrics`` and the exported spans.
Positive controls prove each search can find what is meant to be there.
"""

from __future__ import annotations

import gzip
import os
import signal
import sqlite3
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from uuid import uuid4

import anthropic
import httpx
import openai
import pytest

from bastion.testing.fake_upstream import FakeUpstream
from bastion.testing.server import BastionServer, run_bastion
from tests.integration.gateway_policy import ANTHROPIC_KEY, ENV, UPSTREAM_KEY
from tests.integration.governance_helpers import (
    admin,
    gov_policy,
    make_key,
    make_tenant,
    usage,
    wait_keys,
    wait_usage,
)

POLICY_KEYS = """\
keys:
  canary-key: {secret: env:CANARY_KEY}
"""


class _Collector(BaseHTTPRequestHandler):
    """An OTLP/HTTP traces endpoint that keeps the raw (protobuf) bodies."""

    bodies: list[bytes]

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("content-length") or 0))
        if self.headers.get("content-encoding") == "gzip":
            body = gzip.decompress(body)
        self.server.bodies.append(body)  # type: ignore[attr-defined]
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@dataclass
class Evidence:
    """What the server left behind, and what must (not) be in it."""

    canaries: dict[str, str]
    sources: dict[str, bytes] = field(default_factory=dict)
    marker: str = ""  # a non-secret prompt word of a full-logging tenant
    control_rid: str = ""  # the x-request-id of that request
    red_payloads: list[tuple[str, str]] = field(default_factory=list)
    full_payloads: list[tuple[str, str]] = field(default_factory=list)
    red_chat_requests: int = 0


def _say(text: str) -> list[Any]:
    return [{"role": "user", "content": text}]


def _traffic(srv: BastionServer, fake: FakeUpstream, ev: Evidence) -> None:
    c = ev.canaries
    red_tenant, full_tenant = f"red-{uuid4().hex[:6]}", f"full-{uuid4().hex[:6]}"
    make_tenant(srv, red_tenant)
    make_tenant(srv, full_tenant)
    red = make_key(srv, "canary-red", tenant=red_tenant)
    full = make_key(srv, "canary-full", tenant=full_tenant)
    doomed = make_key(srv, "canary-revoked", tenant=red_tenant, role="developer")
    c["created red key"], c["created full key"] = red["key"], full["key"]
    c["created+revoked key"] = doomed["key"]
    for k in (red["key"], full["key"], doomed["key"], c["policy key"]):
        wait_keys(srv, k)

    # the secrets themselves, as a careless user might paste them into a prompt
    leaky = "my keys: " + " ; ".join(
        c[n] for n in ("policy key", "upstream key", "anthropic key", "admin key")
    )
    leaky += f" ; {red['key']} ; {doomed['key']} please keep them safe"

    oa = openai.OpenAI(base_url=srv.url, api_key=red["key"], max_retries=0, timeout=15)
    oa.chat.completions.create(model="gpt", messages=_say(leaky))
    text = "".join(
        ch.choices[0].delta.content or ""
        for ch in oa.chat.completions.create(
            model="gpt",
            messages=_say(leaky + " streamed"),
            stream=True,
            stream_options={"include_usage": True},
        )
        if ch.choices
    )
    assert c["policy key"] in text  # the fake echoes it: it reached the upstream and back
    oa.embeddings.create(model="emb", input=leaky)

    an = anthropic.Anthropic(base_url=srv.base, api_key=red["key"], max_retries=0, timeout=15)
    an.messages.create(model="claude", max_tokens=200, messages=_say(leaky + " anthropic"))
    with an.messages.stream(
        model="claude", max_tokens=200, messages=_say(leaky + " anthropic stream")
    ) as stream:
        "".join(stream.text_stream)
    ev.red_chat_requests = 4

    # upstream failures (OpenAI and Anthropic formats): 401, then 500 on every attempt
    fake.script([{"status": 401}], match="fail-401")
    with pytest.raises(openai.APIStatusError):
        oa.chat.completions.create(model="gpt", messages=_say("fail-401 " + c["policy key"]))
    fake.script([{"status": 500}] * 2, match="fail-500")
    with pytest.raises(openai.APIStatusError):
        oa.chat.completions.create(model="gpt", messages=_say("fail-500"))
    fake.script([{"status": 401}], match="fail-anth")
    with pytest.raises(anthropic.APIStatusError):
        an.messages.create(model="claude", max_tokens=20, messages=_say("fail-anth"))

    # a caller presenting a key that does not exist, on both APIs
    wrong = openai.OpenAI(base_url=srv.url, api_key=c["wrong key"], max_retries=0, timeout=15)
    with pytest.raises(openai.AuthenticationError):
        wrong.chat.completions.create(model="gpt", messages=_say("hello"))
    wrong_an = anthropic.Anthropic(
        base_url=srv.base, api_key=c["wrong key"], max_retries=0, timeout=15
    )
    with pytest.raises(anthropic.AuthenticationError):
        wrong_an.messages.create(model="claude", max_tokens=20, messages=_say("hello"))
    # a key declared in the policy file, on the data plane
    pk = openai.OpenAI(base_url=srv.url, api_key=c["policy key"], max_retries=0, timeout=15)
    pk.chat.completions.create(model="gpt", messages=_say("policy key traffic"))

    # admin plane: revoke with the admin key, then read keys, usage and audit
    assert admin(srv, "DELETE", f"/admin/keys/{doomed['id']}").status_code == 200
    gone = openai.OpenAI(base_url=srv.url, api_key=doomed["key"], max_retries=0, timeout=15)
    with pytest.raises(openai.AuthenticationError):
        gone.models.list()
    for path in ("/admin/keys", "/admin/tenants", "/admin/audit", "/admin/budgets"):
        assert admin(srv, "GET", path).status_code == 200, path
    # the bearer of an admin call in the wrong place: a wrong key on the admin plane
    assert admin(srv, "GET", "/admin/keys", key=c["wrong key"]).status_code == 401

    # positive control: a full-logging tenant's prompt is stored as it was
    fc = openai.OpenAI(base_url=srv.url, api_key=full["key"], max_retries=0, timeout=15)
    fc.chat.completions.create(
        model="gpt",
        messages=_say(f"remember {ev.marker}"),
        extra_headers={"x-request-id": ev.control_rid},
    )
    wait_usage(srv, ev.red_chat_requests, tenant=red_tenant)
    wait_usage(srv, 1, tenant=full_tenant)
    assert usage(srv, group_by="tenant")


def _collect_data_dir(data_dir: Path, ev: Evidence) -> None:
    """Raw bytes of every file (database, WAL, log, policy), then a dump of every row."""
    for path in sorted(p for p in data_dir.rglob("*") if p.is_file()):
        ev.sources[f"file {path.relative_to(data_dir)}"] = path.read_bytes()
    db = sqlite3.connect(f"file:{data_dir / 'bastion.db'}?mode=ro", uri=True)
    try:
        tables = [
            str(r[0]) for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        ]
        for table in tables:
            rows = db.execute(f'SELECT * FROM "{table}"').fetchall()
            ev.sources[f"table {table}"] = "\n".join(map(repr, rows)).encode()
        ev.sources["sqlite iterdump"] = "\n".join(db.iterdump()).encode()
        ev.red_payloads = [
            (str(p), str(cmp))
            for p, cmp in db.execute(
                "SELECT p.prompt, p.completion FROM payloads p "
                "JOIN tenants t ON t.id = p.tenant_id WHERE t.name LIKE 'red-%'"
            )
        ]
        ev.full_payloads = [
            (str(p), str(cmp))
            for p, cmp in db.execute(
                "SELECT p.prompt, p.completion FROM payloads p "
                "JOIN tenants t ON t.id = p.tenant_id WHERE t.name LIKE 'full-%'"
            )
        ]
    finally:
        db.close()


def _audit_export(data_dir: Path) -> bytes:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BASTION_")}
    done = subprocess.run(
        [sys.executable, "-m", "bastion", "audit", "export", "--data-dir", str(data_dir)],
        capture_output=True,
        env=env,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout + b"\n" + done.stderr


@pytest.fixture(scope="module")
def evidence(upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory) -> Evidence:
    tag = uuid4().hex[:12]
    ev = Evidence(
        canaries={
            "upstream key": UPSTREAM_KEY,
            "anthropic key": ANTHROPIC_KEY,
            "policy key": f"bst-canary-policy-{tag}",
            "admin key": f"bst-canary-admin-{tag}",
            "wrong key": f"bst-canary-wrong-{tag}",
        },
        marker=f"positive-control-{tag}",
        control_rid=f"ctl-{tag}",
    )
    collector = ThreadingHTTPServer(("127.0.0.1", 0), _Collector)
    collector.bodies = []  # type: ignore[attr-defined]
    thread = threading.Thread(target=collector.serve_forever, daemon=True)
    thread.start()
    env = {
        **ENV,
        "CANARY_KEY": ev.canaries["policy key"],
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": (
            f"http://127.0.0.1:{collector.server_address[1]}/v1/traces"
        ),
    }
    data_dir = tmp_path_factory.mktemp("secrets") / "data"
    upstream.reset()
    try:
        with run_bastion(
            gov_policy(upstream) + POLICY_KEYS,
            data_dir,
            admin_key=ev.canaries["admin key"],
            env=env,
        ) as srv:
            _traffic(srv, upstream, ev)
            ev.sources["/metrics"] = httpx.get(srv.base + "/metrics", timeout=5).content
            # the files as they are while the server runs (the WAL is checkpointed at exit)
            for path in sorted(p for p in data_dir.rglob("*") if p.is_file()):
                ev.sources[f"live file {path.name}"] = path.read_bytes()
            srv.stop(signal.SIGTERM)  # queues drain, spans flush
            assert srv.proc.returncode in (0, -signal.SIGTERM), srv.logs()[-2000:]
            ev.sources["server log"] = srv.logs().encode()
    finally:
        upstream.reset()
        collector.shutdown()
        thread.join(5)
        collector.server_close()
    ev.sources["exported spans"] = b"\n".join(collector.bodies)  # type: ignore[attr-defined]
    _collect_data_dir(data_dir, ev)
    ev.sources["audit export"] = _audit_export(data_dir)
    return ev


def _hits(ev: Evidence, needle: str) -> list[str]:
    """The sources containing ``needle``, each with the text around its first hit."""
    out = []
    raw = needle.encode()
    for name, blob in ev.sources.items():
        at = blob.find(raw)
        if at >= 0:
            around = blob[max(0, at - 80) : at + len(raw) + 40].decode(errors="replace")
            out.append(f"{name}: ...{around}...")
    return out


# ---------------------------------------------------------------------- tests
def test_no_canary_secret_anywhere(evidence: Evidence) -> None:
    leaks = [
        f"{label} ({value}) found in {hit}"
        for label, value in evidence.canaries.items()
        for hit in _hits(evidence, value)
    ]
    assert not leaks, "canary secrets leaked:\n" + "\n".join(leaks)


def test_positive_controls_prove_the_search_finds_what_is_there(evidence: Evidence) -> None:
    # the full tenant's prompt is stored verbatim: the table dump and the database file
    assert any(evidence.marker in p for p, _ in evidence.full_payloads)
    found = {h.split(":", 1)[0] for h in _hits(evidence, evidence.marker)}
    assert "table payloads" in found and "sqlite iterdump" in found, found
    assert any(name.startswith("file bastion.db") for name in found), found
    assert "live file bastion.db-wal" in evidence.sources
    # the control request's id is in the log, the audit export and the exported spans
    rid = {h.split(":", 1)[0] for h in _hits(evidence, evidence.control_rid)}
    assert {"server log", "audit export", "exported spans"} <= rid, rid
    assert b"bastion_requests_total" in evidence.sources["/metrics"]
    # every canary is a string the search would find: they all went over the wire
    assert evidence.canaries["created red key"].startswith("bst-")
    assert len(evidence.canaries) == 8


def test_redacted_tenant_content_is_stored_with_secrets_masked(evidence: Evidence) -> None:
    # all four chat-like requests of the red tenant stored (redacted) content
    assert len(evidence.red_payloads) >= evidence.red_chat_requests
    for prompt, completion in evidence.red_payloads:
        if "keep them safe" in prompt:
            assert "<API_KEY>" in prompt and "<API_KEY>" in completion, (prompt, completion)
    assert sum("keep them safe" in p for p, _ in evidence.red_payloads) >= 4
