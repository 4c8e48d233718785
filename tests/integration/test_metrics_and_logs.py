"""What operators see: ``/metrics`` after real traffic, and the JSON log lines.

The logs must never carry a key (the admin key, a caller's key, an upstream key)
or the text of a prompt.
"""

from __future__ import annotations

import json
import time
from typing import Any

import anthropic
import httpx
import openai
import pytest

from bastion.testing.fake_upstream import FakeUpstream
from bastion.testing.server import BastionServer
from tests.integration.gateway_policy import ANTHROPIC_KEY, UPSTREAM_KEY

PROMPT = "quokka-marmalade-zeppelin-4417 tell me a secret"
WRONG_KEY = "caller-wrong-token-88c1d0"


def _msg(text: str) -> list[Any]:
    return [{"role": "user", "content": text}]


def _records(logs: str) -> list[dict[str, Any]]:
    """The log lines as JSON objects: every line is one."""
    lines = [line for line in logs.splitlines() if line.strip()]
    records = [json.loads(line) for line in lines]
    assert all(
        isinstance(r, dict) and {"ts", "level", "logger", "event"} <= set(r) for r in records
    )
    assert records[0]["event"] == "starting"
    return records


@pytest.fixture
def client(server: BastionServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url, api_key=server.admin_key, max_retries=0, timeout=15)


def test_metrics_count_requests_tokens_overhead_and_errors(
    client: openai.OpenAI, server: BastionServer, fake: FakeUpstream
) -> None:
    def m(name: str, **labels: str) -> float:
        return server.metric(name, **labels)

    ok = m("bastion_requests_total", endpoint="chat", model="gpt", status="200")
    tok_in = m("bastion_tokens_total", model="gpt", direction="input")
    tok_out = m("bastion_tokens_total", model="gpt", direction="output")
    overhead = m("bastion_overhead_seconds_count", endpoint="chat")
    not_found = m("bastion_errors_total", endpoint="chat", code="model_not_found")
    upstream_err = m("bastion_errors_total", endpoint="chat", code="upstream_error")
    failed_502 = m("bastion_requests_total", endpoint="chat", model="gpt", status="502")
    attempts_ok = m("bastion_upstream_attempts_total", deployment="up/gpt-4o-mini", outcome="ok")
    ttft = m("bastion_time_to_first_token_seconds_count", model="gpt")

    usage = {"prompt_tokens": 7, "completion_tokens": 11}
    fake.script([{"usage": usage}, {"usage": usage}], match="metrics-traffic")
    done = client.chat.completions.create(model="gpt", messages=_msg("metrics-traffic plain"))
    assert done.usage is not None and done.usage.prompt_tokens == 7
    chunks = list(
        client.chat.completions.create(
            model="gpt", messages=_msg("metrics-traffic streamed"), stream=True
        )
    )
    assert chunks and all(c.usage is None for c in chunks)  # usage counted, not forwarded
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="does-not-exist", messages=_msg("x"))
    fake.script([{"status": 500}, {"status": 500}], match="metrics-broken")
    with pytest.raises(openai.InternalServerError):
        client.chat.completions.create(model="gpt", messages=_msg("metrics-broken x"))

    assert m("bastion_requests_total", endpoint="chat", model="gpt", status="200") == ok + 2
    assert m("bastion_requests_total", endpoint="chat", model="gpt", status="502") == failed_502 + 1
    assert m("bastion_tokens_total", model="gpt", direction="input") == tok_in + 14
    assert m("bastion_tokens_total", model="gpt", direction="output") == tok_out + 22
    assert m("bastion_overhead_seconds_count", endpoint="chat") == overhead + 4
    assert m("bastion_overhead_seconds_sum", endpoint="chat") > 0
    assert m("bastion_errors_total", endpoint="chat", code="model_not_found") == not_found + 1
    assert m("bastion_errors_total", endpoint="chat", code="upstream_error") == upstream_err + 1
    assert (
        m("bastion_upstream_attempts_total", deployment="up/gpt-4o-mini", outcome="ok")
        == attempts_ok + 2
    )
    assert m("bastion_time_to_first_token_seconds_count", model="gpt") == ttft + 1


