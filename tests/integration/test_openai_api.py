"""The OpenAI-compatible API through a real Bastion process, driven by the openai SDK."""

from __future__ import annotations

import json

import httpx
import openai
import pytest

from bastion.testing.fake_upstream import FakeUpstream
from bastion.testing.server import BastionServer
from tests.integration.gateway_policy import UPSTREAM_KEY

HELLO = [{"role": "user", "content": "hello there"}]
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}


@pytest.fixture
def client(server: BastionServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url, api_key=server.admin_key, max_retries=0)


def test_chat_returns_upstream_answer_with_routing_headers(
    client: openai.OpenAI, fake: FakeUpstream
) -> None:
    raw = client.chat.completions.with_raw_response.create(model="gpt", messages=HELLO)
    done = raw.parse()
    assert done.choices[0].message.content == "echo: hello there"
    assert done.usage is not None and done.usage.total_tokens > 0
    assert raw.headers["x-bastion-deployment"] == "up/gpt-4o-mini"
    assert raw.headers["x-request-id"].startswith("req_")
    assert float(raw.headers["x-bastion-overhead-ms"]) >= 0
    sent = fake.requests()[-1]
    assert sent["body"]["model"] == "gpt-4o-mini"  # the alias became the provider's model
    assert sent["headers"]["authorization"] == f"Bearer {UPSTREAM_KEY}"


def test_caller_request_id_is_kept(client: openai.OpenAI) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model="gpt", messages=HELLO, extra_headers={"x-request-id": "trace-42"}
    )
    assert raw.headers["x-request-id"] == "trace-42"


async def test_async_client(server: BastionServer) -> None:
    async with openai.AsyncOpenAI(base_url=server.url, api_key=server.admin_key) as client:
        done = await client.chat.completions.create(model="gpt", messages=HELLO)
    assert done.choices[0].message.content == "echo: hello there"


def test_stream_with_usage(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model="gpt", messages=HELLO, stream=True, stream_options={"include_usage": True}
    )
    text, usage = [], None
    for chunk in stream:
        if chunk.choices:
            text.append(chunk.choices[0].delta.content or "")
        if chunk.usage:
            usage = chunk.usage
    assert "".join(text) == "echo: hello there"
    assert usage is not None and usage.completion_tokens > 0


def test_stream_without_usage_gets_no_usage_chunk(client: openai.OpenAI) -> None:
    chunks = list(client.chat.completions.create(model="gpt", messages=HELLO, stream=True))
    assert chunks and all(c.usage is None for c in chunks)
    assert all(c.choices for c in chunks)


def test_tool_call(client: openai.OpenAI) -> None:
    done = client.chat.completions.create(
        model="gpt",
        messages=[{"role": "user", "content": "what is the weather in Paris?"}],
        tools=[WEATHER_TOOL],  # type: ignore[list-item]
    )
    call = done.choices[0].message.tool_calls[0]  # type: ignore[index]
    assert done.choices[0].finish_reason == "tool_calls"
    assert call.function.name == "get_weather"  # type: ignore[union-attr]
    assert isinstance(json.loads(call.function.arguments), dict)  # type: ignore[union-attr]


def test_streamed_tool_call_reassembles(client: openai.OpenAI) -> None:
    name, args = "", ""
    finish = None
    for chunk in client.chat.completions.create(
        model="gpt",
        messages=[{"role": "user", "content": "weather in Oslo"}],
        tools=[WEATHER_TOOL],  # type: ignore[list-item]
        stream=True,
    ):
        for choice in chunk.choices:
            for tc in choice.delta.tool_calls or []:
                name += tc.function.name or "" if tc.function else ""
                args += tc.function.arguments or "" if tc.function else ""
            finish = choice.finish_reason or finish
    assert name == "get_weather" and isinstance(json.loads(args), dict)
    assert finish == "tool_calls"


def test_json_schema_response_format(client: openai.OpenAI, fake: FakeUpstream) -> None:
    schema = {
        "type": "object",
        "properties": {"answer": {"type": "string"}},
        "required": ["answer"],
    }
    done = client.chat.completions.create(
        model="gpt",
        messages=HELLO,
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "reply", "schema": schema},
        },
    )
    assert isinstance(json.loads(done.choices[0].message.content or ""), dict)
    assert fake.requests()[-1]["body"]["response_format"]["type"] == "json_schema"


def test_embeddings(client: openai.OpenAI) -> None:
    res = client.embeddings.create(model="emb", input=["one", "two"], dimensions=16)
    assert [len(d.embedding) for d in res.data] == [16, 16]
    assert res.usage.total_tokens > 0


