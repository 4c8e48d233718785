"""The Anthropic Messages front door: request, response, stream and error translation."""

from __future__ import annotations

import json
from typing import Any

import anthropic.types as at
import pytest
from pydantic import TypeAdapter

from bastion.core.errors import (
    AuthenticationError,
    BastionError,
    InvalidRequest,
    NotFound,
    Overloaded,
    PermissionDenied,
    RateLimited,
    RequestTooLarge,
    Unsupported,
    UpstreamError,
    UpstreamTimeout,
)
from bastion.providers.anthropic_format import (
    MessagesStreamTranslator,
    chat_to_message,
    error_body,
    error_event,
    messages_request_to_chat,
)

STREAM_EVENT = TypeAdapter(at.RawMessageStreamEvent)


def body(**over: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "model": "claude-x",
        "max_tokens": 64,
        "messages": [{"role": "user", "content": "hi"}],
    }
    base.update(over)
    return base


def dumped(req: Any) -> list[dict[str, Any]]:
    return [m.model_dump(exclude_none=True) for m in req.messages]


# --------------------------------------------------------------------------- request


def test_minimal_request() -> None:
    req = messages_request_to_chat(body(temperature=0.5, top_p=0.9, top_k=5))
    assert req.model == "claude-x"
    assert req.max_tokens == 64
    assert req.temperature == 0.5 and req.top_p == 0.9
    assert "top_k" not in (req.model_extra or {})
    assert dumped(req) == [{"role": "user", "content": "hi"}]
    assert req.stream is False and req.stream_options is None


@pytest.mark.parametrize(
    ("system", "expected"),
    [
        ("be brief", "be brief"),
        (
            [{"type": "text", "text": "a"}, {"type": "text", "text": "b", "cache_control": {}}],
            "a\nb",
        ),
    ],
)
def test_system_variants(system: Any, expected: str) -> None:
    req = messages_request_to_chat(body(system=system))
    assert dumped(req)[0] == {"role": "system", "content": expected}


def test_empty_system_is_omitted() -> None:
    assert dumped(messages_request_to_chat(body(system="")))[0]["role"] == "user"


def test_every_block_type() -> None:
    messages = [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "look"},
                {
                    "type": "image",
                    "source": {"type": "base64", "media_type": "image/png", "data": "AAA"},
                },
                {"type": "image", "source": {"type": "url", "url": "https://x/y.png"}},
            ],
        },
        {
            "role": "assistant",
            "content": [
                {"type": "thinking", "thinking": "hmm", "signature": "s"},
                {"type": "text", "text": "calling"},
                {"type": "tool_use", "id": "toolu_1", "name": "get", "input": {"q": 1}},
                {"type": "tool_use", "id": "toolu_2", "name": "put", "input": {}},
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": "one"},
                {
                    "type": "tool_result",
                    "tool_use_id": "toolu_2",
                    "is_error": True,
                    "content": [
                        {"type": "text", "text": "two"},
                        {"type": "text", "text": "three"},
                        {"type": "image", "source": {"type": "url", "url": "https://x/z.png"}},
                    ],
                },
                {"type": "text", "text": "go on"},
            ],
        },
    ]
    got = dumped(messages_request_to_chat(body(messages=messages)))
    assert got == [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "look"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAA"}},
                {"type": "image_url", "image_url": {"url": "https://x/y.png"}},
            ],
        },
        {
            "role": "assistant",
            "content": "calling",
            "tool_calls": [
                {
                    "id": "toolu_1",
                    "type": "function",
                    "function": {"name": "get", "arguments": '{"q": 1}'},
                },
                {
                    "id": "toolu_2",
                    "type": "function",
                    "function": {"name": "put", "arguments": "{}"},
                },
            ],
        },
        {"role": "tool", "tool_call_id": "toolu_1", "content": "one"},
        {"role": "tool", "tool_call_id": "toolu_2", "content": "two\nthree"},
        {
            "role": "user",
            "content": [
                {"type": "image_url", "image_url": {"url": "https://x/z.png"}},
                {"type": "text", "text": "go on"},
            ],
        },
    ]


