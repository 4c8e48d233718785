"""The ``openai`` provider adapter against the real fake upstream process."""

from __future__ import annotations

import asyncio
import email.utils
import socket
import time
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
import pytest_asyncio

from bastion.core.errors import (
    UpstreamClientError,
    UpstreamConnectError,
    UpstreamError,
    UpstreamFailure,
    UpstreamRateLimited,
    UpstreamTimeout,
)
from bastion.core.types import ChatRequest, EmbeddingRequest
from bastion.providers._http import SSEDecoder, deadlines, parse_retry_after, redact
from bastion.providers.base import CallContext, Provider, Timeouts
from bastion.providers.openai_compat import OpenAICompatProvider
from bastion.testing.fake_upstream import FakeUpstream

KEY = "sk-unit-test-secret-0123456789"
_JSON = "application/json"
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"location": {"type": "string"}}},
    },
}


@pytest_asyncio.fixture(loop_scope="function")
async def provider(fake: FakeUpstream) -> AsyncIterator[OpenAICompatProvider]:
    p = OpenAICompatProvider("fake", base_url=fake.url, api_key=KEY)
    yield p
    await p.aclose()


def chat(text: str, **extra: Any) -> ChatRequest:
    return ChatRequest.model_validate(
        {"model": "alias", "messages": [{"role": "user", "content": text}], **extra}
    )


def ctx(**timeouts: float) -> CallContext:
    return CallContext(request_id="req-1", timeouts=Timeouts(**timeouts))


def last_request(fake: FakeUpstream, needle: str) -> dict[str, Any]:
    found = [r for r in fake.requests() if needle in orjson.dumps(r["body"]).decode()]
    assert found, f"no recorded request contains {needle!r}"
    return found[-1]


async def collect(
    p: OpenAICompatProvider, req: ChatRequest, c: CallContext
) -> list[dict[str, Any]]:
    return [chunk async for chunk in p.chat_stream(req, "gpt-4o-mini", c)]


def test_is_a_provider() -> None:
    p = OpenAICompatProvider("x", base_url="http://127.0.0.1:1/v1", api_key=KEY)
    assert isinstance(p, Provider)
    assert p.type == "openai"
    assert KEY not in repr(p)


async def test_chat_forwards_key_and_model(
    provider: OpenAICompatProvider, fake: FakeUpstream
) -> None:
    c = ctx()
    reply = await provider.chat(chat("hello plain chat"), "gpt-4o-mini", c)
    assert reply["object"] == "chat.completion"
    assert reply["choices"][0]["message"]["content"] == "echo: hello plain chat"
    assert reply["usage"]["completion_tokens"] == 4
    assert reply["model"] == "gpt-4o-mini"
    assert c.upstream_s > 0
    rec = last_request(fake, "hello plain chat")
    assert rec["headers"]["authorization"] == f"Bearer {KEY}"
    assert rec["body"]["model"] == "gpt-4o-mini"
    assert rec["body"]["stream"] is False
    assert "stream_options" not in rec["body"]


async def test_upstream_time_accumulates(
    provider: OpenAICompatProvider, fake: FakeUpstream
) -> None:
    c = ctx()
    await provider.chat(chat("first accumulate"), "m", c)
    after_one = c.upstream_s
    fake.script({"delay_s": 0.05}, match="slow accumulate")
    await provider.chat(chat("slow accumulate"), "m", c)
    assert after_one > 0
    assert c.upstream_s >= after_one + 0.05


async def test_stream_always_requests_usage(
    provider: OpenAICompatProvider, fake: FakeUpstream
) -> None:
    c = ctx()
    chunks = await collect(provider, chat("stream me please", stream=True), c)
    text = "".join(ch["choices"][0]["delta"].get("content") or "" for ch in chunks if ch["choices"])
    assert text == "echo: stream me please"
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"]["completion_tokens"] == 4
    assert any(ch["choices"] and ch["choices"][0]["finish_reason"] == "stop" for ch in chunks)
    rec = last_request(fake, "stream me please")
    assert rec["body"]["stream"] is True
    assert rec["body"]["stream_options"] == {"include_usage": True}
    assert c.upstream_s > 0