def test_models_list_only_what_the_key_may_use(
    client: openai.OpenAI, server: BastionServer
) -> None:
    assert {m.id for m in client.models.list()} == {"gpt", "claude", "emb", "failover"}
    r = httpx.post(
        server.base + "/admin/keys",
        json={"name": "only-gpt", "models": ["gpt"]},
        headers={"authorization": f"Bearer {server.admin_key}"},
    )
    assert r.status_code == 201, r.text
    limited = openai.OpenAI(base_url=server.url, api_key=r.json()["key"], max_retries=0)
    assert [m.id for m in limited.models.list()] == ["gpt"]
    assert limited.models.retrieve("gpt").id == "gpt"
    with pytest.raises(openai.PermissionDeniedError) as info:
        limited.chat.completions.create(model="claude", messages=HELLO)
    assert info.value.code == "permission_denied"
    # admin endpoints need an admin key
    r = httpx.get(
        server.base + "/admin/keys", headers={"authorization": f"Bearer {r.json()['key']}"}
    )
    assert r.status_code == 403 and r.json()["error"]["code"] == "permission_denied"


# ---------------------------------------------------------------- bad input
def post(
    server: BastionServer, body: bytes | str, key: str | None = "admin", **headers: str
) -> httpx.Response:
    h = {"content-type": "application/json", **headers}
    if key is not None:
        h["authorization"] = f"Bearer {server.admin_key if key == 'admin' else key}"
    return httpx.post(server.url + "/chat/completions", content=body, headers=h, timeout=10)


def error_of(r: httpx.Response) -> dict[str, object]:
    body = r.json()
    assert set(body["error"]) == {"message", "type", "code", "param"}
    assert "Traceback" not in r.text
    return body["error"]  # type: ignore[no-any-return]


def test_malformed_json(server: BastionServer) -> None:
    r = post(server, b'{"model": "gpt", "messages": [')
    assert r.status_code == 400 and error_of(r)["code"] == "invalid_request"
    assert r.headers["x-request-id"]


def test_wrong_types_name_the_field(server: BastionServer) -> None:
    r = post(server, json.dumps({"model": "gpt", "messages": "hi"}))
    err = error_of(r)
    assert r.status_code == 400 and err["code"] == "invalid_request" and err["param"] == "messages"
    r = post(server, json.dumps({"model": "gpt", "messages": HELLO, "temperature": "hot"}))
    assert r.status_code == 400 and error_of(r)["param"] == "temperature"
    r = post(server, json.dumps({"messages": HELLO}))
    assert r.status_code == 400 and error_of(r)["param"] == "model"
    r = post(server, json.dumps({"model": "gpt", "messages": [{"role": "robot", "content": "x"}]}))
    assert r.status_code == 400 and error_of(r)["param"] == "messages.0.role"


def test_unknown_model(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="gpt-9", messages=HELLO)
    assert info.value.code == "model_not_found"


def test_embedding_model_for_chat_is_refused(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="emb", messages=HELLO)
    assert info.value.code == "invalid_request"


def test_missing_and_invalid_key(server: BastionServer) -> None:
    r = post(server, json.dumps({"model": "gpt", "messages": HELLO}), key=None)
    assert r.status_code == 401 and error_of(r)["code"] == "authentication_error"
    with pytest.raises(openai.AuthenticationError) as info:
        openai.OpenAI(base_url=server.url, api_key="bst-wrong", max_retries=0).models.list()
    assert info.value.code == "authentication_error"


def test_oversized_body_is_413(server: BastionServer, fake: FakeUpstream) -> None:
    big = json.dumps({"model": "gpt", "messages": [{"role": "user", "content": "x" * 70_000}]})
    r = post(server, big)
    assert r.status_code == 413 and error_of(r)["code"] == "request_too_large"
    assert fake.requests() == []


def test_unknown_route_is_a_json_404(server: BastionServer) -> None:
    r = httpx.get(server.base + "/v1/nothing-here")
    assert r.status_code == 404 and error_of(r)["code"] == "not_found"


def test_upstream_client_error_passes_through_without_retry(
    client: openai.OpenAI, fake: FakeUpstream
) -> None:
    fake.script([{"status": 400}], match="bad request please")
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(
            model="gpt", messages=[{"role": "user", "content": "bad request please"}]
        )
    assert info.value.code == "upstream_invalid_request"
    assert len(fake.requests()) == 1
