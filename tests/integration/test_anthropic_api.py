"""Bastion's ``/v1/messages`` driven by the official anthropic SDK.

Two paths: an OpenAI-compatible upstream behind an Anthropic front (model ``gpt``),
and an Anthropic upstream end to end (model ``claude``).
"""

from __future__ import annotations

import json
from typing import Any

import anthropic
import httpx
import pytest

from bastion.testing.fake_upstream import FakeUpstream
from bastion.testing.server import BastionServer
from tests.integration.gateway_policy import ANTHROPIC_KEY, UPSTREAM_KEY

WEATHER_TOOL: Any = {
    "name": "get_weather",
    "description": "Weather for a city",
    "input_schema": {
        "type": "object",
        "properties": {"location": {"type": "string"}},
        "required": ["location"],
    },
}


@pytest.fixture
def client(server: BastionServer) -> anthropic.Anthropic:
    return anthropic.Anthropic(
        base_url=server.base, api_key=server.admin_key, max_retries=0, timeout=15
    )


def _user(text: str) -> list[Any]:
    return [{"role": "user", "content": text}]


def _last(fake: FakeUpstream) -> dict[str, Any]:
    return fake.requests()[-1]


# ------------------------------------------------------------------ OpenAI upstream


def test_message_from_openai_upstream(client: anthropic.Anthropic, fake: FakeUpstream) -> None:
    msg = client.messages.create(model="gpt", max_tokens=100, messages=_user("hello anthropic"))
    assert msg.type == "message" and msg.role == "assistant"
    assert msg.model == "gpt"
    assert [b.type for b in msg.content] == ["text"]
    assert msg.content[0].text == "echo: hello anthropic"  # type: ignore[union-attr]
    assert msg.stop_reason == "end_turn"
    assert msg.usage.input_tokens > 0 and msg.usage.output_tokens > 0
    sent = _last(fake)
    assert sent["path"] == "/v1/chat/completions"
    assert sent["body"]["model"] == "gpt-4o-mini"
    assert sent["body"]["max_tokens"] == 100
    assert sent["headers"]["authorization"] == f"Bearer {UPSTREAM_KEY}"


def test_max_tokens_truncation_maps_to_stop_reason(client: anthropic.Anthropic) -> None:
    msg = client.messages.create(
        model="gpt", max_tokens=2, messages=_user("one two three four five")
    )
    assert msg.stop_reason == "max_tokens"
    assert msg.content[0].text == "echo: one"  # type: ignore[union-attr]


