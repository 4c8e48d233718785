"""AnthropicProvider against the real fake upstream process (Anthropic ``/v1/messages``)."""

from __future__ import annotations

import json
import socket
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import pytest_asyncio

from bastion.core.errors import (
    InvalidRequest,
    Unsupported,
    UpstreamClientError,
    UpstreamConnectError,
    UpstreamError,
    UpstreamFailure,
    UpstreamRateLimited,
    UpstreamTimeout,
)
from bastion.core.types import ChatRequest, EmbeddingRequest
from bastion.providers.anthropic import (
    AnthropicProvider,
    ChunkTranslator,
    to_anthropic_request,
    to_chat_completion,
)
from bastion.providers.anthropic_format import messages_request_to_chat
from bastion.providers.base import CallContext, Provider, Timeouts
from bastion.testing.fake_upstream import FakeUpstream, run_fake_upstream

KEY = "sk-ant-test-0123456789abcdef"
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a place",
        "parameters": {"type": "object", "properties": {"location": {"type": "string"}}},
    },
}


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeUpstream]:
    with run_fake_upstream(api_key=KEY) as upstream:
        yield upstream


@pytest_asyncio.fixture(loop_scope="function")  # the test's own loop owns the session
async def provider(fake: FakeUpstream) -> AsyncIterator[AnthropicProvider]:
    fake.reset()
    p = AnthropicProvider("claude", api_key=KEY, base_url=fake.base)
    yield p
    await p.aclose()


def chat(text: str = "hello there", **extra: Any) -> ChatRequest:
    return ChatRequest.model_validate(
        {"model": "alias", "messages": [{"role": "user", "content": text}], **extra}
    )


def ctx(**timeouts: float) -> CallContext:
    return CallContext(request_id="req-1", timeouts=Timeouts(**timeouts))


async def collect(p: AnthropicProvider, request: ChatRequest, c: CallContext) -> list[Any]:
    return [chunk async for chunk in p.chat_stream(request, "claude-3-5-haiku-latest", c)]


def header(record: dict[str, Any], name: str) -> str | None:
    return next((v for k, v in record["headers"].items() if k.lower() == name), None)


# --------------------------------------------------------------------------- calls


async def test_is_a_provider(provider: AnthropicProvider) -> None:
    assert isinstance(provider, Provider)
    assert provider.type == "anthropic"
    assert KEY not in repr(provider)


async def test_chat(provider: AnthropicProvider, fake: FakeUpstream) -> None:
    c = ctx()
    request = ChatRequest.model_validate(
        {
            "model": "alias",
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "hello there"},
            ],
        }
    )
    out = await provider.chat(request, "claude-3-5-haiku-latest", c)
    assert out["object"] == "chat.completion"
    choice = out["choices"][0]
    assert choice["message"] == {"role": "assistant", "content": "echo: hello there"}
    assert choice["finish_reason"] == "stop"
    usage = out["usage"]
    assert usage["completion_tokens"] == 3
    assert usage["total_tokens"] == usage["prompt_tokens"] + 3
    assert c.upstream_s > 0
    [record] = fake.requests()
    assert record["path"] == "/v1/messages"
    assert header(record, "x-api-key") == KEY
    assert header(record, "anthropic-version") == "2023-06-01"
    assert header(record, "authorization") is None
    assert record["body"] == {
        "model": "claude-3-5-haiku-latest",
        "max_tokens": 1024,
        "system": "Be brief.",
        "messages": [{"role": "user", "content": [{"type": "text", "text": "hello there"}]}],
    }


