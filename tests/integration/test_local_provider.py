"""The bundled local provider against the real SmolLM2 GGUF and MiniLM ONNX models.

One provider (one loaded model) serves the whole module; outputs are kept short.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import pytest
import pytest_asyncio

from bastion.core.errors import InvalidRequest, Overloaded, RequestTooLarge, UpstreamTimeout
from bastion.core.types import ChatRequest, EmbeddingRequest
from bastion.providers.base import CallContext, Provider, Timeouts
from bastion.providers.local import Gate, LocalProvider

pytestmark = [pytest.mark.slow, pytest.mark.asyncio(loop_scope="module")]

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}


def chat_request(text: str, **kw: Any) -> ChatRequest:
    body: dict[str, Any] = {"model": "local", "messages": [{"role": "user", "content": text}]}
    body.update({"max_tokens": 16, "temperature": 0, **kw})
    return ChatRequest.model_validate(body)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def provider() -> AsyncIterator[LocalProvider]:
    p = LocalProvider(max_concurrency=1, max_queue=1)
    assert p.stats()["idle_instances"] == 0  # nothing loaded until used
    await p.warm()
    yield p
    await p.aclose()


async def test_is_a_provider(provider: LocalProvider) -> None:
    assert isinstance(provider, Provider)
    assert provider.type == "local" and provider.name == "local"
    assert provider.stats()["idle_instances"] == 1


async def test_chat_returns_text_and_usage(provider: LocalProvider) -> None:
    ctx = CallContext(request_id="r1")
    body = await provider.chat(chat_request("What is the capital of France?"), "smol", ctx)
    assert body["object"] == "chat.completion" and body["id"].startswith("chatcmpl-")
    assert body["model"] == "smol"
    choice = body["choices"][0]
    assert choice["message"]["role"] == "assistant"
    assert choice["message"]["content"].strip()
    assert choice["finish_reason"] in ("stop", "length")
    usage = body["usage"]
    assert usage["prompt_tokens"] > 5
    assert 1 <= usage["completion_tokens"] <= 16
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert ctx.upstream_s > 0


async def test_seeded_sampling_is_reproducible(provider: LocalProvider) -> None:
    req = chat_request("Tell me a word.", temperature=1.0, seed=7, max_tokens=8)
    a = await provider.chat(req, "smol", CallContext(request_id="a"))
    b = await provider.chat(req, "smol", CallContext(request_id="b"))
    assert a["choices"][0]["message"]["content"] == b["choices"][0]["message"]["content"]


async def test_stream_yields_deltas_then_usage(provider: LocalProvider) -> None:
    ctx = CallContext(request_id="r2")
    chunks = [c async for c in provider.chat_stream(chat_request("Say hello."), "smol", ctx)]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert len({c["id"] for c in chunks}) == 1
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text.strip()
    assert chunks[-2]["choices"][0]["finish_reason"] in ("stop", "length")
    last = chunks[-1]
    assert last["choices"] == []
    assert 1 <= last["usage"]["completion_tokens"] <= 16
    assert last["usage"]["prompt_tokens"] > 5
    assert ctx.upstream_s > 0


async def test_stream_and_chat_agree(provider: LocalProvider) -> None:
    req = chat_request("Name a colour.", max_tokens=8)
    body = await provider.chat(req, "smol", CallContext(request_id="c"))
    chunks = [c async for c in provider.chat_stream(req, "smol", CallContext(request_id="s"))]
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == body["choices"][0]["message"]["content"]
    assert chunks[-1]["usage"] == body["usage"]


async def test_json_object_response_format_parses(provider: LocalProvider) -> None:
    req = chat_request(
        "Describe a cat as JSON with keys name and age.",
        max_tokens=96,
        response_format={"type": "json_object"},
    )
    body = await provider.chat(req, "smol", CallContext(request_id="j"))
    assert body["choices"][0]["finish_reason"] == "stop"
    assert isinstance(json.loads(body["choices"][0]["message"]["content"]), dict)


async def test_json_schema_response_format_follows_schema(provider: LocalProvider) -> None:
    schema = {
        "type": "object",
        "properties": {"city": {"type": "string"}, "country": {"type": "string"}},
        "required": ["city", "country"],
    }
    req = chat_request(
        "Which city is the capital of France?",
        max_tokens=48,
        response_format={"type": "json_schema", "json_schema": {"name": "c", "schema": schema}},
    )
    body = await provider.chat(req, "smol", CallContext(request_id="js"))
    data = json.loads(body["choices"][0]["message"]["content"])
    assert set(data) == {"city", "country"}


async def test_forced_tool_choice_returns_tool_call(provider: LocalProvider) -> None:
    req = chat_request(
        "What is the weather in Paris?",
        max_tokens=32,
        tools=[WEATHER_TOOL],
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
    )
    body = await provider.chat(req, "smol", CallContext(request_id="t"))
    choice = body["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    (call,) = choice["message"]["tool_calls"]
    assert call["id"].startswith("call_") and call["function"]["name"] == "get_weather"
    assert isinstance(json.loads(call["function"]["arguments"])["city"], str)


async def test_tools_with_auto_choice_answer_in_text(provider: LocalProvider) -> None:
    req = chat_request("Hi!", tools=[WEATHER_TOOL], tool_choice="auto")
    body = await provider.chat(req, "smol", CallContext(request_id="ta"))
    assert body["choices"][0]["message"]["content"]
    assert "tool_calls" not in body["choices"][0]["message"]


async def test_queue_overflow_raises_overloaded(provider: LocalProvider) -> None:
    req = chat_request("Count to ten.")
    results = await asyncio.gather(
        *(provider.chat(req, "smol", CallContext(request_id=f"q{i}")) for i in range(4)),
        return_exceptions=True,
    )
    overloaded = [r for r in results if isinstance(r, Overloaded)]
    answered = [r for r in results if isinstance(r, dict)]
    assert len(overloaded) == 2 and len(answered) == 2  # 1 running + 1 queued
    assert overloaded[0].status == 503 and overloaded[0].retry_after == 1.0
    assert provider.stats()["running"] == 0 and provider.stats()["waiting"] == 0


async def test_closing_stream_early_stops_generation_and_frees_slot(
    provider: LocalProvider,
) -> None:
    before = provider.stats()["cancelled"]
    stream = provider.chat_stream(
        chat_request("Write a long story about dragons.", max_tokens=400),
        "smol",
        CallContext(request_id="early"),
    )
    assert isinstance(stream, AsyncIterator)
    seen = 0
    async for chunk in stream:
        seen += 1 if chunk["choices"] and chunk["choices"][0]["delta"].get("content") else 0
        if seen == 3:
            break
    await stream.aclose()  # type: ignore[attr-defined]
    stats = provider.stats()
    assert stats["running"] == 0
    assert stats["cancelled"] == before + 1
    body = await provider.chat(chat_request("Hi"), "smol", CallContext(request_id="after"))
    assert body["choices"][0]["message"]["content"]


async def test_cancelled_chat_stops_generation(provider: LocalProvider) -> None:
    before = provider.stats()["cancelled"]
    essay = chat_request("Write a long essay about the history of Rome.", max_tokens=1000)
    with pytest.raises(TimeoutError):  # wait_for cancels the call, like a client disconnect
        await asyncio.wait_for(provider.chat(essay, "smol", CallContext("x")), timeout=0.3)
    body = await provider.chat(chat_request("Hi"), "smol", CallContext(request_id="after2"))
    assert body["usage"]["completion_tokens"] >= 1
    assert provider.stats()["cancelled"] == before + 1


async def test_prompt_longer_than_context_is_rejected(provider: LocalProvider) -> None:
    with pytest.raises(RequestTooLarge):
        await provider.chat(chat_request("word " * 3000), "smol", CallContext(request_id="big"))
    assert provider.stats()["running"] == 0


async def test_non_text_content_is_rejected(provider: LocalProvider) -> None:
    req = ChatRequest.model_validate(
        {
            "model": "local",
            "messages": [
                {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}
            ],
        }
    )
    with pytest.raises(InvalidRequest):
        await provider.chat(req, "smol", CallContext(request_id="img"))


async def test_embeddings(provider: LocalProvider) -> None:
    ctx = CallContext(request_id="e")
    texts = ["The cat sat on the mat.", "A cat was sitting on a rug.", "Stock prices fell."]
    body = await provider.embed(EmbeddingRequest(model="mini", input=texts), "mini", ctx)
    assert body["object"] == "list" and body["model"] == "mini"
    assert [d["index"] for d in body["data"]] == [0, 1, 2]
    vecs = np.array([d["embedding"] for d in body["data"]], dtype=np.float32)
    assert vecs.shape == (3, 384)
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    assert vecs[0] @ vecs[1] > vecs[0] @ vecs[2]
    assert body["usage"]["prompt_tokens"] == body["usage"]["total_tokens"] > 3 * 2
    assert ctx.upstream_s > 0

    b64 = await provider.embed(
        EmbeddingRequest(model="mini", input=texts, encoding_format="base64"), "mini", ctx
    )
    decoded = np.frombuffer(base64.b64decode(b64["data"][0]["embedding"]), dtype="<f4")
    np.testing.assert_array_equal(decoded, vecs[0])


async def test_embedding_dimensions(provider: LocalProvider) -> None:
    ctx = CallContext(request_id="d")
    body = await provider.embed(
        EmbeddingRequest(model="mini", input="hello world", dimensions=64), "mini", ctx
    )
    vec = np.array(body["data"][0]["embedding"])
    assert vec.shape == (64,)
    assert abs(float(np.linalg.norm(vec)) - 1.0) < 1e-5
    with pytest.raises(InvalidRequest):
        await provider.embed(EmbeddingRequest(model="m", input="x", dimensions=385), "m", ctx)
    with pytest.raises(InvalidRequest):
        await provider.embed(EmbeddingRequest(model="m", input=[1, 2, 3]), "m", ctx)
    with pytest.raises(InvalidRequest):
        await provider.embed(EmbeddingRequest(model="m", input=[]), "m", ctx)


async def test_timeout_stops_generation(provider: LocalProvider) -> None:
    before = provider.stats()["cancelled"]
    ctx = CallContext(request_id="slow", timeouts=Timeouts(total=0.2, first_byte=0.2))
    with pytest.raises(UpstreamTimeout):
        await provider.chat(chat_request("Write a long essay.", max_tokens=1000), "smol", ctx)
    body = await provider.chat(chat_request("Hi"), "smol", CallContext(request_id="after3"))
    assert body["choices"][0]["message"]["content"]
    assert provider.stats()["cancelled"] == before + 1
    assert ctx.upstream_s > 0


async def test_gate_passes_slots_on_when_waiters_leave() -> None:
    gate = Gate(1, 2, "full")
    await gate.acquire()
    first = asyncio.create_task(gate.acquire())
    second = asyncio.create_task(gate.acquire())
    await asyncio.sleep(0)
    assert gate.waiting == 2
    with pytest.raises(Overloaded):
        await gate.acquire()
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    gate.release()  # goes to the second waiter, not to the cancelled first
    await second
    assert gate.running == 1 and gate.waiting == 0
    gate.release()
    assert gate.running == 0
