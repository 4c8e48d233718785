"""The local provider's JSON check (used to retry answers that escaped the grammar)."""

from __future__ import annotations

from bastion.providers.local_chat import json_ok, retry_params

SCHEMA = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "country": {"type": "string"}},
    "required": ["city", "country"],
}


def test_json_object_needs_an_object() -> None:
    assert json_ok('{"name": "Tom", "age": 3}', {"type": "json_object"})
    assert not json_ok('["a"]', {"type": "json_object"})
    assert not json_ok('{ "city" : "Paris }\n\nParis is', {"type": "json_object"})
    assert not json_ok('{"name": "Fe', {"type": "json_object"})  # cut by max_tokens


def test_a_schema_is_validated() -> None:
    fmt = {"type": "json_object", "schema": SCHEMA}
    assert json_ok('{"city": "Paris", "country": "France"}', fmt)
    assert not json_ok('{"city": "Paris"}', fmt)
    assert not json_ok('{"city": 1, "country": "France"}', fmt)


def test_retries_are_seeded_and_sampled() -> None:
    base = {"messages": [], "temperature": 0, "response_format": {"type": "json_object"}}
    first, second = retry_params(base, 1), retry_params(base, 2)
    assert first["seed"] != second["seed"] and first["temperature"] > 0
    assert first["response_format"] == base["response_format"] and base["temperature"] == 0
