"""The response cache: keys, single-turn scoping, stream replay and assembly, lookups."""

from __future__ import annotations

import copy
import math
import re
from typing import Any

import pytest

from bastion.config.schema import CacheConfig, SemanticCacheConfig
from bastion.core.types import JSON, ChatRequest
from bastion.gateway.cache import (
    ResponseCache,
    StreamAssembler,
    cacheable,
    completion_chunks,
    exact_key,
    semantic_scope,
    single_turn,
)
from bastion.gateway.cache_store import MemoryCache, MemorySemanticIndex

USER = {"role": "user", "content": "what is the capital of france"}
SYSTEM = {"role": "system", "content": "answer in one word"}


def req(*messages: dict[str, Any], **params: Any) -> ChatRequest:
    body: JSON = {"model": "chat", "messages": list(messages or [USER]), **params}
    return ChatRequest.from_body(body)


def answer(text: str = "Paris", finish: str | None = "stop") -> JSON:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1700000000,
        "model": "gpt-x",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": finish,
            }
        ],
        "usage": {"prompt_tokens": 9, "completion_tokens": 1, "total_tokens": 10},
    }


# --- exact keys ----------------------------------------------------------------


@pytest.mark.parametrize(
    "extra",
    [
        {"stream": True},
        {"stream": True, "stream_options": {"include_usage": True}},
        {"user": "someone"},
        {"metadata": {"trace": "abc"}},
        {"bastion": {"cache": False}},
    ],
)
def test_exact_key_ignores_fields_that_do_not_change_the_answer(extra: JSON) -> None:
    base = req(temperature=0.2)
    assert exact_key("t1", "chat", req(temperature=0.2, **extra)) == exact_key("t1", "chat", base)


@pytest.mark.parametrize(
    "other",
    [
        req(temperature=0.3),
        req(),
        req(temperature=0.2, max_tokens=5),
        req({"role": "user", "content": "what is the capital of spain"}, temperature=0.2),
        req(SYSTEM, USER, temperature=0.2),
    ],
)
def test_exact_key_depends_on_parameters_and_messages(other: ChatRequest) -> None:
    assert exact_key("t1", "chat", other) != exact_key("t1", "chat", req(temperature=0.2))


def test_exact_key_differs_per_tenant_and_alias() -> None:
    r = req()
    keys = {exact_key(t, a, r) for t in ("t1", "t2") for a in ("chat", "chat2")}
    assert len(keys) == 4
    assert all(k.startswith("c:") for k in keys)
    # length-prefixed parts: moving a character between tenant and alias changes the key
    assert exact_key("ab", "c", r) != exact_key("a", "bc", r)


def test_exact_key_is_independent_of_body_key_order() -> None:
    a = ChatRequest.from_body({"model": "chat", "messages": [USER], "temperature": 0.5, "seed": 1})
    b = ChatRequest.from_body({"seed": 1, "temperature": 0.5, "messages": [USER], "model": "chat"})
    assert exact_key("t", "chat", a) == exact_key("t", "chat", b)


def test_exact_key_same_for_a_request_not_built_from_a_body() -> None:
    body: JSON = {"model": "chat", "messages": [USER], "temperature": 0.2}
    assert exact_key("t", "chat", ChatRequest.model_validate(body)) == exact_key(
        "t", "chat", ChatRequest.from_body(body)
    )


# --- single turn and semantic scope ---------------------------------------------


def test_single_turn_accepts_one_user_message_with_an_optional_system() -> None:
    assert single_turn(req(USER)) == ("", USER["content"])
    assert single_turn(req(SYSTEM, USER)) == (SYSTEM["content"], USER["content"])
    dev = {"role": "developer", "content": "terse"}
    assert single_turn(req(dev, USER)) == ("terse", USER["content"])