async def test_chat_tool_call(provider: AnthropicProvider) -> None:
    request = chat("what is the weather?", tools=[WEATHER_TOOL], tool_choice="auto")
    out = await provider.chat(request, "claude-3-5-haiku-latest", ctx())
    choice = out["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    [call] = choice["message"]["tool_calls"]
    assert call["type"] == "function" and call["id"].startswith("toolu_")
    assert call["function"]["name"] == "get_weather"
    assert json.loads(call["function"]["arguments"]) == {"location": "Paris"}


async def test_stream_text(provider: AnthropicProvider) -> None:
    c = ctx()
    chunks = await collect(provider, chat("one two three"), c)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert all(ch["object"] == "chat.completion.chunk" for ch in chunks)
    text = "".join(ch["choices"][0]["delta"].get("content", "") for ch in chunks if ch["choices"])
    assert text == "echo: one two three"
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    last = chunks[-1]
    assert last["choices"] == []
    assert last["usage"]["completion_tokens"] == 4
    assert last["usage"]["total_tokens"] == last["usage"]["prompt_tokens"] + 4
    assert c.upstream_s > 0


async def test_stream_tool_use(provider: AnthropicProvider, fake: FakeUpstream) -> None:
    fake.script({"chunks": 4})
    chunks = await collect(provider, chat("weather please", tools=[WEATHER_TOOL]), ctx())
    calls = [
        tc
        for ch in chunks
        if ch["choices"]
        for tc in ch["choices"][0]["delta"].get("tool_calls", [])
    ]
    head, *fragments = calls
    assert head["index"] == 0 and head["id"].startswith("toolu_") and head["type"] == "function"
    assert head["function"] == {"name": "get_weather", "arguments": ""}
    assert len(fragments) == 4 and all(f["index"] == 0 and "id" not in f for f in fragments)
    arguments = "".join(f["function"]["arguments"] for f in fragments)
    assert json.loads(arguments) == {"location": "Paris"}
    assert chunks[-2]["choices"][0]["finish_reason"] == "tool_calls"
    assert chunks[-1]["usage"]["prompt_tokens"] > 0


async def test_embeddings_unsupported(provider: AnthropicProvider) -> None:
    request = EmbeddingRequest(model="e", input="x")
    with pytest.raises(Unsupported) as info:
        await provider.embed(request, "e", ctx())
    assert info.value.code == "unsupported" and info.value.status == 400
    assert isinstance(info.value, InvalidRequest)


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize("stream", [False, True])
async def test_rate_limited_with_retry_after(
    provider: AnthropicProvider, fake: FakeUpstream, stream: bool
) -> None:
    fake.script({"status": 429, "retry_after": 7, "message": f"slow down {KEY}"})
    with pytest.raises(UpstreamRateLimited) as info:
        if stream:
            await collect(provider, chat(), ctx())
        else:
            await provider.chat(chat(), "m", ctx())
    err = info.value
    assert err.retry_after == 7.0 and err.retryable and err.upstream_status == 429
    assert err.deployment == "claude"
    assert KEY not in str(err) and KEY not in err.message
    assert KEY not in json.dumps(err.to_body())


@pytest.mark.parametrize("status", [529, 500, 503])
@pytest.mark.parametrize("stream", [False, True])
async def test_server_errors_are_retryable(
    provider: AnthropicProvider, fake: FakeUpstream, status: int, stream: bool
) -> None:
    fake.script({"status": status})
    with pytest.raises(UpstreamError) as info:
        if stream:
            await collect(provider, chat(), ctx())
        else:
            await provider.chat(chat(), "m", ctx())
    assert info.value.retryable and info.value.upstream_status == status


async def test_bad_request_is_a_client_error(
    provider: AnthropicProvider, fake: FakeUpstream
) -> None:
    fake.script({"status": 400, "message": "messages.0.content: bad"})
    with pytest.raises(UpstreamClientError) as info:
        await provider.chat(chat(), "m", ctx())
    err = info.value
    assert err.status == 400 and not err.retryable and err.upstream_status == 400
    assert "messages.0.content" in err.message


async def test_wrong_key_never_echoed(fake: FakeUpstream) -> None:
    wrong = "sk-ant-wrong-key-999999"
    p = AnthropicProvider("claude", api_key=wrong, base_url=fake.base)
    try:
        with pytest.raises(UpstreamClientError) as info:
            await p.chat(chat(), "m", ctx())
    finally:
        await p.aclose()
    assert info.value.status == 401
    assert wrong not in str(info.value) and KEY not in str(info.value)


async def test_error_event_mid_stream(provider: AnthropicProvider, fake: FakeUpstream) -> None:
    fake.script({"error_after_chunks": 2, "message": "capacity"})
    seen: list[Any] = []
    with pytest.raises(UpstreamError) as info:
        async for chunk in provider.chat_stream(chat("a b c d e f"), "m", ctx()):
            seen.append(chunk)
    assert seen, "chunks before the error reach the caller"
    assert info.value.retryable and "overloaded_error" in info.value.message


async def test_disconnect_mid_stream(provider: AnthropicProvider, fake: FakeUpstream) -> None:
    fake.script({"disconnect_after_chunks": 1})
    with pytest.raises(UpstreamFailure) as info:
        await collect(provider, chat("a b c d e f"), ctx())
    assert info.value.retryable


async def test_stream_idle_timeout(provider: AnthropicProvider, fake: FakeUpstream) -> None:
    fake.script({"stall_after_chunks": 1, "stall_s": 5})
    with pytest.raises(UpstreamTimeout):
        await collect(provider, chat("a b c d"), ctx(stream_idle=0.2))


async def test_first_byte_timeout(provider: AnthropicProvider, fake: FakeUpstream) -> None:
    fake.script({"delay_s": 3})
    with pytest.raises(UpstreamTimeout):
        await provider.chat(chat(), "m", ctx(first_byte=0.2))


async def test_connect_error() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    p = AnthropicProvider("claude", api_key=KEY, base_url=f"http://127.0.0.1:{port}")
    try:
        with pytest.raises(UpstreamConnectError) as info:
            await p.chat(chat(), "m", ctx())
    finally:
        await p.aclose()
    assert info.value.retryable and info.value.deployment == "claude"
    assert KEY not in str(info.value)


# --------------------------------------------------------------------------- translation


def test_request_translation_merges_turns_and_hoists_system() -> None:
    request = ChatRequest.model_validate(
        {
            "model": "alias",
            "max_completion_tokens": 50,
            "temperature": 1.7,
            "top_p": 0.5,
            "top_k": 3,
            "stop": ["END", "  "],
            "user": "u-1",
            "parallel_tool_calls": False,
            "tools": [WEATHER_TOOL],
            "tool_choice": "required",
            "response_format": {"type": "json_object"},
            "messages": [
                {"role": "system", "content": "Sys."},
                {"role": "developer", "content": [{"type": "text", "text": "Dev."}]},
                {"role": "user", "content": "first"},
                {
                    "role": "user",
                    "content": [
                        {"type": "image_url", "image_url": {"url": "data:image/png;base64,QUJD"}}
                    ],
                },
                {
                    "role": "assistant",
                    "content": "calling",
                    "tool_calls": [
                        {
                            "id": "c1",
                            "type": "function",
                            "function": {"name": "a", "arguments": "{}"},
                        },
                        {
                            "id": "c2",
                            "type": "function",
                            "function": {"name": "b", "arguments": '{"x":1}'},
                        },
                    ],
                },
                {"role": "tool", "tool_call_id": "c1", "content": "r1"},
                {"role": "tool", "tool_call_id": "c2", "content": [{"type": "text", "text": "r2"}]},
                {"role": "user", "content": "thanks"},
                {"role": "assistant", "content": "Sure "},
            ],
        }
    )
    body = to_anthropic_request(request, "claude-x", 1024)
    assert body["model"] == "claude-x" and body["max_tokens"] == 50
    assert body["temperature"] == 1.0 and body["top_p"] == 0.5 and body["top_k"] == 3
    assert body["stop_sequences"] == ["END"]
    assert body["metadata"] == {"user_id": "u-1"}
    assert body["system"].startswith("Sys.\n\nDev.\n\n") and "JSON object" in body["system"]
    assert body["tools"] == [
        {
            "name": "get_weather",
            "input_schema": WEATHER_TOOL["function"]["parameters"],  # type: ignore[index]
            "description": "Weather for a place",
        }
    ]
    assert body["tool_choice"] == {"type": "any", "disable_parallel_tool_use": True}
    assert body["messages"] == [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "first"},
                {
                    "type": "image",
                    "source": {"type": "base64", "media_type": "image/png", "data": "QUJD"},
                },
            ],
        },
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "calling"},
                {"type": "tool_use", "id": "c1", "name": "a", "input": {}},
                {"type": "tool_use", "id": "c2", "name": "b", "input": {"x": 1}},
            ],
        },
        {
            "role": "user",
            "content": [
                {
                    "type": "tool_result",
                    "tool_use_id": "c1",
                    "content": [{"type": "text", "text": "r1"}],
                },
                {
                    "type": "tool_result",
                    "tool_use_id": "c2",
                    "content": [{"type": "text", "text": "r2"}],
                },
                {"type": "text", "text": "thanks"},
            ],
        },
        {"role": "assistant", "content": [{"type": "text", "text": "Sure"}]},
    ]