async def test_stream_many_chunks(provider: OpenAICompatProvider, fake: FakeUpstream) -> None:
    fake.script({"chunks": 50, "content": "x" * 500}, match="fifty chunks")
    chunks = await collect(provider, chat("fifty chunks", stream=True), ctx())
    deltas = [ch["choices"][0]["delta"].get("content") for ch in chunks if ch["choices"]]
    assert "".join(d or "" for d in deltas) == "x" * 500
    assert sum(1 for d in deltas if d) == 50


async def test_tool_call_stream_deltas(provider: OpenAICompatProvider) -> None:
    req = chat("what is the weather in Paris", stream=True, tools=[WEATHER_TOOL])
    chunks = await collect(provider, req, ctx())
    calls = [
        tc
        for ch in chunks
        if ch["choices"]
        for tc in ch["choices"][0]["delta"].get("tool_calls") or []
    ]
    assert calls[0]["id"] and calls[0]["function"]["name"] == "get_weather"
    assert len(calls) > 2, "arguments should arrive in fragments"
    args = "".join(tc["function"].get("arguments", "") for tc in calls)
    assert orjson.loads(args) == {"location": "Paris"}
    finishes = [ch["choices"][0]["finish_reason"] for ch in chunks if ch["choices"]]
    assert finishes[-1] == "tool_calls"


async def test_tool_call_non_stream(provider: OpenAICompatProvider) -> None:
    reply = await provider.chat(chat("weather please", tools=[WEATHER_TOOL]), "m", ctx())
    call = reply["choices"][0]["message"]["tool_calls"][0]
    assert call["function"]["name"] == "get_weather"
    assert reply["choices"][0]["finish_reason"] == "tool_calls"


@pytest.mark.parametrize(
    "fmt",
    [
        {"type": "json_object"},
        {
            "type": "json_schema",
            "json_schema": {
                "name": "answer",
                "schema": {"type": "object", "properties": {"city": {"type": "string"}}},
            },
        },
    ],
)
async def test_response_format_passthrough(
    provider: OpenAICompatProvider, fake: FakeUpstream, fmt: dict[str, Any]
) -> None:
    text = f"json please {fmt['type']}"
    reply = await provider.chat(chat(text, response_format=fmt), "m", ctx())
    content = orjson.loads(reply["choices"][0]["message"]["content"])
    assert isinstance(content, dict)
    if fmt["type"] == "json_schema":
        assert set(content) == {"city"}
    assert last_request(fake, text)["body"]["response_format"] == fmt


async def test_embeddings(provider: OpenAICompatProvider, fake: FakeUpstream) -> None:
    req = EmbeddingRequest(model="embed", input=["alpha beta", "gamma"], dimensions=16)
    c = ctx()
    reply = await provider.embed(req, "text-embedding-3-small", c)
    assert [len(d["embedding"]) for d in reply["data"]] == [16, 16]
    assert reply["usage"]["prompt_tokens"] == 3
    assert c.upstream_s > 0
    rec = last_request(fake, "alpha beta")
    assert rec["path"] == "/v1/embeddings"
    assert rec["body"]["model"] == "text-embedding-3-small"


@pytest.mark.parametrize(
    ("step", "error", "status", "retryable"),
    [
        ({"status": 400}, UpstreamClientError, 400, False),
        ({"status": 401}, UpstreamClientError, 401, False),
        ({"status": 404}, UpstreamClientError, 404, False),
        ({"status": 422}, UpstreamClientError, 422, False),
        ({"status": 429}, UpstreamRateLimited, 429, True),
        ({"status": 408}, UpstreamError, 408, True),
        ({"status": 500}, UpstreamError, 500, True),
        ({"status": 503}, UpstreamError, 503, True),
    ],
)
@pytest.mark.parametrize("stream", [False, True])
async def test_status_classification(
    provider: OpenAICompatProvider,
    fake: FakeUpstream,
    step: dict[str, Any],
    error: type[UpstreamFailure],
    status: int,
    retryable: bool,
    stream: bool,
) -> None:
    text = f"classify {status} {stream}"
    fake.script({**step, "message": f"scripted {status}"}, match=text)
    with pytest.raises(error) as info:
        if stream:
            await collect(provider, chat(text, stream=True), ctx())
        else:
            await provider.chat(chat(text), "m", ctx())
    assert type(info.value) is error
    assert info.value.upstream_status == status
    assert info.value.retryable is retryable
    assert info.value.deployment is None
    assert f"scripted {status}" in info.value.message
    if error is UpstreamClientError:
        assert info.value.status == status


