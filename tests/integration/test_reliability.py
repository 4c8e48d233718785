"""Retries, fallbacks, circuit breakers and stream failures through a real Bastion.

Asserted twice: from the client side (the openai SDK with ``max_retries=0``, or raw
httpx for SSE) and from ``/metrics``. The module's server runs a policy whose
breakers never open, so the retry and fallback tests cannot trip each other's
breakers; breaker tests start a fresh server of their own.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from bastion.testing.fake_upstream import FakeUpstream
from bastion.testing.server import BastionServer, free_port, run_bastion
from tests.integration.gateway_policy import ENV

# a breaker that never opens, so failures in one test never leak into the next
_LENIENT = "{consecutive_failures: 1000, error_rate: 1.0, min_requests: 1000}"


def _policy(fake: FakeUpstream, dead_port: int) -> str:
    return f"""\
providers:
  up: {{type: openai, base_url: "{fake.url}", api_key: env:UPSTREAM_KEY}}
  up2: {{type: openai, base_url: "{fake.url}", api_key: env:UPSTREAM_KEY}}
  dead: {{type: openai, base_url: "http://127.0.0.1:{dead_port}/v1", api_key: env:UPSTREAM_KEY}}
models:
  gpt:
    routes: [{{provider: up, model: gpt-4o-mini}}]
    retries: {{attempts: 1, base_s: 0.01}}
    timeouts: {{first_byte_s: 2, stream_idle_s: 1}}
    breaker: {_LENIENT}
  failover:
    routes: [{{provider: up, model: primary}}]
    fallbacks: [{{provider: up2, model: secondary}}]
    retries: {{attempts: 1, base_s: 0.01}}
    timeouts: {{first_byte_s: 1, stream_idle_s: 1}}
    breaker: {_LENIENT}
  unreachable:
    routes: [{{provider: dead, model: primary}}]
    fallbacks: [{{provider: up2, model: secondary}}]
    retries: {{attempts: 1, base_s: 0.01}}
    timeouts: {{connect_s: 1, first_byte_s: 1}}
    breaker: {_LENIENT}
"""


def _breaker_policy(fake: FakeUpstream) -> str:
    return f"""\
providers:
  up: {{type: openai, base_url: "{fake.url}", api_key: env:UPSTREAM_KEY}}
  up2: {{type: openai, base_url: "{fake.url}", api_key: env:UPSTREAM_KEY}}
models:
  brk:
    routes: [{{provider: up, model: flaky}}]
    fallbacks: [{{provider: up2, model: backup}}]
    retries: {{attempts: 1, base_s: 0.01}}
    timeouts: {{first_byte_s: 2}}
    breaker: {{consecutive_failures: 2, cooldown_s: 1}}