def test_assistant_tool_use_only_has_no_content() -> None:
    messages = [
        {"role": "user", "content": "x"},
        {
            "role": "assistant",
            "content": [{"type": "tool_use", "id": "t", "name": "f", "input": {}}],
        },
    ]
    assistant = dumped(messages_request_to_chat(body(messages=messages)))[1]
    assert "content" not in assistant and assistant["tool_calls"][0]["id"] == "t"


def test_tools_and_stop_and_stream_and_user() -> None:
    req = messages_request_to_chat(
        body(
            tools=[
                {"name": "get", "description": "Get it", "input_schema": {"type": "object"}},
                {"name": "bare", "input_schema": {"type": "object", "properties": {}}},
            ],
            stop_sequences=["END", "\n\nHuman:"],
            stream=True,
            metadata={"user_id": "u-1"},
        )
    )
    assert req.tools == [
        {
            "type": "function",
            "function": {"name": "get", "description": "Get it", "parameters": {"type": "object"}},
        },
        {
            "type": "function",
            "function": {"name": "bare", "parameters": {"type": "object", "properties": {}}},
        },
    ]
    assert req.stop == ["END", "\n\nHuman:"]
    assert req.stream is True and req.include_usage()
    assert req.user == "u-1"


@pytest.mark.parametrize(
    ("choice", "expected", "parallel"),
    [
        ({"type": "auto"}, "auto", None),
        ({"type": "any"}, "required", None),
        ({"type": "none"}, "none", None),
        ({"type": "tool", "name": "get"}, {"type": "function", "function": {"name": "get"}}, None),
        ({"type": "auto", "disable_parallel_tool_use": True}, "auto", False),
    ],
)
def test_tool_choice(choice: dict[str, Any], expected: Any, parallel: bool | None) -> None:
    tools = [{"name": "get", "input_schema": {"type": "object"}}]
    req = messages_request_to_chat(body(tools=tools, tool_choice=choice))
    assert req.tool_choice == expected
    assert (req.model_extra or {}).get("parallel_tool_calls") == parallel