@pytest.mark.parametrize(
    ("choice", "expected"),
    [
        ("auto", {"type": "auto"}),
        ("none", {"type": "none"}),
        (
            {"type": "function", "function": {"name": "get_weather"}},
            {"type": "tool", "name": "get_weather"},
        ),
    ],
)
def test_tool_choice_mapping(choice: Any, expected: dict[str, Any]) -> None:
    body = to_anthropic_request(chat(tools=[WEATHER_TOOL], tool_choice=choice), "m", 10)
    assert body["tool_choice"] == expected


def test_json_schema_response_format_in_system() -> None:
    fmt = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}}
    body = to_anthropic_request(chat(response_format=fmt), "m", 10)
    assert '{"type":"object"}' in body["system"]


def test_invalid_tool_arguments_name_the_field() -> None:
    request = ChatRequest.model_validate(
        {
            "model": "m",
            "messages": [
                {"role": "user", "content": "x"},
                {
                    "role": "assistant",
                    "tool_calls": [{"id": "c", "function": {"name": "f", "arguments": "{oops"}}],
                },
            ],
        }
    )
    with pytest.raises(InvalidRequest) as info:
        to_anthropic_request(request, "m", 10)
    assert info.value.param == "messages[1].tool_calls[0].function.arguments"


def test_front_door_round_trip() -> None:
    """Anthropic request -> canonical -> Anthropic upstream body keeps every block."""
    original = {
        "model": "claude-x",
        "max_tokens": 99,
        "system": "Sys.",
        "temperature": 0.3,
        "stop_sequences": ["STOP"],
        "tools": [{"name": "f", "description": "d", "input_schema": {"type": "object"}}],
        "tool_choice": {"type": "tool", "name": "f"},
        "metadata": {"user_id": "u"},
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "see"},
                    {"type": "image", "source": {"type": "url", "url": "https://x/i.png"}},
                ],
            },
            {
                "role": "assistant",
                "content": [
                    {"type": "text", "text": "ok"},
                    {"type": "tool_use", "id": "t1", "name": "f", "input": {"a": 1}},
                ],
            },
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": "t1", "content": "done"},
                    {"type": "text", "text": "next"},
                ],
            },
        ],
    }
    body = to_anthropic_request(messages_request_to_chat(original), "claude-x", 1024)
    assert body["messages"][0] == original["messages"][0]  # type: ignore[index]
    assert body["messages"][1] == original["messages"][1]  # type: ignore[index]
    assert body["messages"][2]["content"] == [
        {"type": "tool_result", "tool_use_id": "t1", "content": [{"type": "text", "text": "done"}]},
        {"type": "text", "text": "next"},
    ]
    for key in ("model", "max_tokens", "system", "temperature", "stop_sequences", "metadata"):
        assert body[key] == original[key], key
    assert body["tools"] == original["tools"]
    assert body["tool_choice"] == {"type": "tool", "name": "f"}


@pytest.mark.parametrize(
    ("stop_reason", "finish"),
    [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("max_tokens", "length"),
        ("tool_use", "tool_calls"),
        ("refusal", "content_filter"),
    ],
)
def test_response_stop_reasons(stop_reason: str, finish: str) -> None:
    message = {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "content": [{"type": "text", "text": "hi"}],
        "stop_reason": stop_reason,
        "usage": {"input_tokens": 3, "output_tokens": 2, "cache_read_input_tokens": 4},
    }
    out = to_chat_completion(message, "m")
    assert out["choices"][0]["finish_reason"] == finish
    assert out["usage"] == {
        "prompt_tokens": 7,
        "completion_tokens": 2,
        "total_tokens": 9,
        "prompt_tokens_details": {"cached_tokens": 4},
    }


def test_chunk_translator_ignores_ping_and_raises_on_error() -> None:
    t = ChunkTranslator("m", (KEY,))
    assert t.feed({"type": "ping"}) == []
    with pytest.raises(UpstreamError) as info:
        t.feed({"type": "error", "error": {"type": "api_error", "message": f"oops {KEY}"}})
    assert KEY not in info.value.message and info.value.retryable