@pytest.mark.parametrize(
    "messages",
    [
        [USER, USER],
        [SYSTEM, USER, {"role": "assistant", "content": "Paris"}, USER],
        [USER, {"role": "assistant", "content": "Paris"}],
        [{"role": "assistant", "content": "hello"}],
        [SYSTEM],
        [{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
        [{"role": "system", "content": [{"type": "text", "text": "sys"}]}, USER],
        [SYSTEM, SYSTEM, USER],
    ],
)
def test_single_turn_rejects_everything_else(messages: list[dict[str, Any]]) -> None:
    assert single_turn(req(*messages)) is None


def test_semantic_scope_ignores_the_user_text_but_not_system_or_params() -> None:
    a = req(SYSTEM, USER, temperature=0.0)
    b = req(SYSTEM, {"role": "user", "content": "capital of france?"}, temperature=0.0)
    scope = semantic_scope("t1", "chat", a, SYSTEM["content"])
    assert scope.startswith("s:")
    assert semantic_scope("t1", "chat", b, SYSTEM["content"]) == scope
    assert semantic_scope("t1", "chat", a, "answer in French") != scope
    assert semantic_scope("t1", "chat", req(SYSTEM, USER, temperature=1.0), "x") != (
        semantic_scope("t1", "chat", a, "x")
    )
    assert semantic_scope("t2", "chat", a, SYSTEM["content"]) != scope
    assert semantic_scope("t1", "chat2", a, SYSTEM["content"]) != scope
    # the model field and the ignored fields are not parameters
    moved = ChatRequest.from_body(
        {"model": "other", "messages": [SYSTEM, USER], "temperature": 0.0, "stream": True}
    )
    assert semantic_scope("t1", "chat", moved, SYSTEM["content"]) == scope


@pytest.mark.parametrize(
    ("finishes", "ok"),
    [
        (["stop"], True),
        (["length"], True),
        (["tool_calls"], True),
        (["end_turn"], True),
        (["stop", "length"], True),
        ([None], False),
        (["content_filter"], False),
        (["stop", None], False),
        ([], False),
    ],
)
def test_cacheable(finishes: list[str | None], ok: bool) -> None:
    completion = {"choices": [{"index": i, "finish_reason": f} for i, f in enumerate(finishes)]}
    assert cacheable(completion) is ok


def test_cacheable_without_choices() -> None:
    assert not cacheable({})
    assert not cacheable({"choices": None})


# --- stream replay and assembly -------------------------------------------------

TOOL_CALLS = [
    {"id": "call_1", "type": "function", "function": {"name": "get", "arguments": '{"a": 1}'}},
    {"id": "call_2", "type": "function", "function": {"name": "put", "arguments": "{}"}},
]


def with_message(message: JSON, finish: str, usage: bool = True) -> JSON:
    out = answer()
    out["choices"][0]["message"] = message
    out["choices"][0]["finish_reason"] = finish
    if not usage:
        del out["usage"]
    return out


ROUND_TRIPS = [
    answer("Paris, of course."),
    with_message(
        {"role": "assistant", "content": "Let me look.", "tool_calls": TOOL_CALLS}, "tool_calls"
    ),
    with_message(
        {"role": "assistant", "content": None, "tool_calls": TOOL_CALLS[:1]}, "tool_calls"
    ),
    with_message({"role": "assistant", "content": "cut"}, "length", usage=False),
]


@pytest.mark.parametrize("completion", ROUND_TRIPS)
def test_chunks_reassemble_to_the_completion(completion: JSON) -> None:
    chunks = completion_chunks(completion)
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert all(c["id"] == completion["id"] and c["model"] == completion["model"] for c in chunks)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant"}
    asm = StreamAssembler()
    for c in chunks:
        asm.feed(c)
    assert asm.completion() == completion
    msg = completion["choices"][0]["message"]
    calls = msg.get("tool_calls") or []
    args = sum(len(c["function"]["arguments"]) for c in calls)
    assert asm.chars == len(msg["content"] or "") + args
    assert asm.chunks == (1 if msg["content"] else 0) + sum(
        1 for c in calls if c["function"]["arguments"]
    )
    assert asm.text() == (msg["content"] or "")
    if "usage" in completion:
        assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == completion["usage"]
    else:
        assert all("usage" not in c for c in chunks)


def test_two_choices_round_trip() -> None:
    completion = answer("one")
    second = copy.deepcopy(completion["choices"][0])
    second["index"] = 1
    second["message"]["content"] = "two"
    second["finish_reason"] = "length"
    completion["choices"].append(second)
    asm = StreamAssembler()
    for c in completion_chunks(completion):
        asm.feed(c)
    assert asm.completion() == completion
    assert asm.text() == "onetwo"


def test_assembler_joins_fragments_of_a_live_stream() -> None:
    head = {"id": "chatcmpl-9", "object": "chat.completion.chunk", "created": 5, "model": "m"}
    deltas: list[JSON] = [
        {"role": "assistant", "content": ""},
        {"content": "Hel"},
        {"content": "lo"},
        {"tool_calls": [{"index": 0, "id": "c1", "function": {"name": "lo", "arguments": ""}}]},
        {"tool_calls": [{"index": 0, "function": {"name": "ok", "arguments": '{"x"'}}]},
        {"tool_calls": [{"index": 0, "function": {"arguments": ": 2}"}}]},
    ]
    asm = StreamAssembler()
    for d in deltas:
        asm.feed({**head, "choices": [{"index": 0, "delta": d}]})
    asm.feed({**head, "choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]})
    usage = {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}
    asm.feed({**head, "choices": [], "usage": usage})
    out = asm.completion()
    assert out["id"] == "chatcmpl-9" and out["created"] == 5 and out["model"] == "m"
    assert out["object"] == "chat.completion"
    (choice,) = out["choices"]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] == "Hello"
    assert choice["message"]["tool_calls"] == [
        {"id": "c1", "type": "function", "function": {"name": "look", "arguments": '{"x": 2}'}}
    ]
    assert out["usage"] == usage
    assert asm.chars == len("Hello") + len('{"x": 2}')
    assert asm.chunks == 4  # two text pieces and two argument pieces


def test_an_interrupted_stream_assembles_to_something_not_cacheable() -> None:
    asm = StreamAssembler()
    asm.feed({"id": "x", "choices": [{"index": 0, "delta": {"content": "partial"}}]})
    out = asm.completion()
    assert out["choices"][0]["finish_reason"] is None
    assert not cacheable(out)
    assert "usage" not in out


# --- ResponseCache --------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


class BagOfWords:
    """A deterministic embedding: word counts over a vocabulary grown as words are seen."""

    def __init__(self, dims: int = 256) -> None:
        self.dims = dims
        self.vocab: dict[str, int] = {}
        self.calls: list[tuple[str, str]] = []

    def vector(self, text: str) -> list[float]:
        out = [0.0] * self.dims
        for word in re.findall(r"[a-z]+", text.lower()):
            out[self.vocab.setdefault(word, len(self.vocab))] += 1.0
        return out

    async def __call__(self, model: str, text: str) -> list[float]:
        self.calls.append((model, text))
        return self.vector(text)


def cosine(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    return dot / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))


SEM = CacheConfig(ttl_s=60, semantic=SemanticCacheConfig(embedding_model="embed", threshold=0.9))


def make_cache() -> tuple[ResponseCache, MemoryCache, BagOfWords, Clock]:
    clock = Clock()
    backend = MemoryCache(clock=clock)
    embed = BagOfWords()
    return ResponseCache(backend, MemorySemanticIndex(clock=clock), embed), backend, embed, clock


async def test_exact_hit_after_store() -> None:
    cache, backend, _, _ = make_cache()
    cfg = CacheConfig(ttl_s=60)
    first = await cache.lookup("t1", "chat", cfg, req(temperature=0))
    assert (first.kind, first.hit) == ("miss", None)
    assert await cache.store(first, cfg, answer())
    assert len(backend) == 1
    again = await cache.lookup("t1", "chat", cfg, req(temperature=0, stream=True))
    assert again.kind == "exact" and again.hit == answer()
    assert again.key == first.key


async def test_exact_entries_expire_with_their_ttl() -> None:
    cache, _, _, clock = make_cache()
    cfg = CacheConfig(ttl_s=60)
    await cache.store(await cache.lookup("t1", "chat", cfg, req()), cfg, answer())
    clock.t += 61
    assert (await cache.lookup("t1", "chat", cfg, req())).kind == "miss"


async def test_semantic_hit_above_threshold_and_miss_below() -> None:
    cache, _, embed, _ = make_cache()
    look = await cache.lookup("t1", "chat", SEM, req(SYSTEM, USER))
    assert look.kind == "miss" and look.scope is not None and look.vector is not None
    assert embed.calls == [("embed", USER["content"])]  # the user text only
    assert await cache.store(look, SEM, answer())

    close = {"role": "user", "content": "what is the capital of france please"}
    similar = await cache.lookup("t1", "chat", SEM, req(SYSTEM, close))
    expected = cosine(embed.vector(USER["content"]), embed.vector(close["content"]))
    assert expected >= SEM.semantic.threshold  # type: ignore[union-attr]
    assert similar.kind == "semantic" and similar.hit == answer()
    assert similar.similarity == pytest.approx(expected, rel=1e-5)

    far = {"role": "user", "content": "what is the capital of spain"}
    assert cosine(embed.vector(USER["content"]), embed.vector(far["content"])) < 0.9
    missed = await cache.lookup("t1", "chat", SEM, req(SYSTEM, far))
    assert missed.kind == "miss" and missed.hit is None


async def test_semantic_needs_the_same_system_prompt_and_parameters() -> None:
    cache, _, _, _ = make_cache()
    await cache.store(await cache.lookup("t1", "chat", SEM, req(SYSTEM, USER)), SEM, answer())
    other_system = {"role": "system", "content": "answer at length"}
    assert (await cache.lookup("t1", "chat", SEM, req(other_system, USER))).kind == "miss"
    hot = await cache.lookup("t1", "chat", SEM, req(SYSTEM, USER, temperature=1.5))
    assert hot.kind == "miss"


async def test_semantic_identical_text_hits_even_without_exact_caching() -> None:
    cache, _, _, _ = make_cache()
    cfg = CacheConfig(exact=False, ttl_s=60, semantic=SEM.semantic)
    await cache.store(await cache.lookup("t1", "chat", cfg, req(USER)), cfg, answer())
    look = await cache.lookup("t1", "chat", cfg, req(USER))
    assert look.kind == "semantic"
    assert look.similarity == pytest.approx(1.0, rel=1e-5)


async def test_tenants_never_share_entries() -> None:
    cache, _, _, _ = make_cache()
    await cache.store(await cache.lookup("t1", "chat", SEM, req(USER)), SEM, answer())
    other = await cache.lookup("t2", "chat", SEM, req(USER))
    assert other.kind == "miss" and other.hit is None
    assert (await cache.lookup("t1", "chat2", SEM, req(USER))).kind == "miss"
    assert (await cache.lookup("t1", "chat", SEM, req(USER))).kind == "exact"


async def test_incomplete_completions_are_not_stored() -> None:
    cache, backend, _, _ = make_cache()
    look = await cache.lookup("t1", "chat", SEM, req(USER))
    assert not await cache.store(look, SEM, answer(finish=None))
    assert not await cache.store(look, SEM, {"choices": []})
    assert len(backend) == 0
    again = await cache.lookup("t1", "chat", SEM, req(USER))
    assert again.kind == "miss"


async def test_a_hit_is_never_stored_again() -> None:
    cache, backend, _, _ = make_cache()
    await cache.store(await cache.lookup("t1", "chat", SEM, req(USER)), SEM, answer("Paris"))
    hit = await cache.lookup("t1", "chat", SEM, req(USER))
    assert hit.kind == "exact"
    assert not await cache.store(hit, SEM, answer("Lyon"))
    assert len(backend) == 1
    assert (await cache.lookup("t1", "chat", SEM, req(USER))).hit == answer("Paris")
    close = {"role": "user", "content": "what is the capital of france please"}
    sem_hit = await cache.lookup("t1", "chat", SEM, req(close))
    assert sem_hit.kind == "semantic"
    assert not await cache.store(sem_hit, SEM, answer("Lyon"))
    assert len(backend) == 1


async def test_multi_turn_requests_skip_the_semantic_index() -> None:
    cache, _, embed, _ = make_cache()
    convo = req(USER, {"role": "assistant", "content": "Paris"}, USER)
    look = await cache.lookup("t1", "chat", SEM, convo)
    assert look.scope is None and look.vector is None
    assert embed.calls == []
    assert await cache.store(look, SEM, answer())
    assert (await cache.lookup("t1", "chat", SEM, convo)).kind == "exact"


async def test_semantic_entry_whose_value_expired_is_a_miss() -> None:
    clock = Clock()
    backend = MemoryCache(clock=clock)
    index = MemorySemanticIndex(clock=Clock())  # the index's clock never moves
    cache = ResponseCache(backend, index, BagOfWords())
    await cache.store(await cache.lookup("t1", "chat", SEM, req(USER)), SEM, answer())
    clock.t += 61
    close = {"role": "user", "content": "what is the capital of france please"}
    look = await cache.lookup("t1", "chat", SEM, req(close))
    assert look.kind == "miss" and look.hit is None


async def test_without_an_embedder_only_exact_caching_works() -> None:
    backend = MemoryCache()
    cache = ResponseCache(backend, MemorySemanticIndex(), None)
    look = await cache.lookup("t1", "chat", SEM, req(USER))
    assert look.scope is None
    await cache.store(look, SEM, answer())
    assert (await cache.lookup("t1", "chat", SEM, req(USER))).kind == "exact"
    close = {"role": "user", "content": "what is the capital of france please"}
    assert (await cache.lookup("t1", "chat", SEM, req(close))).kind == "miss"