@pytest.mark.parametrize(
    ("over", "param"),
    [
        ({"max_tokens": None}, "max_tokens"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_tokens": True}, "max_tokens"),
        ({"model": ""}, "model"),
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "system", "content": "x"}]}, "messages[0].role"),
        ({"messages": [{"role": "user", "content": 3}]}, "messages[0].content"),
        (
            {"messages": [{"role": "user", "content": [{"type": "video"}]}]},
            "messages[0].content[0].type",
        ),
        (
            {"messages": [{"role": "user", "content": [{"type": "text", "text": 1}]}]},
            "messages[0].content[0].text",
        ),
        (
            {
                "messages": [
                    {"role": "user", "content": [{"type": "image", "source": {"type": "file"}}]}
                ]
            },
            "messages[0].content[0].source.type",
        ),
        (
            {"messages": [{"role": "user", "content": [{"type": "tool_result", "content": "x"}]}]},
            "messages[0].content[0].tool_use_id",
        ),
        (
            {"messages": [{"role": "assistant", "content": [{"type": "tool_use", "input": {}}]}]},
            "messages[0].content[0].name",
        ),
        (
            {"messages": [{"role": "assistant", "content": [{"type": "image"}]}]},
            "messages[0].content[0].type",
        ),
        ({"temperature": 1.5}, "temperature"),
        ({"top_p": -0.1}, "top_p"),
        ({"system": [{"type": "image"}]}, "system[0].type"),
        ({"system": 5}, "system"),
        ({"stop_sequences": "END"}, "stop_sequences"),
        ({"tools": [{"name": "x"}]}, "tools[0].input_schema"),
        ({"tools": [{"input_schema": {}}]}, "tools[0].name"),
        ({"tool_choice": {"type": "sometimes"}}, "tool_choice.type"),
        ({"tool_choice": {"type": "tool"}}, "tool_choice.name"),
        ({"stream": "yes"}, "stream"),
        ({"metadata": {"user_id": 7}}, "metadata.user_id"),
    ],
)
def test_invalid_inputs_name_the_field(over: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        messages_request_to_chat(body(**over))
    assert info.value.param == param
    assert param in info.value.message


def test_non_object_body() -> None:
    with pytest.raises(InvalidRequest):
        messages_request_to_chat([])  # type: ignore[arg-type]


def test_unsupported_features() -> None:
    with pytest.raises(Unsupported) as info:
        messages_request_to_chat(
            body(tools=[{"type": "web_search_20250305", "name": "web_search"}])
        )
    assert info.value.param == "tools[0].type" and info.value.code == "unsupported"
    doc = {"type": "document", "source": {"type": "text", "data": "x", "media_type": "text/plain"}}
    with pytest.raises(Unsupported):
        messages_request_to_chat(body(messages=[{"role": "user", "content": [doc]}]))


# --------------------------------------------------------------------------- response


def completion(message: dict[str, Any], finish: str | None, **usage: Any) -> dict[str, Any]:
    return {
        "id": "chatcmpl-abc",
        "object": "chat.completion",
        "model": "upstream-model",
        "choices": [{"index": 0, "message": message, "finish_reason": finish}],
        "usage": {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18, **usage},
    }


@pytest.mark.parametrize(
    ("finish", "stop_reason"),
    [
        ("stop", "end_turn"),
        ("length", "max_tokens"),
        ("tool_calls", "tool_use"),
        ("content_filter", "refusal"),
        (None, "end_turn"),
    ],
)
def test_stop_reasons(finish: str | None, stop_reason: str) -> None:
    msg = chat_to_message(completion({"role": "assistant", "content": "ok"}, finish), "claude-x")
    assert msg["stop_reason"] == stop_reason
    assert msg["stop_sequence"] is None


def test_chat_to_message_text_and_tools_is_a_valid_message() -> None:
    message = {
        "role": "assistant",
        "content": "Let me check.",
        "tool_calls": [
            {
                "id": "call_1",
                "type": "function",
                "function": {"name": "get", "arguments": '{"a": [1, 2]}'},
            },
            {"id": "call_2", "type": "function", "function": {"name": "put", "arguments": ""}},
        ],
    }
    msg = chat_to_message(completion(message, "tool_calls"), "claude-x")
    at.Message.model_validate(msg)
    assert msg["id"] == "msg_abc" and msg["type"] == "message" and msg["role"] == "assistant"
    assert msg["model"] == "claude-x"
    assert msg["content"] == [
        {"type": "text", "text": "Let me check."},
        {"type": "tool_use", "id": "call_1", "name": "get", "input": {"a": [1, 2]}},
        {"type": "tool_use", "id": "call_2", "name": "put", "input": {}},
    ]
    assert msg["usage"] == {"input_tokens": 11, "output_tokens": 7}


def test_chat_to_message_cached_tokens_and_empty_content() -> None:
    usage = {"prompt_tokens_details": {"cached_tokens": 4}}
    msg = chat_to_message(completion({"role": "assistant", "content": None}, "stop", **usage), "m")
    assert msg["content"] == []
    assert msg["usage"] == {"input_tokens": 7, "output_tokens": 7, "cache_read_input_tokens": 4}


def test_round_trip_request_blocks_through_response() -> None:
    """A tool_use answered by the model comes back as the same block the client can resend."""
    call = {
        "id": "toolu_9",
        "type": "function",
        "function": {"name": "f", "arguments": '{"x": "y"}'},
    }
    msg = chat_to_message(
        completion({"role": "assistant", "tool_calls": [call]}, "tool_calls"), "m"
    )
    follow_up = body(
        messages=[
            {"role": "user", "content": "q"},
            {"role": "assistant", "content": msg["content"]},
        ]
    )
    again = dumped(messages_request_to_chat(follow_up))[1]
    assert again["tool_calls"][0]["function"] == {"name": "f", "arguments": '{"x": "y"}'}
    assert again["tool_calls"][0]["id"] == "toolu_9"


# --------------------------------------------------------------------------- stream


def chunk(
    delta: dict[str, Any] | None = None, finish: str | None = None, **extra: Any
) -> dict[str, Any]:
    choices = [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish}]
    return {"id": "chatcmpl-1", "object": "chat.completion.chunk", "choices": choices, **extra}