"""


@pytest.fixture(scope="module")
def server(
    upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[BastionServer]:
    data = tmp_path_factory.mktemp("bastion-reliability")
    with run_bastion(_policy(upstream, free_port()), data, env=ENV) as srv:
        yield srv


@pytest.fixture
def client(server: BastionServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url, api_key=server.admin_key, max_retries=0, timeout=15)


def _msg(text: str) -> list[Any]:
    return [{"role": "user", "content": text}]


def _sent(fake: FakeUpstream, marker: str) -> list[dict[str, Any]]:
    """The model requests the fake received whose last message contains ``marker``."""
    out = []
    for r in fake.requests():
        body = r["body"] or {}
        msgs = body.get("messages") or []
        if msgs and marker in json.dumps(msgs[-1]):
            out.append(r)
    return out


def _auth(server: BastionServer) -> dict[str, str]:
    return {"authorization": f"Bearer {server.admin_key}"}


def _metric_reaches(server: BastionServer, name: str, value: float, **labels: str) -> float:
    """The metric once it reached ``value`` (a streamed request is recorded after its
    last byte, so a moment after the client saw the end); gives up after 5 s."""
    deadline = time.monotonic() + 5
    while (now := server.metric(name, **labels)) < value and time.monotonic() < deadline:
        time.sleep(0.02)
    return now


def _sse_data_lines(resp: httpx.Response) -> list[str]:
    return [line[len("data: ") :] for line in resp.iter_lines() if line.startswith("data: ")]


# ------------------------------------------------------------------ retries


def test_500_then_success_is_retried_once(
    client: openai.OpenAI, fake: FakeUpstream, server: BastionServer
) -> None:
    retries = server.metric("bastion_upstream_retries_total", deployment="up/gpt-4o-mini")
    failed = server.metric(
        "bastion_upstream_attempts_total", deployment="up/gpt-4o-mini", outcome="upstream_error"
    )
    fake.script([{"status": 500}], match="retry-five-hundred")
    raw = client.chat.completions.with_raw_response.create(
        model="gpt", messages=_msg("retry-five-hundred please")
    )
    assert raw.parse().choices[0].message.content == "echo: retry-five-hundred please"
    assert raw.headers["x-bastion-deployment"] == "up/gpt-4o-mini"
    sent = _sent(fake, "retry-five-hundred")
    assert [r["body"]["model"] for r in sent] == ["gpt-4o-mini", "gpt-4o-mini"]
    assert fake.stats()["by_path"]["/v1/chat/completions"] == {"500": 1, "200": 1}
    assert (
        server.metric("bastion_upstream_retries_total", deployment="up/gpt-4o-mini") == retries + 1
    )
    assert (
        server.metric(
            "bastion_upstream_attempts_total",
            deployment="up/gpt-4o-mini",
            outcome="upstream_error",
        )
        == failed + 1
    )


def test_429_retry_after_is_honoured(
    client: openai.OpenAI, fake: FakeUpstream, server: BastionServer
) -> None:
    retries = server.metric("bastion_upstream_retries_total", deployment="up/gpt-4o-mini")
    fake.script([{"status": 429, "retry_after": 1}], match="rate-limited-once")
    t0 = time.monotonic()
    done = client.chat.completions.create(model="gpt", messages=_msg("rate-limited-once now"))
    elapsed = time.monotonic() - t0
    assert done.choices[0].message.content == "echo: rate-limited-once now"
    assert elapsed >= 0.9
    sent = _sent(fake, "rate-limited-once")
    assert len(sent) == 2
    assert sent[1]["time"] - sent[0]["time"] >= 0.9
    assert (
        server.metric("bastion_upstream_retries_total", deployment="up/gpt-4o-mini") == retries + 1
    )


# ------------------------------------------------------------------ fallbacks

_PRIMARY_FAILURES = {
    "503": {"status": 503},
    "429": {"status": 429},
    "timeout": {"delay_s": 1.5},  # first_byte_s is 1
}


@pytest.mark.parametrize("kind", list(_PRIMARY_FAILURES))
def test_primary_failing_twice_falls_back(
    kind: str, client: openai.OpenAI, fake: FakeUpstream, server: BastionServer
) -> None:
    marker = f"fallback-after-{kind}"
    fallbacks = server.metric("bastion_fallbacks_total", model="failover")
    fake.script([_PRIMARY_FAILURES[kind]] * 2, match=marker)
    raw = client.chat.completions.with_raw_response.create(
        model="failover", messages=_msg(f"{marker} hi")
    )
    assert raw.headers["x-bastion-deployment"] == "up2/secondary"
    assert raw.parse().choices[0].message.content == f"echo: {marker} hi"
    assert [r["body"]["model"] for r in _sent(fake, marker)] == ["primary", "primary", "secondary"]
    assert server.metric("bastion_fallbacks_total", model="failover") == fallbacks + 1


def test_unreachable_primary_falls_back(
    client: openai.OpenAI, fake: FakeUpstream, server: BastionServer
) -> None:
    """A connection-level failure (nothing listens on the primary's port) fails over."""
    refused = server.metric(
        "bastion_upstream_attempts_total", deployment="dead/primary", outcome="upstream_unavailable"
    )
    fallbacks = server.metric("bastion_fallbacks_total", model="unreachable")
    raw = client.chat.completions.with_raw_response.create(
        model="unreachable", messages=_msg("unreachable-primary hi")
    )
    assert raw.headers["x-bastion-deployment"] == "up2/secondary"
    assert raw.parse().choices[0].message.content == "echo: unreachable-primary hi"
    assert [r["body"]["model"] for r in _sent(fake, "unreachable-primary")] == ["secondary"]
    assert server.metric("bastion_fallbacks_total", model="unreachable") == fallbacks + 1
    assert (
        server.metric(
            "bastion_upstream_attempts_total",
            deployment="dead/primary",
            outcome="upstream_unavailable",
        )
        == refused + 2
    )


@pytest.mark.parametrize("kind", ["500", "timeout"])
def test_stream_failing_before_its_first_chunk_falls_back(
    kind: str, client: openai.OpenAI, fake: FakeUpstream, server: BastionServer
) -> None:
    marker = f"stream-fallback-{kind}"
    step = {"status": 500} if kind == "500" else {"delay_s": 1.5}  # first_byte_s is 1
    fallbacks = server.metric("bastion_fallbacks_total", model="failover")
    fake.script([step, step], match=marker)
    raw = client.chat.completions.with_raw_response.create(
        model="failover", messages=_msg(f"{marker} go"), stream=True
    )
    assert raw.headers["x-bastion-deployment"] == "up2/secondary"
    text = "".join(c.choices[0].delta.content or "" for c in raw.parse() if c.choices)
    assert text == f"echo: {marker} go"
    sent = _sent(fake, marker)
    assert [r["body"]["model"] for r in sent] == ["primary", "primary", "secondary"]
    assert all(r["body"]["stream"] for r in sent)
    assert server.metric("bastion_fallbacks_total", model="failover") == fallbacks + 1


def test_stream_dying_after_only_the_role_chunk_still_falls_back(
    client: openai.OpenAI, fake: FakeUpstream
) -> None:
    # the role-only preamble carries no output, so the deployment is not committed yet
    marker = "role-then-cut"
    fake.script([{"disconnect_after_chunks": 0}, {"disconnect_after_chunks": 0}], match=marker)
    raw = client.chat.completions.with_raw_response.create(
        model="failover", messages=_msg(f"{marker} go"), stream=True
    )
    assert raw.headers["x-bastion-deployment"] == "up2/secondary"
    text = "".join(c.choices[0].delta.content or "" for c in raw.parse() if c.choices)
    assert text == f"echo: {marker} go"
    assert [r["body"]["model"] for r in _sent(fake, marker)] == ["primary", "primary", "secondary"]


# ------------------------------------------------------------------ no retry, no fallback

_CLIENT_ERRORS = {
    400: openai.BadRequestError,
    404: openai.NotFoundError,
    422: openai.UnprocessableEntityError,
}


@pytest.mark.parametrize("status", list(_CLIENT_ERRORS))
def test_upstream_client_error_passes_through_untried_elsewhere(
    status: int, client: openai.OpenAI, fake: FakeUpstream, server: BastionServer
) -> None:
    marker = f"bad-request-{status}"
    fallbacks = server.metric("bastion_fallbacks_total", model="failover")
    retries = server.metric("bastion_upstream_retries_total")
    fake.script([{"status": status, "message": "your request is wrong"}], match=marker)
    with pytest.raises(_CLIENT_ERRORS[status]) as info:
        client.chat.completions.create(model="failover", messages=_msg(f"{marker} x"))
    assert info.value.status_code == status
    assert info.value.code == "upstream_invalid_request"
    assert "your request is wrong" in info.value.message
    assert [r["body"]["model"] for r in _sent(fake, marker)] == ["primary"]
    assert server.metric("bastion_fallbacks_total", model="failover") == fallbacks
    assert server.metric("bastion_upstream_retries_total") == retries


# ------------------------------------------------------------------ everything fails


@pytest.mark.parametrize(
    ("steps", "status", "code"),
    [
        ([{"status": 500}] * 4, 502, "upstream_error"),
        ([{"status": 503}] * 2 + [{"status": 429}] * 2, 429, "upstream_rate_limited"),
    ],
    ids=["all-500", "last-429"],
)
def test_all_routes_failing_reports_the_last_failure(
    steps: list[dict[str, Any]],
    status: int,
    code: str,
    server: BastionServer,
    fake: FakeUpstream,
) -> None:
    marker = f"all-fail-{code}"
    errors = server.metric("bastion_errors_total", endpoint="chat", code=code)
    fake.script(steps, match=marker)
    r = httpx.post(
        server.url + "/chat/completions",
        json={"model": "failover", "messages": _msg(f"{marker} x")},
        headers=_auth(server),
        timeout=15,
    )
    assert r.status_code == status
    body = r.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "code", "param"}
    assert body["error"]["code"] == code
    assert "up/primary" in body["error"]["message"] and "up2/secondary" in body["error"]["message"]
    assert len(_sent(fake, marker)) == 4
    assert server.metric("bastion_errors_total", endpoint="chat", code=code) == errors + 1
    # and the openai SDK maps it to its status class
    fake.script(steps, match=marker)
    with pytest.raises(openai.APIStatusError) as info:
        openai.OpenAI(
            base_url=server.url, api_key=server.admin_key, max_retries=0
        ).chat.completions.create(model="failover", messages=_msg(f"{marker} x"))
    assert info.value.status_code == status and info.value.code == code


