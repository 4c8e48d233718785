"""Scale-out mode: replicas sharing one PostgreSQL database and one Redis.

Two ``bastion serve`` processes (different data directories, same
``BASTION_DATABASE_URL``, ``BASTION_REDIS_URL`` and ``BASTION_REDIS_PREFIX``)
must behave as one gateway: a rate limit of R admits exactly R requests in
total, a hard budget is not overspent by traffic split across them, losing one
replica does not disturb the other, and a replica stopped with SIGTERM writes
every usage row of the requests it served before it exits.

The destructive tests (SIGKILL, SIGTERM) start a third replica of their own on
the same database and Redis, so the module's pair stays up for every test.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Iterator
from typing import Any
from uuid import uuid4

import openai
import pytest

from bastion.testing.fake_upstream import FakeUpstream
from bastion.testing.server import BastionServer
from tests.integration.gateway_policy import ENV
from tests.integration.governance_helpers import (
    admin,
    cost,
    gov_policy,
    make_key,
    make_tenant,
    usage,
    wait_keys,
)
from tests.integration.scaleout_helpers import Cluster, cluster, pg_query

Pair = tuple[BastionServer, BastionServer]


@pytest.fixture(scope="module")
def shared(upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """A fresh PostgreSQL database and Redis prefix for this module."""
    with cluster(gov_policy(upstream), ENV, tmp_path_factory.mktemp("scaleout")) as c:
        yield c


@pytest.fixture(scope="module")
def pair(shared: Cluster) -> Pair:
    """Two replicas on the module's database and Redis (stopped with the cluster)."""
    return shared.replica(), shared.replica()


