"""The fake upstream process, driven by the official ``openai`` and ``anthropic`` SDKs."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import anthropic
import openai
import pytest

from bastion.testing.fake_upstream import FakeUpstream, run_fake_upstream

WEATHER_TOOL: Any = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"location": {"type": "string"}}},
    },
}
ANTHROPIC_TOOL: Any = {
    "name": "get_weather",
    "description": "Weather for a city",
    "input_schema": {"type": "object", "properties": {"location": {"type": "string"}}},
}


@pytest.fixture
def oai(fake: FakeUpstream) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=fake.url, api_key="sk-fake-key", max_retries=0) as client:
        yield client


@pytest.fixture
def claude(fake: FakeUpstream) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(base_url=fake.base, api_key="ak-fake", max_retries=0) as client:
        yield client


def user(text: str) -> Any:
    return [{"role": "user", "content": text}]


def test_openai_chat_and_recorded_request(fake: FakeUpstream, oai: openai.OpenAI) -> None:
    reply = oai.chat.completions.create(model="gpt-4o-mini", messages=user("hi there sdk"))
    assert reply.choices[0].message.content == "echo: hi there sdk"
    assert reply.choices[0].finish_reason == "stop"
    assert reply.usage is not None and reply.usage.prompt_tokens == 3
    rec = fake.requests(limit=1)[0]
    assert rec["path"] == "/v1/chat/completions"
    assert rec["headers"]["authorization"] == "Bearer sk-fake-key"
    assert rec["body"]["messages"][0]["content"] == "hi there sdk"


def test_openai_stream_with_usage(oai: openai.OpenAI) -> None:
    stream = oai.chat.completions.create(
        model="m",
        messages=user("stream words now"),
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "echo: stream words now"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 4


def test_openai_stream_without_usage_has_no_usage_chunk(oai: openai.OpenAI) -> None:
    chunks = list(oai.chat.completions.create(model="m", messages=user("no usage"), stream=True))
    assert all(c.choices for c in chunks)
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_openai_tools(oai: openai.OpenAI) -> None:
    reply = oai.chat.completions.create(
        model="m", messages=user("what's the weather?"), tools=[WEATHER_TOOL]
    )
    call = reply.choices[0].message.tool_calls[0]  # type: ignore[index]
    assert call.function.name == "get_weather"  # type: ignore[union-attr]
    assert json.loads(call.function.arguments) == {"location": "Paris"}  # type: ignore[union-attr]

    stream = oai.chat.completions.create(
        model="m", messages=user("weather in Paris?"), tools=[WEATHER_TOOL], stream=True
    )
    parts = [tc for c in stream if c.choices for tc in (c.choices[0].delta.tool_calls or [])]
    assert parts[0].id and parts[0].function and parts[0].function.name == "get_weather"
    args = "".join((tc.function.arguments or "") if tc.function else "" for tc in parts)
    assert json.loads(args) == {"location": "Paris"}

    follow = [
        *user("weather?"),
        {
            "role": "assistant",
            "tool_calls": [
                {
                    "id": "c1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": "{}"},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
    ]
    done = oai.chat.completions.create(model="m", messages=follow, tools=[WEATHER_TOOL])
    assert done.choices[0].message.content == "tool result: sunny"


def test_openai_json_mode(oai: openai.OpenAI) -> None:
    reply = oai.chat.completions.create(
        model="m", messages=user("as json"), response_format={"type": "json_object"}
    )
    assert json.loads(reply.choices[0].message.content or "") == {"echo": "as json"}


def test_openai_embeddings_and_models(oai: openai.OpenAI) -> None:
    b64 = oai.embeddings.create(model="e", input=["red apple", "red apple pie", "car"])
    assert [len(d.embedding) for d in b64.data] == [8, 8, 8]
    floats = oai.embeddings.create(
        model="e", input="red apple", dimensions=32, encoding_format="float"
    )
    vec = floats.data[0].embedding
    assert len(vec) == 32 and abs(sum(v * v for v in vec) - 1.0) < 1e-6
    a, b, c = (d.embedding for d in b64.data)
    cos_ab = sum(x * y for x, y in zip(a, b, strict=True))
    cos_ac = sum(x * y for x, y in zip(a, c, strict=True))
    assert cos_ab > cos_ac  # texts sharing words are closer
    assert "gpt-4o-mini" in {m.id for m in oai.models.list()}


def test_scripted_errors_observed(fake: FakeUpstream, oai: openai.OpenAI) -> None:
    fake.reset()
    fake.script([{"status": 429, "retry_after": 7}, {"status": 500}], match="scripted errs")
    with pytest.raises(openai.RateLimitError) as rate:
        oai.chat.completions.create(model="m", messages=user("scripted errs"))
    assert rate.value.response.headers["retry-after"] == "7"
    with pytest.raises(openai.InternalServerError):
        oai.chat.completions.create(model="m", messages=user("scripted errs"))
    ok = oai.chat.completions.create(model="m", messages=user("scripted errs"))
    assert ok.choices[0].message.content == "echo: scripted errs"
    stats = fake.stats()["by_path"]["/v1/chat/completions"]
    assert stats == {"429": 1, "500": 1, "200": 1}


def test_sdk_retry_consumes_steps(fake: FakeUpstream) -> None:
    fake.script({"status": 503, "retry_after": 0}, match="retry once")
    with openai.OpenAI(base_url=fake.url, api_key="k", max_retries=1) as client:
        ok = client.chat.completions.create(model="m", messages=user("retry once"))
    assert ok.choices[0].message.content == "echo: retry once"


def test_match_isolates_scripts(fake: FakeUpstream, oai: openai.OpenAI) -> None:
    fake.script({"status": 400}, match="only-this-one")
    ok = oai.chat.completions.create(model="m", messages=user("some other request"))
    assert ok.choices[0].message.content == "echo: some other request"
    with pytest.raises(openai.BadRequestError):
        oai.chat.completions.create(model="m", messages=user("only-this-one"))


def test_header_script_and_disconnect(oai: openai.OpenAI) -> None:
    reply = oai.chat.completions.create(
        model="m",
        messages=user("hdr"),
        extra_headers={"x-fake-script": json.dumps({"content": "from header"})},
    )
    assert reply.choices[0].message.content == "from header"
    stream = oai.chat.completions.create(
        model="m",
        messages=user("cut me off"),
        stream=True,
        extra_headers={"x-fake-script": json.dumps({"disconnect_after_chunks": 1})},
    )
    seen = []
    with pytest.raises(openai.APIError):
        for chunk in stream:
            seen.append(chunk)
    assert len(seen) == 2


def test_anthropic_message(fake: FakeUpstream, claude: anthropic.Anthropic) -> None:
    msg = claude.messages.create(
        model="claude-3-5-haiku-latest",
        max_tokens=100,
        system="be brief",
        messages=user("hello claude"),
    )
    assert msg.content[0].type == "text" and msg.content[0].text == "echo: hello claude"
    assert msg.stop_reason == "end_turn"
    assert msg.usage.input_tokens == 4 and msg.usage.output_tokens == 3
    rec = fake.requests(limit=1)[0]
    assert rec["path"] == "/v1/messages" and "anthropic-version" in rec["headers"]
    key = rec["headers"].get("x-api-key") or rec["headers"].get("authorization")
    assert key is not None and key.endswith("ak-fake")


def test_anthropic_stream(claude: anthropic.Anthropic) -> None:
    with claude.messages.stream(
        model="m", max_tokens=100, messages=user("stream from claude")
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == "echo: stream from claude"
    assert final.stop_reason == "end_turn" and final.usage.output_tokens == 4

    events = [
        e.type
        for e in claude.messages.create(
            model="m", max_tokens=5, messages=user("raw events"), stream=True
        )
    ]
    assert events[:2] == ["message_start", "content_block_start"]
    assert events[-3:] == ["content_block_stop", "message_delta", "message_stop"]


def test_anthropic_tool_use(claude: anthropic.Anthropic) -> None:
    msg = claude.messages.create(
        model="m", max_tokens=100, messages=user("weather in Paris?"), tools=[ANTHROPIC_TOOL]
    )
    block = msg.content[0]
    assert block.type == "tool_use" and block.name == "get_weather"
    assert block.input == {"location": "Paris"} and msg.stop_reason == "tool_use"

    with claude.messages.stream(
        model="m", max_tokens=100, messages=user("weather?"), tools=[ANTHROPIC_TOOL]
    ) as stream:
        final = stream.get_final_message()
    tool = final.content[0]
    assert tool.type == "tool_use" and tool.input == {"location": "Paris"}


def test_anthropic_errors(fake: FakeUpstream, claude: anthropic.Anthropic) -> None:
    fake.script([{"status": 429, "retry_after": 1}, {"status": 529}], match="claude errs")
    with pytest.raises(anthropic.RateLimitError) as rate:
        claude.messages.create(model="m", max_tokens=10, messages=user("claude errs"))
    assert rate.value.body["error"]["type"] == "rate_limit_error"  # type: ignore[index]
    with pytest.raises(anthropic.APIStatusError) as over:
        claude.messages.create(model="m", max_tokens=10, messages=user("claude errs"))
    assert over.value.status_code == 529


def test_required_api_key_and_truncation() -> None:
    with run_fake_upstream(api_key="sk-right") as strict:
        bad = openai.OpenAI(base_url=strict.url, api_key="sk-wrong", max_retries=0)
        with bad, pytest.raises(openai.AuthenticationError):
            bad.chat.completions.create(model="m", messages=user("hello"))
        with openai.OpenAI(base_url=strict.url, api_key="sk-right", max_retries=0) as good:
            reply = good.chat.completions.create(
                model="m", messages=user("one two three four five"), max_tokens=3
            )
        assert reply.choices[0].message.content == "echo: one two"
        assert reply.choices[0].finish_reason == "length"
        assert strict.stats()["by_path"]["/v1/chat/completions"] == {"401": 1, "200": 1}