def test_metrics_exposition_format(server: BastionServer) -> None:
    r = httpx.get(server.base + "/metrics", timeout=5)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    text = r.text
    types = dict(line.split()[2:4] for line in text.splitlines() if line.startswith("# TYPE "))
    for name, kind in {
        "bastion_requests": "counter",
        "bastion_errors": "counter",
        "bastion_tokens": "counter",
        "bastion_upstream_attempts": "counter",
        "bastion_overhead_seconds": "histogram",
        "bastion_breaker_state": "gauge",
    }.items():
        # prometheus_client names a counter family with or without its _total suffix
        assert types.get(name, types.get(name + "_total")) == kind, name
    # the overhead histogram has cumulative buckets ending in +Inf == count
    inf = server.metric("bastion_overhead_seconds_bucket", endpoint="chat", le="+Inf")
    assert inf == server.metric("bastion_overhead_seconds_count", endpoint="chat")


def test_logs_are_json_without_secrets_or_prompts(
    client: openai.OpenAI, server: BastionServer, fake: FakeUpstream
) -> None:
    # traffic that could leak: a prompt, a stream, the Anthropic front, an upstream
    # error whose message echoes the upstream key, a wrong caller key
    client.chat.completions.create(model="gpt", messages=_msg(PROMPT))
    list(client.chat.completions.create(model="gpt", messages=_msg(PROMPT), stream=True))
    anth = anthropic.Anthropic(base_url=server.base, api_key=server.admin_key, max_retries=0)
    anth.messages.create(model="claude", max_tokens=50, messages=_msg(PROMPT))
    fake.script(
        [{"status": 500, "message": f"bad upstream key {UPSTREAM_KEY} for {PROMPT}"}] * 2,
        match="quokka-marmalade",
    )
    with pytest.raises(openai.InternalServerError) as info:
        client.chat.completions.create(model="gpt", messages=_msg(PROMPT))
    assert UPSTREAM_KEY not in str(info.value.body)  # redacted for the caller too
    fake.script([{"status": 500, "message": f"anthropic key {ANTHROPIC_KEY}"}], match="quokka")
    with pytest.raises(anthropic.InternalServerError) as ainfo:
        anth.messages.create(model="claude", max_tokens=50, messages=_msg(PROMPT))
    assert ANTHROPIC_KEY not in str(ainfo.value.body)
    wrong = openai.OpenAI(base_url=server.url, api_key=WRONG_KEY, max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        wrong.chat.completions.create(model="gpt", messages=_msg(PROMPT))

    # access lines are written in batches (within 0.2 s)
    deadline = time.monotonic() + 5
    while True:
        logs = server.logs()
        records = _records(logs)
        access = [r for r in records if r.get("logger") == "bastion.access"]
        if any(r.get("status") == 401 for r in access) or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert any(r.get("status") == 200 and r.get("model") == "gpt" for r in access)
    assert any(r.get("status") == 502 and r.get("error_code") == "upstream_error" for r in access)
    assert any(r.get("status") == 401 for r in access)
    for secret in (server.admin_key, UPSTREAM_KEY, ANTHROPIC_KEY, WRONG_KEY):
        assert secret not in logs
    assert "quokka" not in logs and "marmalade" not in logs


def test_policy_watcher_does_not_log_every_file_change(
    client: openai.OpenAI, server: BastionServer
) -> None:
    """Regression: the policy watcher used to watch the whole directory and log each
    change; with the log file next to the policy, every log line was a change, so an
    idle server logged ~10 lines/s forever."""
    # run_bastion puts the policy, the key database and the log file in one directory
    client.chat.completions.create(model="gpt", messages=_msg("watcher noise check"))
    # the access log line just written is a change in that directory; the watcher
    # reacts after its debounce (200 ms), so give it a moment before concluding
    deadline = time.monotonic() + 1
    while True:
        chatter = [r for r in _records(server.logs()) if r["logger"].startswith("watchfiles")]
        if chatter or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert chatter == []