def say(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def aclient(srv: BastionServer, key: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=srv.url, api_key=key, max_retries=0, timeout=15)


async def chat(c: openai.AsyncOpenAI, text: str, **kw: object) -> str:
    """``"ok"``, or the error code of a refused request."""
    try:
        await c.chat.completions.create(model="gpt", messages=say(text), **kw)  # type: ignore[call-overload]
    except openai.APIStatusError as exc:
        return f"{exc.status_code}:{exc.code}"
    return "ok"


def tenant_key(pair: Pair, tenant: str, **key_fields: object) -> str:
    """A key of a new tenant, made on replica 1 and accepted by both replicas."""
    r1 = pair[0]
    make_tenant(r1, tenant)
    secret = str(make_key(r1, f"{tenant}-key", tenant=tenant, **key_fields)["key"])
    for srv in pair:
        wait_keys(srv, secret)
    return secret


def away_from_minute_boundary(margin_s: float = 15) -> None:
    """Return at least ``margin_s`` before the next calendar minute (RPM windows)."""
    if time.time() % 60 > 60 - margin_s:
        time.sleep(60.05 - time.time() % 60)


def wait_requests(srv: BastionServer, n: int, timeout: float = 10, **params: str) -> dict[str, Any]:
    """Poll usage totals (through ``srv``) until they count ``n`` requests."""
    deadline = time.monotonic() + timeout
    rows: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        rows = usage(srv, **params)
        if rows and rows[0]["requests"] >= n:
            return rows[0]
        time.sleep(0.1)
    raise AssertionError(f"usage did not reach {n} requests: {rows}")


# ---------------------------------------------------------------------- shared counters
def test_rpm_limit_is_exact_across_two_replicas(pair: Pair, fake: FakeUpstream) -> None:
    r1, r2 = pair
    rpm = 10
    key = tenant_key(pair, f"rpm-{uuid4().hex[:6]}", rpm=rpm)
    away_from_minute_boundary()

    async def burst() -> tuple[list[str], int, int]:
        async with aclient(r1, key) as c1, aclient(r2, key) as c2:
            clients = (c1, c2)
            start = int(time.time() // 60)
            results = await asyncio.gather(
                *(chat(clients[i % 2], f"rpm {i}") for i in range(3 * rpm))
            )
            return list(results), start, int(time.time() // 60)

    results, first_minute, last_minute = asyncio.run(burst())
    assert first_minute == last_minute, "the burst crossed a minute boundary"
    assert results.count("ok") == rpm, results
    assert results.count("429:rate_limited") == 2 * rpm, results
    # the refused requests never reached the upstream
    assert fake.stats()["by_path"]["/v1/chat/completions"]["200"] == rpm


def test_hard_budget_holds_under_concurrent_traffic_split_across_replicas(
    pair: Pair, fake: FakeUpstream
) -> None:
    r1, r2 = pair
    tenant = f"bud-{uuid4().hex[:6]}"
    make_tenant(r1, tenant)
    per_request = cost(20, 10)  # 20 prompt words, 10 output words at the fake upstream
    budget = per_request * 10
    r = admin(
        r1,
        "POST",
        "/admin/budgets",
        json={"scope": "tenant", "id": tenant, "period": "day", "usd": budget},
    )
    assert r.status_code == 201, r.text
    # the key is made after the budget: a key ring that knows the key knows the budget
    key = str(make_key(r1, f"{tenant}-key", tenant=tenant)["key"])
    for srv in pair:
        wait_keys(srv, key)
    word = f"budget{uuid4().hex[:6]}"
    prompt = " ".join([word] * 20)
    fake.script([{"content": " ".join(["w"] * 10), "delay_s": 0.2}] * 60, match=word)
    n = 60

    async def burst() -> list[str]:
        async with aclient(r1, key) as c1, aclient(r2, key) as c2:
            clients = (c1, c2)
            return list(
                await asyncio.gather(
                    *(chat(clients[i % 2], prompt, max_tokens=10) for i in range(n))
                )
            )

    results = asyncio.run(burst())
    ok = results.count("ok")
    assert set(results) <= {"ok", "429:budget_exceeded"}, results
    assert 1 <= ok <= 10, results
    # every request, admitted or refused, leaves one usage row; read them on replica 2
    row = wait_requests(r2, n, tenant=tenant)
    assert row["requests"] == n
    assert row["cost_usd"] <= budget + 1e-9, row
    assert row["cost_usd"] == pytest.approx(ok * per_request, abs=1e-9), row


# ---------------------------------------------------------------------- losing a replica
def test_sigkill_of_one_replica_mid_load_leaves_the_other_serving(
    shared: Cluster, pair: Pair, fake: FakeUpstream
) -> None:
    r1, r2 = pair
    victim = shared.replica()
    key = tenant_key(pair, f"kill-{uuid4().hex[:6]}", rpm=100_000)
    wait_keys(victim, key)
    word = f"survive{uuid4().hex[:6]}"
    fake.script([{"delay_s": 0.05}] * 400, match=word)
    workers, per_worker = 4, 10

    async def load() -> tuple[list[str], list[str]]:
        served: list[str] = []
        lost: list[str] = []
        killed = asyncio.Event()
        quarter = asyncio.Event()  # a quarter of the survivor's requests are done

        async def survivor(c: openai.AsyncOpenAI, w: int) -> None:
            for i in range(per_worker):
                try:
                    served.append(await chat(c, f"{word} {w} {i}"))
                except openai.APIConnectionError as exc:
                    served.append(f"connection: {exc!r}")
                if len(served) >= workers * per_worker // 4:
                    quarter.set()

        async def doomed(c: openai.AsyncOpenAI) -> None:
            while not killed.is_set():
                try:
                    await chat(c, f"{word} doomed")
                except openai.APIConnectionError as exc:
                    lost.append(repr(exc))
                    return

        async def killer() -> None:
            await quarter.wait()
            await asyncio.to_thread(victim.stop, signal.SIGKILL)
            killed.set()

        async with aclient(r2, key) as c2, aclient(victim, key) as cv:
            await asyncio.gather(
                killer(),
                *(survivor(c2, w) for w in range(workers)),
                *(doomed(cv) for _ in range(2)),
            )
        return served, lost

    served, lost = asyncio.run(load())
    assert victim.proc.returncode == -signal.SIGKILL
    assert served == ["ok"] * (workers * per_worker), served
    assert lost, "no request to the killed replica was cut off"
    # replica 1 is unaffected too, admin plane included
    assert admin(r1, "GET", "/admin/tenants").status_code == 200


def test_sigterm_drains_queued_usage_rows_before_exit(shared: Cluster, pair: Pair) -> None:
    r1, _ = pair
    drained = shared.replica()
    key = tenant_key(pair, f"drain-{uuid4().hex[:6]}")
    wait_keys(drained, key)
    tag = f"drain-{uuid4().hex[:10]}"
    k = 30

    async def traffic() -> list[str]:
        async with aclient(drained, key) as c:
            return list(
                await asyncio.gather(
                    *(
                        chat(c, f"drain {i}", extra_headers={"x-bastion-tags": tag})
                        for i in range(k)
                    )
                )
            )

    results = asyncio.run(traffic())
    rc = drained.stop(signal.SIGTERM)  # at once: rows of the last requests are still queued
    assert results == ["ok"] * k
    # uvicorn (>= 0.29) re-raises the signal after its graceful shutdown, so the exit
    # status is -SIGTERM rather than 0; the lifespan shutdown (the drain) must be complete
    logs = drained.logs()
    assert rc in (0, -signal.SIGTERM), logs[-3000:]
    assert "Application shutdown complete" in logs, logs[-3000:]
    assert "drain cancelled" not in logs
    # the replica has exited, so whatever it wrote is all there will ever be
    totals = usage(r1, tag=tag)
    assert totals and totals[0]["requests"] == k, totals
    rows = pg_query(shared.db_url, "SELECT count(*) FROM usage_tags WHERE tag = %s", (tag,))
    assert rows[0][0] == k
