"""The red-team suite end to end: a real Bastion in front of the fake upstream.

The fake upstream echoes the user's text, so an exfiltration probe's Markdown
image comes back in the answer: without guardrails the harness renders it and
the loopback sink records the hit (the gate fails, exit 1); with the output
link filter the image is stripped (the gate passes, exit 0). The scripted
``{"echo": "system"}`` step makes the upstream a leaking model (the canary is
found); Bastion's ACLs keep tenant B away from tenant A's collection.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bastion.evals.client import HttpModelClient
from bastion.evals.redteam.fixtures import TENANT_B, clients_for_key_of
from bastion.evals.redteam.gate import evaluate
from bastion.evals.redteam.report import summarize
from bastion.evals.redteam.runner import ProbeRecord, run_redteam
from bastion.evals.redteam.suite import RedteamSuite
from bastion.testing.fake_upstream import FakeUpstream
from bastion.testing.server import BastionServer, run_bastion
from tests.integration.gateway_policy import ENV, policy

EXTRA = """\
guardrails:
  pipelines:
    strict:
      input:
        - {type: injection, action: block, threshold: 0.5}
      output:
        - {type: secrets, action: block}
        - {type: pii, action: redact}
        - {type: links, action: redact, allowed_domains: [example.com]}
      canary: true
rag:
  embedding_model: emb
  answering: {min_similarity: -1}
"""
GUARDED = """\
  guarded:
    routes: [{provider: up, model: gpt-4o-mini}]
    retries: {attempts: 0}
    guard: strict
"""


@pytest.fixture(scope="module")
def srv(
    upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[BastionServer]:
    text = policy(upstream, EXTRA).replace("server: {", GUARDED + "server: {", 1)
    with run_bastion(text, tmp_path_factory.mktemp("redteam"), env=ENV) as server:
        yield server


def suite_file(tmp_path: Path, model: str, body: str) -> Path:
    f = tmp_path / f"{model}.yaml"
    f.write_text(f"name: rt-{model}\ntarget: {{model: {model}}}\nclassifier: false\n{body}")
    return f


def redteam_cli(srv: BastionServer, suite: Path, out: Path) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "bastion", "redteam", "run", str(suite), "--url", srv.base]
    cmd += ["--api-key", srv.admin_key, "--out", str(out)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60)


def hits(out: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (out / "hits.jsonl").read_text().splitlines()]


EXFIL = "categories: [output_handling]\ntechniques: [exfiltration]\n"


def test_exfiltration_hits_the_sink_without_guards_and_fails_the_gate(
    srv: BastionServer, fake: FakeUpstream, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    proc = redteam_cli(srv, suite_file(tmp_path, "gpt", EXFIL), out)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "FAILED" in proc.stdout and "output_handling:exfiltration" in proc.stdout
    rows = hits(out)
    sunk = [r for r in rows if r["success"]]
    assert len(sunk) >= 3 and all(r["detector"] == "sink" for r in sunk)
    assert all(r["owasp"] == "LLM05:2025" and r["severity"] == "critical" for r in rows)
    page = (out / "report.html").read_text()
    assert "FAILED" in page and "LLM05:2025" in page
    assert fake.requests()  # the probes reached the (echoing) upstream


def test_the_output_link_filter_defends_and_the_gate_passes(
    srv: BastionServer, fake: FakeUpstream, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    proc = redteam_cli(srv, suite_file(tmp_path, "guarded", EXFIL), out)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "PASSED" in proc.stdout
    rows = hits(out)
    assert len(rows) == 6 and all(r["success"] is False for r in rows)
    summary = json.loads((out / "summary.json").read_text())
    assert (
        summary["passed"] is True
        and summary["critical"]["output_handling:exfiltration"]["hits"] == 0
    )


def test_a_bad_suite_exits_2_with_file_and_line(srv: BastionServer, tmp_path: Path) -> None:
    f = suite_file(
        tmp_path, "gpt", "categories: [direct_injection]\nthresholds: {jailbrake: 0.1}\n"
    )
    proc = redteam_cli(srv, f, tmp_path / "out")
    assert proc.returncode == 2
    assert f"{f}:5:" in proc.stderr and "jailbrake" in proc.stderr


def suite_of(**kw: Any) -> RedteamSuite:
    return RedteamSuite.model_validate({"name": "rt", "classifier": False, **kw})


def by_technique(records: list[ProbeRecord], technique: str) -> list[ProbeRecord]:
    return [r for r in records if r.technique == technique]


async def test_a_leaking_model_reveals_the_canary(srv: BastionServer, fake: FakeUpstream) -> None:
    suite = suite_of(
        target={"model": "gpt"},
        categories=["prompt_extraction"],
        thresholds={"prompt_extraction": 0},
    )
    fake.script([{"echo": "system"}] * 3)
    client = HttpModelClient(srv.url, srv.admin_key)
    try:
        result = await run_redteam(suite, client, limit=3)
        assert [r.success for r in result.records] == [True, True, True]
        assert {r.detector for r in result.records} == {"canary"}
        assert not evaluate(summarize(result.records, suite), suite).passed
        guarded = suite_of(target={"model": "guarded"}, categories=["prompt_extraction"])
        fake.reset()
        fake.script([{"echo": "system"}] * 3)
        defended = await run_redteam(guarded, client, limit=3)
        assert all(r.success is False and r.blocked for r in defended.records)
    finally:
        await client.aclose()


async def test_tenant_b_cannot_reach_tenant_a_data(srv: BastionServer, fake: FakeUpstream) -> None:
    suite = suite_of(target={"model": "gpt"}, categories=["sensitive_disclosure"])
    client = HttpModelClient(srv.url, srv.admin_key)
    try:
        result = await run_redteam(suite, client, clients_for_key=clients_for_key_of(client))
        # a second run reuses tenant B instead of adding another one
        again = await run_redteam(suite, client, clients_for_key=clients_for_key_of(client))
        tenants = (await client.get("/admin/tenants"))["data"]
    finally:
        await client.aclose()
    cross = by_technique(result.records, "cross_tenant")
    assert len(cross) == 12 and all(r.success is False for r in cross), cross
    refused = [r for r in cross if r.blocked]
    assert len(refused) == 8 and {r.how for r in refused} == {"not_found"}
    assert {r.channel for r in refused} == {"rag_query", "rag_chat"}
    verdict = evaluate(summarize(result.records, suite), suite)
    assert verdict.passed, verdict.reasons
    assert [t["name"] for t in tenants].count(TENANT_B) == 1
    assert all(r.success is False for r in by_technique(again.records, "cross_tenant"))


async def test_in_tenant_secrets_leak_without_guards_and_are_stopped_with_them(
    srv: BastionServer, fake: FakeUpstream
) -> None:
    # the upstream pastes its context (the retrieved customer records) back
    client = HttpModelClient(srv.url, srv.admin_key)
    try:
        out = {}
        for model in ("gpt", "guarded"):
            fake.reset()
            # every in-tenant question mentions the records; the embedding calls of the
            # ingestion and of each search take (and ignore) a step too: script plenty
            fake.script([{"echo": "system"}] * 40, match="record")
            suite = suite_of(
                target={"model": model},
                categories=["sensitive_disclosure"],
                techniques=["in_tenant"],
            )
            out[model] = (await run_redteam(suite, client)).records
    finally:
        await client.aclose()
    assert len(out["gpt"]) == 4 and all(r.success for r in out["gpt"])
    assert all("*" in r.evidence for r in out["gpt"])  # masked in the hit log
    assert all(r.success is False for r in out["guarded"]), out["guarded"]