# ------------------------------------------------------------------ streams dying mid-way


def test_mid_stream_disconnect_raises_in_the_sdk(
    client: openai.OpenAI, fake: FakeUpstream, server: BastionServer
) -> None:
    lost = server.metric("bastion_errors_total", endpoint="chat", code="upstream_unavailable")
    fake.script(
        [{"disconnect_after_chunks": 2, "chunks": 6}],
        match="cut-mid-stream",
    )
    received: list[str] = []
    t0 = time.monotonic()
    with pytest.raises(openai.APIError):
        for chunk in client.chat.completions.create(
            model="gpt", messages=_msg("cut-mid-stream please"), stream=True
        ):
            if chunk.choices:
                received.append(chunk.choices[0].delta.content or "")
    assert time.monotonic() - t0 < 10
    assert "".join(received)  # some content arrived before the failure
    assert "".join(received) != "echo: cut-mid-stream please"
    # committed after the first chunk: no retry, no fallback
    assert len(_sent(fake, "cut-mid-stream")) == 1
    unavailable = _metric_reaches(
        server, "bastion_errors_total", lost + 1, endpoint="chat", code="upstream_unavailable"
    )
    assert unavailable == lost + 1


def test_stalled_stream_ends_with_an_sse_timeout_error(
    server: BastionServer, fake: FakeUpstream
) -> None:
    timeouts = server.metric("bastion_errors_total", endpoint="chat", code="upstream_timeout")
    fake.script([{"stall_after_chunks": 2, "chunks": 6}], match="stall-mid-stream")
    t0 = time.monotonic()
    with httpx.stream(
        "POST",
        server.url + "/chat/completions",
        json={"model": "gpt", "messages": _msg("stall-mid-stream now"), "stream": True},
        headers=_auth(server),
        timeout=10,
    ) as r:
        assert r.status_code == 200
        lines = _sse_data_lines(r)
    elapsed = time.monotonic() - t0
    assert 0.9 <= elapsed < 5  # stream_idle_s is 1
    assert lines[-1] != "[DONE]" and "[DONE]" not in lines
    content = [json.loads(x) for x in lines[:-1]]
    assert any(c["choices"] and c["choices"][0]["delta"].get("content") for c in content)
    last = json.loads(lines[-1])
    assert last["error"]["code"] == "upstream_timeout"
    assert set(last["error"]) == {"message", "type", "code", "param"}
    timed_out = _metric_reaches(
        server, "bastion_errors_total", timeouts + 1, endpoint="chat", code="upstream_timeout"
    )
    assert timed_out == timeouts + 1