def test_stream_from_openai_upstream(client: anthropic.Anthropic, fake: FakeUpstream) -> None:
    with client.messages.stream(
        model="gpt", max_tokens=100, messages=_user("stream me three words")
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == "echo: stream me three words"
    assert final.content[0].text == text  # type: ignore[union-attr]
    assert final.stop_reason == "end_turn"
    assert final.usage.input_tokens > 0 and final.usage.output_tokens > 0
    assert _last(fake)["body"]["stream"] is True


def test_stream_event_sequence(client: anthropic.Anthropic) -> None:
    events = list(
        client.messages.create(
            model="gpt", max_tokens=100, messages=_user("raw events please"), stream=True
        )
    )
    kinds = [e.type for e in events]
    assert kinds[0] == "message_start"
    assert kinds[-2:] == ["message_delta", "message_stop"]
    assert "content_block_start" in kinds and "content_block_stop" in kinds
    assert kinds.index("content_block_start") < kinds.index("content_block_delta")


def test_tool_use_from_openai_upstream(client: anthropic.Anthropic, fake: FakeUpstream) -> None:
    msg = client.messages.create(
        model="gpt",
        max_tokens=100,
        tools=[WEATHER_TOOL],
        messages=_user("what is the weather in Paris?"),
    )
    assert msg.stop_reason == "tool_use"
    uses = [b for b in msg.content if b.type == "tool_use"]
    assert len(uses) == 1
    use = uses[0]
    assert use.name == "get_weather"
    assert isinstance(use.input, dict) and use.input == {"location": "Paris"}
    assert use.id
    # the tool went upstream in OpenAI's function shape
    tools = _last(fake)["body"]["tools"]
    assert tools[0]["type"] == "function"
    assert tools[0]["function"]["name"] == "get_weather"
    assert tools[0]["function"]["parameters"] == WEATHER_TOOL["input_schema"]

    # the tool result goes back and the model answers from it
    follow = client.messages.create(
        model="gpt",
        max_tokens=100,
        tools=[WEATHER_TOOL],
        messages=[
            *_user("what is the weather in Paris?"),
            {"role": "assistant", "content": [b.model_dump() for b in msg.content]},
            {
                "role": "user",
                "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "sunny"}],
            },
        ],
    )
    assert follow.stop_reason == "end_turn"
    assert follow.content[0].text == "tool result: sunny"  # type: ignore[union-attr]
    upstream_msgs = _last(fake)["body"]["messages"]
    assert upstream_msgs[-1]["role"] == "tool"
    assert upstream_msgs[-1]["tool_call_id"] == use.id


def test_streamed_tool_use_from_openai_upstream(client: anthropic.Anthropic) -> None:
    with client.messages.stream(
        model="gpt",
        max_tokens=100,
        tools=[WEATHER_TOOL],
        messages=_user("weather in Oslo?"),
    ) as stream:
        final = stream.get_final_message()
    assert final.stop_reason == "tool_use"
    uses = [b for b in final.content if b.type == "tool_use"]
    assert len(uses) == 1
    assert uses[0].name == "get_weather"
    assert uses[0].input == {"location": "Paris"}


def test_system_prompt_is_forwarded(client: anthropic.Anthropic, fake: FakeUpstream) -> None:
    client.messages.create(
        model="gpt",
        max_tokens=50,
        system="You are a terse assistant.",
        messages=_user("system check"),
    )
    msgs = _last(fake)["body"]["messages"]
    assert msgs[0]["role"] == "system"
    assert msgs[0]["content"] == "You are a terse assistant."
    assert msgs[1] == {"role": "user", "content": "system check"}


def test_system_prompt_blocks_are_forwarded(
    client: anthropic.Anthropic, fake: FakeUpstream
) -> None:
    client.messages.create(
        model="gpt",
        max_tokens=50,
        system=[{"type": "text", "text": "Block system prompt."}],
        messages=_user("block system check"),
    )
    msgs = _last(fake)["body"]["messages"]
    assert msgs[0]["role"] == "system"
    assert "Block system prompt." in str(msgs[0]["content"])


# ------------------------------------------------------------------ Anthropic upstream


def test_message_from_anthropic_upstream(client: anthropic.Anthropic, fake: FakeUpstream) -> None:
    msg = client.messages.create(
        model="claude", max_tokens=100, system="Be kind.", messages=_user("hi claude")
    )
    assert msg.content[0].text == "echo: hi claude"  # type: ignore[union-attr]
    assert msg.stop_reason == "end_turn"
    assert msg.usage.input_tokens > 0 and msg.usage.output_tokens > 0
    sent = _last(fake)
    assert sent["path"] == "/v1/messages"
    assert sent["headers"]["x-api-key"] == ANTHROPIC_KEY
    assert "authorization" not in sent["headers"]
    assert sent["body"]["model"] == "claude-3-5-haiku"
    assert sent["body"]["max_tokens"] == 100
    assert "Be kind." in str(sent["body"]["system"])


def test_stream_from_anthropic_upstream(client: anthropic.Anthropic, fake: FakeUpstream) -> None:
    with client.messages.stream(
        model="claude", max_tokens=100, messages=_user("stream from claude")
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == "echo: stream from claude"
    assert final.stop_reason == "end_turn"
    assert final.usage.input_tokens > 0 and final.usage.output_tokens > 0
    sent = _last(fake)
    assert sent["path"] == "/v1/messages"
    assert sent["headers"]["x-api-key"] == ANTHROPIC_KEY
    assert sent["body"]["stream"] is True


def test_tool_use_from_anthropic_upstream(client: anthropic.Anthropic, fake: FakeUpstream) -> None:
    msg = client.messages.create(
        model="claude",
        max_tokens=100,
        tools=[WEATHER_TOOL],
        messages=_user("weather in Rome?"),
    )
    assert msg.stop_reason == "tool_use"
    use = next(b for b in msg.content if b.type == "tool_use")
    assert use.name == "get_weather" and use.input == {"location": "Paris"}
    sent_tools = _last(fake)["body"]["tools"]
    assert sent_tools[0]["name"] == "get_weather"
    assert sent_tools[0]["input_schema"] == WEATHER_TOOL["input_schema"]


# ------------------------------------------------------------------ errors, Anthropic-shaped


def test_unknown_model_is_not_found(client: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.NotFoundError) as info:
        client.messages.create(model="no-such-model", max_tokens=10, messages=_user("x"))
    assert info.value.status_code == 404
    assert info.value.body["type"] == "error"  # type: ignore[index]
    assert info.value.body["error"]["type"] == "not_found_error"  # type: ignore[index]


def test_bad_key_is_an_authentication_error(server: BastionServer) -> None:
    bad = anthropic.Anthropic(base_url=server.base, api_key="sk-wrong-key", max_retries=0)
    with pytest.raises(anthropic.AuthenticationError) as info:
        bad.messages.create(model="gpt", max_tokens=10, messages=_user("x"))
    assert info.value.status_code == 401
    assert info.value.body["error"]["type"] == "authentication_error"  # type: ignore[index]


def test_missing_max_tokens_is_a_bad_request(
    client: anthropic.Anthropic, server: BastionServer, fake: FakeUpstream
) -> None:
    body = {"model": "gpt", "messages": _user("no max tokens")}
    # the SDK itself insists on max_tokens, so send the body through its raw client
    with pytest.raises(anthropic.BadRequestError) as info:
        client.post("/v1/messages", body=body, cast_to=httpx.Response)
    assert info.value.status_code == 400
    r = httpx.post(
        server.base + "/v1/messages",
        json=body,
        headers={"x-api-key": server.admin_key, "anthropic-version": "2023-06-01"},
    )
    assert r.status_code == 400
    err = r.json()
    assert err["type"] == "error"
    assert err["error"]["type"] == "invalid_request_error"
    assert "max_tokens" in err["error"]["message"]
    assert set(err["error"]) == {"type", "message"}
    assert fake.requests() == []  # nothing went upstream


def test_upstream_failure_is_anthropic_shaped(
    client: anthropic.Anthropic, fake: FakeUpstream
) -> None:
    fake.script([{"status": 500}], match="anth-upstream-down")
    with pytest.raises(anthropic.InternalServerError) as info:
        client.messages.create(
            model="claude", max_tokens=10, messages=_user("anth-upstream-down x")
        )
    assert info.value.status_code == 502
    assert info.value.body["type"] == "error"  # type: ignore[index]
    assert info.value.body["error"]["type"] == "api_error"  # type: ignore[index]


def test_upstream_overload_maps_to_overloaded_error(
    client: anthropic.Anthropic, fake: FakeUpstream
) -> None:
    fake.script([{"status": 529}], match="anth-overloaded")
    with pytest.raises(anthropic.APIStatusError) as info:
        client.messages.create(model="claude", max_tokens=10, messages=_user("anth-overloaded x"))
    assert info.value.body["error"]["type"] == "overloaded_error"  # type: ignore[index]


def test_stream_dying_mid_way_ends_with_an_error_event(
    server: BastionServer, fake: FakeUpstream
) -> None:
    fake.script([{"disconnect_after_chunks": 2, "chunks": 6}], match="anth-cut-stream")
    with httpx.stream(
        "POST",
        server.base + "/v1/messages",
        json={
            "model": "gpt",
            "max_tokens": 100,
            "stream": True,
            "messages": _user("anth-cut-stream now"),
        },
        headers={"x-api-key": server.admin_key, "anthropic-version": "2023-06-01"},
        timeout=10,
    ) as r:
        assert r.status_code == 200
        lines = [line for line in r.iter_lines() if line]
    events = [line.removeprefix("event: ") for line in lines if line.startswith("event: ")]
    assert "content_block_delta" in events
    assert events[-1] == "error" and "message_stop" not in events
    last = json.loads(lines[-1].removeprefix("data: "))
    assert last["type"] == "error"
    assert last["error"]["type"] == "api_error"
    # and the SDK raises instead of returning a half message
    client = anthropic.Anthropic(base_url=server.base, api_key=server.admin_key, max_retries=0)
    fake.script([{"disconnect_after_chunks": 2, "chunks": 6}], match="anth-cut-stream")
    with (
        pytest.raises(anthropic.APIError),
        client.messages.stream(
            model="gpt", max_tokens=100, messages=_user("anth-cut-stream again")
        ) as stream,
    ):
        stream.get_final_message()


@pytest.mark.parametrize("model", ["gpt", "claude"])
def test_usage_is_carried_exactly(
    model: str, client: anthropic.Anthropic, fake: FakeUpstream
) -> None:
    marker = f"exact-usage-{model}"
    usage = {"prompt_tokens": 13, "completion_tokens": 5}
    fake.script([{"usage": usage}, {"usage": usage}], match=marker)
    msg = client.messages.create(model=model, max_tokens=100, messages=_user(f"{marker} a"))
    assert (msg.usage.input_tokens, msg.usage.output_tokens) == (13, 5)
    with client.messages.stream(
        model=model, max_tokens=100, messages=_user(f"{marker} b")
    ) as stream:
        final = stream.get_final_message()
    assert (final.usage.input_tokens, final.usage.output_tokens) == (13, 5)
