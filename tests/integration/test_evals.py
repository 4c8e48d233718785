"""``bastion eval run`` end to end: a real Bastion server (or the in-process gateway)
in front of the fake upstream, the CLI run as a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx

from bastion.store.sql.database import open_database
from bastion.store.sql.governance import SqlGovernanceStore
from bastion.store.sql.usage import SqlUsageStore
from bastion.store.sqlite.evals import SqliteResultStore
from bastion.telemetry.usage import UsageQuery
from bastion.testing.fake_upstream import FakeUpstream
from bastion.testing.server import BastionServer
from tests.integration.gateway_policy import ENV, policy


def bastion(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if k != "BASTION_ADMIN_KEY"}
    full.update(ENV)
    full.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "bastion", *args],
        capture_output=True,
        text=True,
        env=full,
        timeout=90,
        check=False,
    )


def write_suite(
    tmp: Path, name: str, n: int = 6, *, wrong: int = 0, extra: str = "", threshold: float = 0.9
) -> Path:
    cases = tmp / f"{name}.jsonl"
    with cases.open("w") as f:
        for i in range(n):
            expected = f"echo: question {i}" if i >= wrong else "something else"
            f.write(json.dumps({"id": f"q{i}", "input": f"question {i}", "expected": expected}))
            f.write("\n")
    suite = tmp / f"{name}.yaml"
    suite.write_text(
        f"""name: {name}
target:
  model: gpt
  params: {{temperature: 0, max_tokens: 32}}
dataset: {{path: {cases.name}}}
scorers:
  - type: exact
    threshold: {threshold}
  - type: latency