def test_client_disconnect_closes_the_upstream_stream(
    server: BastionServer, fake: FakeUpstream
) -> None:
    def in_flight_settles(target: int, within: float) -> bool:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            if fake.stats()["in_flight"] == target:
                return True
            time.sleep(0.05)
        return fake.stats()["in_flight"] == target

    assert in_flight_settles(0, 5)  # leftovers of earlier tests are gone
    gone = server.metric("bastion_requests_total", endpoint="chat", status="499")
    fake.script([{"chunk_delay_s": 0.2, "chunks": 50}], match="client-leaves")
    with httpx.stream(
        "POST",
        server.url + "/chat/completions",
        json={"model": "gpt", "messages": _msg("client-leaves early"), "stream": True},
        headers=_auth(server),
        timeout=10,
    ) as r:
        assert r.status_code == 200
        got = []
        for line in r.iter_lines():
            if line.startswith("data: "):
                got.append(json.loads(line[6:]))
            if len(got) == 2:
                break
        assert fake.stats()["in_flight"] == 1
    # leaving the block closed the response and its connection
    assert in_flight_settles(0, 5)
    assert fake.stats()["by_path"]["/v1/chat/completions"] == {"200": 1}
    closed = _metric_reaches(
        server, "bastion_requests_total", gone + 1, endpoint="chat", status="499"
    )
    assert closed == gone + 1


# ------------------------------------------------------------------ circuit breaker


@pytest.fixture
def breaker_server(upstream: FakeUpstream, tmp_path: Path) -> Iterator[BastionServer]:
    with run_bastion(_breaker_policy(upstream), tmp_path / "brk", env=ENV) as srv:
        yield srv


def _models_sent(fake: FakeUpstream, marker: str) -> list[str]:
    return [r["body"]["model"] for r in _sent(fake, marker)]