@pytest.mark.parametrize(
    ("step", "expected"),
    [
        ({"retry_after": 3}, 3.0),
        ({"retry_after_ms": 1500}, 1.5),
        ({"retry_after": "soon"}, None),
    ],
)
async def test_retry_after(
    provider: OpenAICompatProvider, fake: FakeUpstream, step: dict[str, Any], expected: float
) -> None:
    text = f"retry after {step}"
    fake.script({"status": 429, **step}, match=text)
    with pytest.raises(UpstreamRateLimited) as info:
        await provider.chat(chat(text), "m", ctx())
    assert info.value.retry_after == expected


def test_retry_after_http_date() -> None:
    when = email.utils.formatdate(time.time() + 120, usegmt=True)
    seconds = parse_retry_after({"retry-after": when})
    assert seconds is not None and 100 < seconds <= 120
    assert parse_retry_after({}) is None


async def test_error_message_never_leaks_key(
    provider: OpenAICompatProvider, fake: FakeUpstream
) -> None:
    text = "leaky upstream message"
    fake.script({"status": 401, "message": f"Incorrect API key provided: {KEY}"}, match=text)
    with pytest.raises(UpstreamClientError) as info:
        await provider.chat(chat(text), "m", ctx())
    assert "Incorrect API key provided" in info.value.message
    assert KEY not in info.value.message and KEY not in str(info.value)
    assert "sk-" not in redact("token sk-abc123def and Bearer xyz", [])


async def test_malformed_json(provider: OpenAICompatProvider, fake: FakeUpstream) -> None:
    fake.script({"body": '{"id": "broken'}, match="malformed body")
    with pytest.raises(UpstreamError) as info:
        await provider.chat(chat("malformed body"), "m", ctx())
    assert "malformed" in info.value.message
    assert info.value.retryable


async def test_malformed_stream_event(provider: OpenAICompatProvider, fake: FakeUpstream) -> None:
    fake.script({"body": "data: {nope\n\n"}, match="malformed event")
    with pytest.raises(UpstreamError):
        await collect(provider, chat("malformed event", stream=True), ctx())


async def test_json_answer_to_stream_request(
    provider: OpenAICompatProvider, fake: FakeUpstream
) -> None:
    step = {"body": '{"error": {"message": "no streams here"}}', "headers": {"Content-Type": _JSON}}
    fake.script(step, match="json not sse")
    with pytest.raises(UpstreamError) as info:
        await collect(provider, chat("json not sse", stream=True), ctx())
    assert "no streams here" in info.value.message


async def test_stream_without_finish_is_an_error(
    provider: OpenAICompatProvider, fake: FakeUpstream
) -> None:
    event = {"choices": [{"index": 0, "delta": {"content": "half"}, "finish_reason": None}]}
    fake.script({"body": "data: " + orjson.dumps(event).decode() + "\n\n"}, match="cut short")
    with pytest.raises(UpstreamConnectError):
        await collect(provider, chat("cut short", stream=True), ctx())


async def test_connect_refused() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    async with OpenAICompatProvider("dead", base_url=f"http://127.0.0.1:{port}/v1") as p:
        with pytest.raises(UpstreamConnectError):
            await p.chat(chat("anyone there"), "m", ctx())
        with pytest.raises(UpstreamConnectError):
            await collect(p, chat("anyone there", stream=True), ctx())


@pytest.mark.parametrize("stream", [False, True])
async def test_first_byte_timeout(
    provider: OpenAICompatProvider, fake: FakeUpstream, stream: bool
) -> None:
    text = f"slow first byte {stream}"
    fake.script({"delay_s": 2}, match=text)
    with pytest.raises(UpstreamTimeout):
        if stream:
            await collect(provider, chat(text, stream=True), ctx(first_byte=0.2))
        else:
            await provider.chat(chat(text), "m", ctx(first_byte=0.2))


