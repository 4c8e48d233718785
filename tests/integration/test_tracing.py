"""OpenTelemetry GenAI spans, from an app served by uvicorn in a thread."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from typing import Any

import openai
import pytest
import uvicorn
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from bastion.api.app import BastionApp
from bastion.config.loader import parse_policy
from bastion.core.secrets import hash_key
from bastion.gateway.auth import KeyRecord
from bastion.gateway.service import Gateway
from bastion.telemetry.metrics import Metrics
from bastion.telemetry.tracing import Tracing
from bastion.testing.fake_upstream import FakeUpstream
from bastion.testing.server import free_port
from tests.integration.gateway_policy import ENV, policy

KEY = "trace-test-key"


@pytest.fixture
def traced(fake: FakeUpstream, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, Any]]:
    for k, v in ENV.items():
        monkeypatch.setenv(k, v)
    exporter = InMemorySpanExporter()
    metrics = Metrics()
    gateway = Gateway(
        parse_policy(policy(fake)),
        observer=metrics,
        extra_keys=[KeyRecord(id="k", name="k", hash=hash_key(KEY))],
    )
    tracing = Tracing(exporter=exporter)
    app = BastionApp(gateway, metrics=metrics, tracing=tracing)
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, lifespan="on")
    )
    thread = threading.Thread(target=lambda: asyncio.run(server.serve()), daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}/v1", (exporter, tracing)
    finally:
        server.should_exit = True
        thread.join(10)


def test_chat_spans_follow_genai_conventions(traced: tuple[str, Any]) -> None:
    url, (exporter, tracing) = traced
    client = openai.OpenAI(base_url=url, api_key=KEY, max_retries=0)
    client.chat.completions.create(
        model="gpt", messages=[{"role": "user", "content": "secret prompt"}], max_tokens=7
    )
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])
    client.embeddings.create(model="emb", input="x")
    # spans are recorded just after the response is sent: wait for the last one
    deadline = time.monotonic() + 5
    while True:
        tracing.flush()
        spans = {s.name: s for s in exporter.get_finished_spans()}
        if "embeddings emb" in spans or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    chat = spans["chat gpt"]
    a = chat.attributes
    assert chat.kind.name == "CLIENT"
    assert a["gen_ai.operation.name"] == "chat"
    assert a["gen_ai.provider.name"] == "up"
    assert a["gen_ai.request.model"] == "gpt"
    assert a["gen_ai.response.model"] == "gpt-4o-mini"
    assert a["gen_ai.request.max_tokens"] == 7
    assert a["gen_ai.usage.input_tokens"] > 0 and a["gen_ai.usage.output_tokens"] > 0
    assert "secret prompt" not in str(dict(a))
    failed = spans["chat nope"]
    assert failed.attributes["error.type"] == "model_not_found"
    assert failed.status.status_code.name == "ERROR"
    assert spans["embeddings emb"].attributes["gen_ai.operation.name"] == "embeddings"
