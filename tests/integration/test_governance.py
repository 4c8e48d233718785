"""Governance on a real embedded server: limits, budgets, cost, cache, usage, logging."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator

import openai
import pytest

from bastion.testing.fake_upstream import FakeUpstream
from bastion.testing.server import BastionServer, run_bastion
from tests.integration.gateway_policy import ENV
from tests.integration.governance_helpers import (
    admin,
    cost,
    gov_policy,
    make_key,
    make_tenant,
    usage,
    wait_keys,
    wait_usage,
)


@pytest.fixture(scope="module")
def gov(
    upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[BastionServer]:
    with run_bastion(gov_policy(upstream), tmp_path_factory.mktemp("gov"), env=ENV) as srv:
        yield srv


def client(srv: BastionServer, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=srv.url, api_key=key, max_retries=0)


def tenant_key(srv: BastionServer, tenant: str, **key_fields: object) -> str:
    make_tenant(srv, tenant)
    k = make_key(srv, f"{tenant}-key", tenant=tenant, **key_fields)
    wait_keys(srv, k["key"])
    return str(k["key"])


def say(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


# ---------------------------------------------------------------------- rate limits
def test_rpm_limit_admits_exactly_r_then_429_with_headers(
    gov: BastionServer, fake: FakeUpstream
) -> None:
    key = tenant_key(gov, "rl-a", rpm=5)
    # stay within one clock minute, so the fixed window cannot roll over mid-test
    if time.time() % 60 > 50:
        time.sleep(61 - time.time() % 60)
    c = client(gov, key)
    for i in range(5):
        raw = c.chat.completions.with_raw_response.create(model="gpt", messages=say(f"hi {i}"))
        assert raw.headers["x-ratelimit-limit-requests"] == "5"
        assert raw.headers["x-ratelimit-remaining-requests"] == str(4 - i)
    with pytest.raises(openai.RateLimitError) as info:
        c.chat.completions.create(model="gpt", messages=say("one too many"))
    err = info.value
    assert err.code == "rate_limited"
    assert 1 <= int(err.response.headers["retry-after"]) <= 60
    assert err.response.headers["x-ratelimit-remaining-requests"] == "0"
    assert fake.stats()["by_path"]["/v1/chat/completions"]["200"] == 5


def test_tenant_tpm_limit_counts_tokens_of_all_its_keys(gov: BastionServer) -> None:
    make_tenant(gov, "tpm-a", tpm=60)
    keys = [make_key(gov, f"tpm-a-{i}", tenant="tpm-a")["key"] for i in range(2)]
    for k in keys:
        wait_keys(gov, k)
    if time.time() % 60 > 50:
        time.sleep(61 - time.time() % 60)
    admitted = refused = 0
    for i in range(12):
        try:  # each reserves ~ prompt estimate + max_tokens 20
            client(gov, keys[i % 2]).chat.completions.create(
                model="gpt", messages=say("count these tokens please"), max_tokens=20
            )
            admitted += 1
        except openai.RateLimitError as exc:
            assert exc.code == "rate_limited"
            assert exc.response.headers["x-ratelimit-limit-tokens"] == "60"
            refused += 1
    assert admitted >= 3 and refused >= 1


# ---------------------------------------------------------------------- budgets
def test_hard_budget_under_50_concurrent_requests_admits_at_most_what_it_covers(
    gov: BastionServer, fake: FakeUpstream
) -> None:
    key = tenant_key(gov, "bud-a")
    prompt = "word " * 20  # 20 prompt tokens at the fake upstream
    # each request: reserve <= estimate of prompt + 10 output tokens; exact cost is known
    per_request = cost(20, 10)
    r = admin(
        gov,
        "POST",
        "/admin/budgets",
        json={"scope": "tenant", "id": "bud-a", "period": "day", "usd": per_request * 10},
    )
    assert r.status_code == 201, r.text
    time.sleep(1.2)  # key rings refresh

    async def one(c: openai.AsyncOpenAI) -> str:
        try:
            await c.chat.completions.create(
                model="gpt",
                messages=say(prompt.strip()),
                max_tokens=10,
                extra_body={},
            )
            return "ok"
        except openai.RateLimitError as exc:
            return str(exc.code)

    async def burst() -> list[str]:
        c = openai.AsyncOpenAI(base_url=gov.url, api_key=key, max_retries=0)
        fake.script([{"content": " ".join(["w"] * 10), "delay_s": 0.2}] * 50)
        return await asyncio.gather(*(one(c) for _ in range(50)))

    results = asyncio.run(burst())
    fake.reset()
    assert results.count("ok") <= 10
    assert set(results) <= {"ok", "budget_exceeded"}
    assert results.count("budget_exceeded") >= 40
    row = wait_usage(gov, 50, tenant="bud-a")  # refused requests have rows too
    assert row["cost_usd"] <= per_request * 10 + 1e-9


def test_soft_budget_allows_and_alerts(gov: BastionServer) -> None:
    key = tenant_key(gov, "soft-a")
    r = admin(
        gov,
        "POST",
        "/admin/budgets",
        json={"scope": "tenant", "id": "soft-a", "tokens": 10, "mode": "soft", "period": "day"},
    )
    assert r.status_code == 201
    time.sleep(1.2)
    before = gov.metric("bastion_budget_alerts_total", scope="tenant")
    for _ in range(3):
        client(gov, key).chat.completions.create(model="gpt", messages=say("a b c d e f"))
    assert gov.metric("bastion_budget_alerts_total", scope="tenant") == before + 1


# ---------------------------------------------------------------------- cost
def test_cost_of_plain_streamed_and_interrupted_requests(
    gov: BastionServer, fake: FakeUpstream
) -> None:
    key = tenant_key(gov, "cost-a")
    c = client(gov, key)
    raw = c.chat.completions.with_raw_response.create(
        model="gpt", messages=say("one two three"), extra_headers={"x-bastion-tags": "plain"}
    )
    body = raw.parse()
    assert body.usage is not None
    expected = cost(body.usage.prompt_tokens, body.usage.completion_tokens)
    assert float(raw.headers["x-bastion-cost-usd"]) == pytest.approx(expected, abs=1e-6)

    stream = c.chat.completions.create(
        model="gpt",
        messages=say("four five six seven"),
        stream=True,
        stream_options={"include_usage": True},
        extra_headers={"x-bastion-tags": "streamed"},
    )
    chunks = list(stream)
    usage_chunk = chunks[-1].usage
    assert usage_chunk is not None
    streamed = cost(usage_chunk.prompt_tokens, usage_chunk.completion_tokens)
    assert (usage_chunk.model_extra or {})["cost_usd"] == pytest.approx(streamed, abs=1e-6)

    fake.script([{"content": "a b c d e f", "chunks": 6, "disconnect_after_chunks": 3}])
    with pytest.raises(openai.APIError):
        for _ in c.chat.completions.create(
            model="gpt",
            messages=say("cut me off"),
            stream=True,
            extra_headers={"x-bastion-tags": "interrupted"},
        ):
            pass

    rows = {r["tag"]: r for r in usage_rows_by_tag(gov, 3, "cost-a")}
    assert rows["plain"]["cost_usd"] == pytest.approx(expected, abs=1e-6)
    assert rows["streamed"]["cost_usd"] == pytest.approx(streamed, abs=1e-6)
    assert rows["interrupted"]["completion_tokens"] >= 3  # what was generated before the cut
    assert rows["interrupted"]["cost_usd"] > 0


def usage_rows_by_tag(srv: BastionServer, n: int, tenant: str) -> list[dict[str, object]]:
    deadline = time.monotonic() + 5
    rows: list[dict[str, object]] = []
    while time.monotonic() < deadline:
        rows = usage(srv, group_by="tag", tenant=tenant)
        if len(rows) >= n:
            return rows
        time.sleep(0.1)
    raise AssertionError(rows)


# ---------------------------------------------------------------------- cache
def test_exact_cache_hits_replay_streams_cost_nothing_and_stay_per_tenant(
    gov: BastionServer, fake: FakeUpstream
) -> None:
    a = client(gov, tenant_key(gov, "cache-a"))
    b = client(gov, tenant_key(gov, "cache-b"))
    msgs = say("cache this answer please")
    first = a.chat.completions.with_raw_response.create(model="cached", messages=msgs)
    assert first.headers["x-bastion-cache"] == "miss"
    second = a.chat.completions.with_raw_response.create(model="cached", messages=msgs)
    assert second.headers["x-bastion-cache"] == "hit"
    assert second.headers["x-bastion-cost-usd"] == "0.000000"
    assert second.parse().choices[0].message.content == first.parse().choices[0].message.content
    # a stream replays the cached answer
    text = "".join(
        ch.choices[0].delta.content or ""
        for ch in a.chat.completions.create(model="cached", messages=msgs, stream=True)
        if ch.choices
    )
    assert text == first.parse().choices[0].message.content
    # another tenant never sees tenant A's entry
    other = b.chat.completions.with_raw_response.create(model="cached", messages=msgs)
    assert other.headers["x-bastion-cache"] == "miss"
    # the bypass header skips the cache
    bypass = a.chat.completions.with_raw_response.create(
        model="cached", messages=msgs, extra_headers={"x-bastion-cache": "bypass"}
    )
    assert bypass.headers["x-bastion-cache"] == "miss"
    assert fake.stats()["by_path"]["/v1/chat/completions"]["200"] == 3
    assert gov.metric("bastion_cache_lookups_total", model="cached", result="exact") >= 2
    row = wait_usage(gov, 4, tenant="cache-a", group_by="tenant")
    assert row["cache_hits"] == 2


def test_streamed_miss_is_cached_and_semantic_hits_similar_single_turn(
    gov: BastionServer, fake: FakeUpstream
) -> None:
    a = client(gov, tenant_key(gov, "sem-a"))
    list(a.chat.completions.create(model="semantic", messages=say("red green blue"), stream=True))
    time.sleep(0.2)
    again = a.chat.completions.with_raw_response.create(
        model="semantic", messages=say("red green blue")
    )
    assert again.headers["x-bastion-cache"] == "hit"
    # same words in another order: the fake embedder gives the same vector
    similar = a.chat.completions.with_raw_response.create(
        model="semantic", messages=say("blue red green")
    )
    assert similar.headers["x-bastion-cache"] == "hit"
    assert similar.parse().choices[0].message.content == "echo: red green blue"
    different = a.chat.completions.with_raw_response.create(
        model="semantic", messages=say("an entirely different question")
    )
    assert different.headers["x-bastion-cache"] == "miss"
    assert gov.metric("bastion_cache_lookups_total", model="semantic", result="semantic") >= 1


# ---------------------------------------------------------------------- usage
def test_usage_groups_by_day_model_team_and_tag(gov: BastionServer) -> None:
    make_tenant(gov, "use-a")
    r = admin(gov, "POST", "/admin/teams", json={"name": "search", "tenant": "use-a"})
    assert r.status_code == 201, r.text
    team_id = r.json()["id"]
    k = make_key(gov, "use-a-search", tenant="use-a", team="search")["key"]
    wait_keys(gov, k)
    c = client(gov, k)
    c.chat.completions.create(model="gpt", messages=say("x"), metadata={"tags": "exp-1"})
    c.chat.completions.create(
        model="gpt", messages=say("y"), extra_headers={"x-bastion-tags": "exp-1,exp-2"}
    )
    c.embeddings.create(model="emb", input="z")
    wait_usage(gov, 3, tenant="use-a")
    by_model = {r["model"]: r for r in usage(gov, tenant="use-a", group_by="model")}
    assert by_model["gpt"]["requests"] == 2 and by_model["emb"]["requests"] == 1
    by_team = usage(gov, tenant="use-a", group_by="team")
    assert by_team == [{**by_team[0], "team": team_id, "requests": 3}]
    by_tag = {r["tag"]: r["requests"] for r in usage(gov, tenant="use-a", group_by="tag")}
    assert by_tag == {"exp-1": 2, "exp-2": 1}
    day = usage(gov, tenant="use-a", group_by="day")
    assert day[0]["day"] == time.strftime("%Y-%m-%d", time.gmtime())


# ---------------------------------------------------------------------- logging policy and audit
def test_logging_policy_full_redacted_none(gov: BastionServer) -> None:
    secret_text = "mail me at jane.doe@example.com"
    for tenant in ("full-a", "red-a", "quiet-a"):
        k = tenant_key(gov, tenant)
        client(gov, k).chat.completions.create(model="gpt", messages=say(secret_text))
    time.sleep(0.6)
    db = sqlite3.connect(gov.data_dir / "bastion.db")
    rows = dict(
        db.execute(
            "SELECT t.name, p.prompt FROM payloads p JOIN tenants t ON t.id = p.tenant_id"
        ).fetchall()
    )
    assert "jane.doe@example.com" in rows["full-a"]
    assert "jane.doe@example.com" not in rows["red-a"] and "<EMAIL>" in rows["red-a"]
    assert "quiet-a" not in rows
    events = admin(gov, "GET", "/admin/audit", params={"limit": "1000"}).json()["data"]
    tenants = {t["name"]: t["id"] for t in admin(gov, "GET", "/admin/tenants").json()["data"]}
    request_events = [e for e in events if e["kind"] == "request"]
    by_tenant = {e["tenant"] for e in request_events}
    assert tenants["full-a"] in by_tenant and tenants["red-a"] in by_tenant
    assert tenants["quiet-a"] not in by_tenant
    full = next(e for e in request_events if e["tenant"] == tenants["full-a"])
    assert "jane" not in str(full["data"])  # content lives in payloads, not the chain
    assert len(full["data"]["content_sha256"]) == 64


def test_deployment_quota_moves_on_to_the_fallback(gov: BastionServer, fake: FakeUpstream) -> None:
    key = tenant_key(gov, "dq-a")
    if time.time() % 60 > 55:
        time.sleep(61 - time.time() % 60)
    c = client(gov, key)
    used = [
        c.chat.completions.with_raw_response.create(model="quota", messages=say(f"q{i}")).headers[
            "x-bastion-deployment"
        ]
        for i in range(4)
    ]
    assert used == ["up/quota-primary"] * 2 + ["up2/quota-secondary"] * 2
    # the upstream never saw a third request for the primary
    models = [r["body"]["model"] for r in fake.requests()]
    assert models.count("quota-primary") == 2


def test_admin_cli_tenants_teams_budgets_usage_and_purge(gov: BastionServer) -> None:
    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        cp = subprocess.run(
            [sys.executable, "-m", "bastion", *args, "--data-dir", str(gov.data_dir)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert cp.returncode == 0, cp.stderr
        return cp

    cli("tenants", "create", "cli-a", "--rpm", "100")
    cli("teams", "create", "ops", "--tenant", "cli-a")
    secret = cli("keys", "create", "--name", "cli-a-ops", "--tenant", "cli-a", "--team", "ops")
    key = secret.stdout.strip()
    cli("budgets", "set", "team", "ops", "--tenant", "cli-a", "--usd", "5", "--period", "day")
    assert "ops" in cli("teams", "list", "--tenant", "cli-a").stdout
    assert "team" in cli("budgets", "list").stdout
    wait_keys(gov, key)
    client(gov, key).chat.completions.create(model="gpt", messages=say("via the cli key"))
    wait_usage(gov, 1, tenant="cli-a")
    rows = [
        json.loads(line)
        for line in cli("usage", "--group-by", "model", "--tenant", "cli-a", "--json").stdout.split(
            "\n"
        )
        if line
    ]
    assert rows == [{**rows[0], "model": "gpt", "requests": 1}]
    purged = cli("payloads", "purge", "--days", "0")
    assert "purged" in purged.stdout
    bad = subprocess.run(
        [
            sys.executable,
            "-m",
            "bastion",
            "usage",
            "--group-by",
            "planet",
            "--data-dir",
            str(gov.data_dir),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 1 and "cannot group usage by planet" in bad.stderr