async def test_stream_idle_timeout(provider: OpenAICompatProvider, fake: FakeUpstream) -> None:
    fake.script({"stall_after_chunks": 2, "stall_s": 5}, match="stall here")
    received: list[dict[str, Any]] = []
    with pytest.raises(UpstreamTimeout) as info:
        async for chunk in provider.chat_stream(
            chat("stall here now", stream=True), "m", ctx(stream_idle=0.3)
        ):
            received.append(chunk)
    assert "idle" in info.value.message
    assert len(received) == 3  # the role chunk and two content chunks


async def test_total_timeout_mid_stream(provider: OpenAICompatProvider, fake: FakeUpstream) -> None:
    fake.script({"chunks": 20, "chunk_delay_s": 0.1}, match="long stream")
    with pytest.raises(UpstreamTimeout) as info:
        await collect(provider, chat("long stream", stream=True), ctx(total=0.5))
    assert "total" in info.value.message


async def test_mid_stream_disconnect(provider: OpenAICompatProvider, fake: FakeUpstream) -> None:
    fake.script({"disconnect_after_chunks": 2}, match="drop me")
    received: list[dict[str, Any]] = []
    with pytest.raises(UpstreamConnectError):
        async for chunk in provider.chat_stream(chat("drop me now", stream=True), "m", ctx()):
            received.append(chunk)
    assert len(received) == 3


async def test_error_event_in_stream(provider: OpenAICompatProvider, fake: FakeUpstream) -> None:
    fake.script({"error_after_chunks": 1, "message": "overloaded mid-way"}, match="event err")
    with pytest.raises(UpstreamError) as info:
        await collect(provider, chat("event err", stream=True), ctx())
    assert "overloaded mid-way" in info.value.message


async def test_vllm_style_error_event(provider: OpenAICompatProvider, fake: FakeUpstream) -> None:
    event = {"object": "error", "message": "context too long", "type": "BadRequestError"}
    fake.script({"body": "data: " + orjson.dumps(event).decode() + "\n\n"}, match="vllm err")
    with pytest.raises(UpstreamError) as info:
        await collect(provider, chat("vllm err", stream=True), ctx())
    assert "context too long" in info.value.message


async def test_connection_reused_after_stream(
    provider: OpenAICompatProvider, fake: FakeUpstream
) -> None:
    for i in range(3):
        await collect(provider, chat(f"reuse {i}", stream=True), ctx())
        await provider.chat(chat(f"reuse plain {i}"), "m", ctx())
    session = provider._pool.get()
    assert session.connector is not None
    assert session.connector._conns  # an idle keep-alive connection is pooled


async def test_azure_headers_and_query(fake: FakeUpstream) -> None:
    async with OpenAICompatProvider(
        "azure",
        base_url=fake.url,
        api_key=KEY,
        azure_api_version="2024-10-21",
        headers={"x-extra": "yes"},
    ) as p:
        await p.chat(chat("azure style"), "m", ctx())
    rec = last_request(fake, "azure style")
    assert rec["query"] == "api-version=2024-10-21"
    assert rec["headers"]["api-key"] == KEY
    assert rec["headers"]["x-extra"] == "yes"
    assert "authorization" not in rec["headers"]


async def test_outside_cancel_is_not_a_timeout(
    provider: OpenAICompatProvider, fake: FakeUpstream
) -> None:
    fake.script({"delay_s": 1}, match="cancel me")
    task = asyncio.create_task(provider.chat(chat("cancel me"), "m", ctx(first_byte=30)))
    await asyncio.sleep(0.1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_deadline_leaves_task_uncancelled() -> None:
    dl = deadlines()
    loop = asyncio.get_running_loop()
    with pytest.raises(TimeoutError):
        await dl.wait(asyncio.sleep(5), loop.time() + 0.05)
    task = asyncio.current_task()
    assert task is not None and task.cancelling() == 0
    assert await dl.wait(asyncio.sleep(0, "done"), loop.time() + 5) == "done"
    assert await dl.wait(asyncio.sleep(0, "none"), None) == "none"


def test_sse_decoder_handles_split_and_crlf() -> None:
    d = SSEDecoder()
    assert d.feed(b'event: ping\r\ndata: {"a"') == []
    assert d.feed(b": 1}\r\n\r\n: comment\n\ndata: x\ndata: y\n\ndata: [DONE]") == [
        ("ping", b'{"a": 1}'),
        ("", b"x\ny"),
    ]
    assert d.flush() == [("", b"[DONE]")]