concurrency: 3
{extra}"""
    )
    return suite


def remote(srv: BastionServer, results: Path) -> list[str]:
    return ["--url", srv.url, "--api-key", srv.admin_key, "--results", str(results)]


def test_passing_suite_exits_0_and_calls_go_through_the_gateway(
    server: BastionServer, fake: FakeUpstream, tmp_path: Path
) -> None:
    suite = write_suite(tmp_path, "smoke", n=8)
    results = tmp_path / "evals.db"
    md, junit = tmp_path / "report.md", tmp_path / "junit.xml"
    cp = bastion(
        "eval", "run", str(suite), *remote(server, results),
        "--report-md", str(md), "--junit", str(junit),
    )  # fmt: skip
    assert cp.returncode == 0, cp.stdout + cp.stderr
    assert "exact" in cp.stdout and "smoke" in cp.stdout
    chats = [r for r in fake.requests() if r["path"] == "/v1/chat/completions"]
    assert len(chats) == 8
    assert fake.stats()["max_in_flight"] <= 3
    store = SqliteResultStore(results)
    run = store.get_run("smoke@latest")
    assert run is not None and run.status == "passed" and run.target == "model:gpt"
    assert run.summary["scorers"]["exact"]["mean"] == 1.0 and run.summary["rows"] == 8
    assert all(r.error is None for r in store.rows(run.id))
    store.close()
    assert md.read_text().strip() and "<testsuite" in junit.read_text()
    # every eval call left a usage row in the gateway, tagged with the suite and the run
    headers = {"authorization": f"Bearer {server.admin_key}"}
    deadline = time.monotonic() + 10
    while True:
        got = httpx.get(
            server.base + "/admin/usage", params={"tag": f"eval-run:{run.id}"}, headers=headers
        ).json()["data"]
        if (got and got[0]["requests"] >= 8) or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert got[0]["requests"] == 8
    # and the run is listed
    listed = bastion("eval", "runs", "--results", str(results), "--suite", "smoke")
    assert listed.returncode == 0 and run.id in listed.stdout


def test_failing_threshold_exits_1(
    server: BastionServer, fake: FakeUpstream, tmp_path: Path
) -> None:
    suite = write_suite(tmp_path, "weak", n=5, wrong=2)  # 3/5 = 0.6 < 0.9
    cp = bastion("eval", "run", str(suite), *remote(server, tmp_path / "evals.db"))
    assert cp.returncode == 1, cp.stdout + cp.stderr
    assert "0.60 < threshold 0.90" in cp.stdout


def test_regression_against_baseline_exits_1(
    server: BastionServer, fake: FakeUpstream, tmp_path: Path
) -> None:
    results = tmp_path / "evals.db"
    good = write_suite(tmp_path, "reg", n=6, threshold=0.1)
    assert bastion("eval", "run", str(good), *remote(server, results)).returncode == 0
    worse = write_suite(tmp_path, "reg", n=6, wrong=3, threshold=0.1)  # still above threshold
    cp = bastion(
        "eval", "run", str(worse), *remote(server, results), "--baseline", "reg@latest",
        "--tolerance", "0.02",
    )  # fmt: skip
    assert cp.returncode == 1, cp.stdout + cp.stderr
    assert "regression" in cp.stderr


def test_bad_suite_file_exits_2_with_file_and_line(tmp_path: Path) -> None:
    suite = tmp_path / "bad.yaml"
    suite.write_text(
        "name: bad\ntarget: {model: gpt}\ndataset: {cases: [{input: hi}]}\n"
        "scorers:\n  - type: exact\n    treshold: 0.9\n"
    )
    cp = bastion("eval", "run", str(suite), "--url", "http://127.0.0.1:9", "--api-key", "k")
    assert cp.returncode == 2
    assert f"{suite}:6:" in cp.stderr and "treshold" in cp.stderr
    rows = tmp_path / "rows.jsonl"
    rows.write_text('{"id": "a", "input": "x"}\n{"id": "b", "input": \n')
    good = tmp_path / "rows.yaml"
    good.write_text(
        "name: rows\ntarget: {model: gpt}\ndataset: {path: rows.jsonl}\nscorers: [{type: exact}]\n"
    )
    cp = bastion("eval", "run", str(good), "--url", "http://127.0.0.1:9", "--api-key", "k")
    assert cp.returncode == 2 and "rows.jsonl:2:" in cp.stderr


def test_dry_run_estimates_and_calls_nothing(
    server: BastionServer, fake: FakeUpstream, tmp_path: Path
) -> None:
    suite = write_suite(
        tmp_path, "dry", n=10,
        extra="repetitions: 2\n",
    )  # fmt: skip
    cp = bastion("eval", "run", str(suite), *remote(server, tmp_path / "e.db"), "--dry-run")
    assert cp.returncode == 0, cp.stderr
    assert "target calls    20" in cp.stdout
    assert "output tokens   <= 640" in cp.stdout  # 20 calls x max_tokens 32
    assert "unknown (remote gateway)" in cp.stdout
    # with the policy at hand, the gateway's prices give a cost
    pol = tmp_path / "policy.yaml"
    pol.write_text(policy(fake))
    cp = bastion("eval", "run", str(suite), "--policy", str(pol), "--dry-run")
    assert cp.returncode == 0, cp.stderr
    assert "cost            <= $0.000" in cp.stdout
    assert fake.stats()["total"] == 0
    assert not (tmp_path / "e.db").exists()


def test_in_process_gateway(fake: FakeUpstream, tmp_path: Path) -> None:
    pol = tmp_path / "policy.yaml"
    pol.write_text(policy(fake))
    data = tmp_path / "data"
    suite = write_suite(tmp_path, "local", n=4)
    args = ("eval", "run", str(suite), "--policy", str(pol), "--data-dir", str(data))
    first = bastion(*args)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "generated an admin key" in first.stderr  # a brand-new data directory
    second = bastion(*args)  # no BASTION_ADMIN_KEY, the admin key unknown: a temporary key
    assert second.returncode == 0, second.stdout + second.stderr
    assert len([r for r in fake.requests() if r["path"] == "/v1/chat/completions"]) == 8
    db = open_database(data / "bastion.db")
    try:
        temp = [
            k
            for k in SqlGovernanceStore(db).list(include_revoked=True)
            if k.name.startswith("eval-")
        ]
        assert len(temp) == 1 and temp[0].revoked_at is not None and temp[0].role == "admin"
        usage = SqlUsageStore(db).query(UsageQuery(tag="eval:local"))
        assert usage[0]["requests"] == 8
    finally:
        db.close()
    store = SqliteResultStore(data / "evals.db")
    runs = store.list_runs("local")
    assert [r.status for r in runs] == ["passed", "passed"]
    store.close()


def test_resume_continues_an_interrupted_run(
    server: BastionServer, fake: FakeUpstream, tmp_path: Path
) -> None:
    from bastion.evals.ports import RunInfo

    suite = write_suite(tmp_path, "resumable", n=5)
    results = tmp_path / "evals.db"
    store = SqliteResultStore(results)
    store.create_run(RunInfo("feedc0de0001", "resumable", "model:gpt", time.time()))
    store.finish_run("feedc0de0001", "interrupted", {}, time.time())
    store.close()
    cp = bastion("eval", "run", str(suite), *remote(server, results), "--resume", "feedc0de")
    assert cp.returncode == 0, cp.stdout + cp.stderr
    store = SqliteResultStore(results)
    run = store.get_run("feedc0de")
    assert run is not None and run.status == "passed" and run.summary["rows"] == 5
    store.close()
    missing = bastion("eval", "run", str(suite), *remote(server, results), "--resume", "nope")
    assert missing.returncode == 2 and "no run" in missing.stderr


def test_a_rejected_key_exits_2(server: BastionServer, fake: FakeUpstream, tmp_path: Path) -> None:
    suite = write_suite(tmp_path, "nokey", n=3)
    cp = bastion(
        "eval", "run", str(suite), "--url", server.url, "--api-key", "wrong-key",
        "--results", str(tmp_path / "e.db"),
    )  # fmt: skip
    assert cp.returncode == 2, cp.stderr[-3000:]
    assert "authentication_error: invalid API key" in cp.stderr
    assert fake.stats()["total"] == 0