def run(chunks: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    translator = MessagesStreamTranslator("claude-x", message_id="msg_fixed")
    events = [e for c in chunks for e in translator.feed(c)]
    events += translator.finish()
    assert translator.finish() == []
    for name, data in events:
        assert data["type"] == name
        STREAM_EVENT.validate_python(data)
    return events


def names(events: list[tuple[str, dict[str, Any]]]) -> list[str]:
    return [name for name, _ in events]


def test_stream_text_only() -> None:
    events = run(
        [
            chunk({"role": "assistant", "content": ""}),
            chunk({"content": "Hel"}),
            chunk({"content": "lo"}),
            chunk({}, "stop"),
            chunk(None, usage={"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}),
        ]
    )
    assert names(events) == [
        "message_start",
        "content_block_start",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    start = events[0][1]["message"]
    assert start["id"] == "msg_fixed" and start["content"] == [] and start["model"] == "claude-x"
    assert start["usage"]["input_tokens"] == 0
    assert events[1][1] == {
        "type": "content_block_start",
        "index": 0,
        "content_block": {"type": "text", "text": ""},
    }
    text = "".join(d["delta"]["text"] for n, d in events if n == "content_block_delta")
    assert text == "Hello"
    assert events[4][1] == {"type": "content_block_stop", "index": 0}
    assert events[5][1] == {
        "type": "message_delta",
        "delta": {"stop_reason": "end_turn", "stop_sequence": None},
        "usage": {"output_tokens": 2, "input_tokens": 5},
    }


def test_stream_text_then_two_tool_calls() -> None:
    def call(
        index: int, *, id: str | None = None, name: str | None = None, args: str = ""
    ) -> dict[str, Any]:
        function: dict[str, Any] = {"arguments": args}
        if name:
            function["name"] = name
        tc: dict[str, Any] = {"index": index, "function": function}
        if id:
            tc.update(id=id, type="function")
        return tc

    events = run(
        [
            chunk({"role": "assistant", "content": None}),
            chunk({"content": "Checking."}),
            chunk({"tool_calls": [call(0, id="call_a", name="get")]}),
            chunk({"tool_calls": [call(0, args='{"ci')]}),
            chunk({"tool_calls": [call(0, args='ty": "Paris"}')]}),
            chunk({"tool_calls": [call(1, id="call_b", name="time", args='{"tz"')]}),
            chunk({"tool_calls": [call(1, args=': "CET"}')]}),
            chunk({}, "tool_calls", usage={"prompt_tokens": 20, "completion_tokens": 9}),
        ]
    )
    assert names(events) == [
        "message_start",
        "content_block_start",
        "content_block_delta",
        "content_block_stop",
        "content_block_start",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "content_block_start",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    starts = [d for n, d in events if n == "content_block_start"]
    assert [s["index"] for s in starts] == [0, 1, 2]
    assert starts[1]["content_block"] == {
        "type": "tool_use",
        "id": "call_a",
        "name": "get",
        "input": {},
    }
    assert starts[2]["content_block"] == {
        "type": "tool_use",
        "id": "call_b",
        "name": "time",
        "input": {},
    }
    by_index: dict[int, str] = {}
    for n, d in events:
        if n == "content_block_delta" and d["delta"]["type"] == "input_json_delta":
            by_index[d["index"]] = by_index.get(d["index"], "") + d["delta"]["partial_json"]
    assert json.loads(by_index[1]) == {"city": "Paris"}
    assert json.loads(by_index[2]) == {"tz": "CET"}
    assert [d["index"] for n, d in events if n == "content_block_stop"] == [0, 1, 2]
    delta = events[-2][1]
    assert delta["delta"]["stop_reason"] == "tool_use"
    assert delta["usage"]["output_tokens"] == 9


def test_stream_usage_in_first_chunk_reaches_message_start() -> None:
    events = run(
        [
            chunk({"content": "x"}, usage={"prompt_tokens": 3, "completion_tokens": 0}),
            chunk({}, "length"),
        ]
    )
    assert events[0][1]["message"]["usage"]["input_tokens"] == 3
    assert events[-2][1]["delta"]["stop_reason"] == "max_tokens"


def test_stream_with_no_chunks_is_still_well_formed() -> None:
    assert names(run([])) == ["message_start", "message_delta", "message_stop"]


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("err", "kind"),
    [
        (InvalidRequest("bad"), "invalid_request_error"),
        (AuthenticationError("no"), "authentication_error"),
        (PermissionDenied("no"), "permission_error"),
        (NotFound("no"), "not_found_error"),
        (RequestTooLarge("big"), "request_too_large"),
        (RateLimited("slow"), "rate_limit_error"),
        (Overloaded("busy"), "overloaded_error"),
        (UpstreamError("boom", upstream_status=500), "api_error"),
        (UpstreamError("busy", upstream_status=529), "overloaded_error"),
        (UpstreamTimeout("late"), "api_error"),
        (BastionError("oops"), "api_error"),
    ],
)
def test_error_body(err: BastionError, kind: str) -> None:
    assert error_body(err) == {"type": "error", "error": {"type": kind, "message": err.message}}
    name, data = error_event(err)
    assert name == "error" and data == error_body(err)
    if kind != "request_too_large":  # documented by Anthropic, not yet typed by the SDK
        assert at.ErrorResponse.model_validate(data).error.type == kind


# --------------------------------------------------------------------------- SDK conformance


async def test_official_sdk_reads_the_translated_stream() -> None:
    """The anthropic SDK accumulates our events into the expected final message."""
    import anthropic
    from aiohttp import web

    chunks = [
        chunk({"role": "assistant", "content": ""}),
        chunk({"content": "Let me "}),
        chunk({"content": "look."}),
        chunk(
            {
                "tool_calls": [
                    {
                        "index": 0,
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "get", "arguments": '{"q": '},
                    }
                ]
            }
        ),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": '"x"}'}}]}),
        chunk({}, "tool_calls"),
        chunk(None, usage={"prompt_tokens": 12, "completion_tokens": 6, "total_tokens": 18}),
    ]
    received: list[Any] = []

    async def messages(request: web.Request) -> web.StreamResponse:
        chat = messages_request_to_chat(await request.json())
        received.append(chat)
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        translator = MessagesStreamTranslator(chat.model)
        events = [e for c in chunks for e in translator.feed(c)] + translator.finish()
        for name, data in events:
            await resp.write(f"event: {name}\ndata: {json.dumps(data)}\n\n".encode())
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_post("/v1/messages", messages)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        async with (
            anthropic.AsyncAnthropic(
                api_key="test", base_url=f"http://127.0.0.1:{port}", max_retries=0
            ) as client,
            client.messages.stream(
                model="claude-x",
                max_tokens=32,
                messages=[{"role": "user", "content": "hi"}],
                tools=[{"name": "get", "input_schema": {"type": "object"}}],
            ) as stream,
        ):
            text = "".join([t async for t in stream.text_stream])
            final = await stream.get_final_message()
    finally:
        await runner.cleanup()
    assert received[0].stream and received[0].tools[0]["function"]["name"] == "get"
    assert text == "Let me look."
    assert final.stop_reason == "tool_use"
    assert final.usage.output_tokens == 6 and final.usage.input_tokens == 12
    assert [b.type for b in final.content] == ["text", "tool_use"]
    tool = final.content[1]
    assert isinstance(tool, anthropic.types.ToolUseBlock)
    assert tool.id == "call_1" and tool.name == "get" and tool.input == {"q": "x"}