def test_breaker_opens_skips_the_deployment_then_recovers(
    breaker_server: BastionServer, fake: FakeUpstream
) -> None:
    srv = breaker_server
    client = openai.OpenAI(base_url=srv.url, api_key=srv.admin_key, max_retries=0, timeout=15)

    def ask(marker: str) -> str:
        raw = client.chat.completions.with_raw_response.create(
            model="brk", messages=_msg(f"{marker} q")
        )
        assert raw.parse().choices[0].message.content == f"echo: {marker} q"
        return raw.headers["x-bastion-deployment"]

    # two failures in a row (first try + its retry) open the breaker
    fake.script([{"status": 500}, {"status": 500}], match="brk-open")
    assert ask("brk-open") == "up2/backup"
    assert _models_sent(fake, "brk-open") == ["flaky", "flaky", "backup"]
    assert srv.metric("bastion_breaker_state", deployment="up/flaky") == 1

    # open: straight to the fallback, the broken deployment sees nothing
    assert ask("brk-skip") == "up2/backup"
    assert _models_sent(fake, "brk-skip") == ["backup"]
    assert srv.metric("bastion_fallbacks_total", model="brk") == 1  # only the first request

    # after the cooldown one probe goes through (half-open) while others still skip
    time.sleep(1.1)
    fake.script([{"delay_s": 0.8}], match="brk-probe")
    result: dict[str, str] = {}
    probe = threading.Thread(target=lambda: result.setdefault("dep", ask("brk-probe")))
    probe.start()
    try:
        deadline = time.monotonic() + 3
        while srv.metric("bastion_breaker_state", deployment="up/flaky") != 2:
            assert time.monotonic() < deadline, "the breaker never went half-open"
            time.sleep(0.02)
        assert ask("brk-during-probe") == "up2/backup"
    finally:
        probe.join(10)
    assert result["dep"] == "up/flaky"
    assert _models_sent(fake, "brk-probe") == ["flaky"]
    assert _models_sent(fake, "brk-during-probe") == ["backup"]
    # the probe's success closed the breaker: traffic is back on the primary
    assert srv.metric("bastion_breaker_state", deployment="up/flaky") == 0
    assert ask("brk-closed") == "up/flaky"
    assert _models_sent(fake, "brk-closed") == ["flaky"]


def test_failed_probe_reopens_the_breaker(
    breaker_server: BastionServer, fake: FakeUpstream
) -> None:
    srv = breaker_server
    client = openai.OpenAI(base_url=srv.url, api_key=srv.admin_key, max_retries=0, timeout=15)
    fake.script([{"status": 503}, {"status": 503}], match="reopen-a")
    client.chat.completions.create(model="brk", messages=_msg("reopen-a q"))
    assert srv.metric("bastion_breaker_state", deployment="up/flaky") == 1
    time.sleep(1.1)
    # the probe fails: no retry on a half-open breaker, the fallback answers
    fake.script([{"status": 503}], match="reopen-b")
    raw = client.chat.completions.with_raw_response.create(model="brk", messages=_msg("reopen-b q"))
    assert raw.headers["x-bastion-deployment"] == "up2/backup"
    assert _models_sent(fake, "reopen-b") == ["flaky", "backup"]
    assert srv.metric("bastion_breaker_state", deployment="up/flaky") == 1
    # open again for another cooldown
    client.chat.completions.create(model="brk", messages=_msg("reopen-c q"))
    assert _models_sent(fake, "reopen-c") == ["backup"]


def test_every_breaker_open_gives_no_healthy_deployment(
    upstream: FakeUpstream, fake: FakeUpstream, tmp_path: Path
) -> None:
    policy = f"""\
providers:
  up: {{type: openai, base_url: "{upstream.url}", api_key: env:UPSTREAM_KEY}}
models:
  solo:
    routes: [{{provider: up, model: only}}]
    retries: {{attempts: 1, base_s: 0.01}}
    breaker: {{consecutive_failures: 2, cooldown_s: 30}}
"""
    with run_bastion(policy, tmp_path / "solo", env=ENV) as srv:
        client = openai.OpenAI(base_url=srv.url, api_key=srv.admin_key, max_retries=0)
        fake.script([{"status": 500}, {"status": 500}], match="solo-down")
        with pytest.raises(openai.InternalServerError) as first:
            client.chat.completions.create(model="solo", messages=_msg("solo-down q"))
        assert first.value.status_code == 502 and first.value.code == "upstream_error"
        with pytest.raises(openai.APIStatusError) as second:
            client.chat.completions.create(model="solo", messages=_msg("solo-skipped q"))
        assert second.value.status_code == 503
        assert second.value.code == "no_healthy_deployment"
        assert int(second.value.response.headers["retry-after"]) >= 1
        assert _sent(fake, "solo-skipped") == []
