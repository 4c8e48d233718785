"""The response cache: exact and semantic, scoped per tenant, replaying streams.

*Exact*: the key is the SHA-256 of the tenant, the model alias and the
normalised request (its JSON with sorted keys, without the fields that do not
change the answer: ``stream``, ``stream_options``, ``user``, ``metadata`` and
Bastion's own extension). A hit returns the stored completion; a streaming
request replays it as chunks (:func:`completion_chunks`), and a streamed miss
is assembled (:class:`StreamAssembler`) and stored like any other.

*Semantic* (opt-in per model): single-turn requests only (an optional
system message and one user message of text). The user text is embedded with
the configured embedding model; the nearest stored request *of the same
tenant, model, system prompt and parameters* at or above the threshold is a
hit.

Entries are stored only for complete answers (``finish_reason`` ``stop``,
``length`` or ``tool_calls``), never for errors or interrupted streams.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import orjson

from bastion.config.schema import CacheConfig
from bastion.core.types import JSON, ChatRequest
from bastion.gateway.cache_store import CacheBackend, SemanticIndex

_IGNORED = frozenset({"stream", "stream_options", "user", "metadata", "bastion"})
_COMPLETE = frozenset({"stop", "length", "tool_calls", "end_turn"})

Embed = Callable[[str, str], Awaitable[list[float]]]
"""``embed(model_alias, text)``: a vector for ``text`` (through the gateway)."""


def _digest(*parts: bytes) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(len(p).to_bytes(4, "big"))
        h.update(p)
    return h.hexdigest()


def request_fields(req: ChatRequest) -> dict[str, Any]:
    body = req._raw if req._raw is not None else req.model_dump(exclude_none=True)
    return {k: v for k, v in body.items() if k not in _IGNORED}


def exact_key(tenant: str, alias: str, req: ChatRequest) -> str:
    body = orjson.dumps(request_fields(req), option=orjson.OPT_SORT_KEYS)
    return "c:" + _digest(tenant.encode(), alias.encode(), body)


def single_turn(req: ChatRequest) -> tuple[str, str] | None:
    """``(system_text, user_text)`` of a single-turn request, else None."""
    msgs = req.messages
    system = ""
    if len(msgs) == 2 and msgs[0].role in ("system", "developer"):
        if not isinstance(msgs[0].content, str):
            return None
        system, msgs = msgs[0].content, msgs[1:]
    if len(msgs) != 1 or msgs[0].role != "user" or not isinstance(msgs[0].content, str):
        return None
    return system, msgs[0].content


def semantic_scope(tenant: str, alias: str, req: ChatRequest, system: str) -> str:
    params = {k: v for k, v in request_fields(req).items() if k not in ("messages", "model")}
    body = orjson.dumps(params, option=orjson.OPT_SORT_KEYS)
    return "s:" + _digest(tenant.encode(), alias.encode(), system.encode(), body)


def cacheable(completion: JSON) -> bool:
    choices = completion.get("choices") or []
    return bool(choices) and all(c.get("finish_reason") in _COMPLETE for c in choices)


@dataclass(slots=True)
class Lookup:
    """One request's cache state between lookup and store."""

    key: str
    hit: JSON | None = None
    kind: str = "miss"  # "exact" | "semantic" | "miss"
    scope: str | None = None
    vector: list[float] | None = None
    similarity: float | None = None


class ResponseCache:
    def __init__(
        self,
        backend: CacheBackend,
        semantic: SemanticIndex | None = None,
        embed: Embed | None = None,
    ) -> None:
        self.backend = backend
        self.semantic = semantic
        self.embed = embed

    async def lookup(self, tenant: str, alias: str, cfg: CacheConfig, req: ChatRequest) -> Lookup:
        look = Lookup(exact_key(tenant, alias, req))
        if cfg.exact:
            raw = await self.backend.get(look.key)
            if raw is not None:
                look.hit, look.kind = orjson.loads(raw), "exact"
                return look
        sem = cfg.semantic
        if sem is None or self.semantic is None or self.embed is None:
            return look
        turn = single_turn(req)
        if turn is None:
            return look
        look.scope = semantic_scope(tenant, alias, req, turn[0])
        look.vector = await self.embed(sem.embedding_model, turn[1])
        found = await self.semantic.search(look.scope, look.vector, sem.threshold)
        if found is not None:
            raw = await self.backend.get(found[0])
            if raw is not None:
                look.hit, look.kind, look.similarity = orjson.loads(raw), "semantic", found[1]
        return look

    async def store(self, look: Lookup, cfg: CacheConfig, completion: JSON) -> bool:
        if look.hit is not None or not cacheable(completion):
            return False
        await self.backend.set(look.key, orjson.dumps(completion), cfg.ttl_s)
        if look.scope is not None and look.vector is not None and self.semantic is not None:
            await self.semantic.add(look.scope, look.vector, look.key, cfg.ttl_s)
        return True

    async def aclose(self) -> None:
        await self.backend.aclose()
        if self.semantic is not None:
            await self.semantic.aclose()


def completion_chunks(completion: JSON) -> list[JSON]:
    """A completion replayed as the chunks of a stream (role, content, tools, finish, usage)."""
    base = {
        "id": completion.get("id", "chatcmpl-cache"),
        "object": "chat.completion.chunk",
        "created": completion.get("created", 0),
        "model": completion.get("model", ""),
    }
    out: list[JSON] = []
    for choice in completion.get("choices") or []:
        i = choice.get("index", 0)
        msg = choice.get("message") or {}
        out.append({**base, "choices": [{"index": i, "delta": {"role": "assistant"}}]})
        if msg.get("content"):
            out.append({**base, "choices": [{"index": i, "delta": {"content": msg["content"]}}]})
        calls = msg.get("tool_calls") or []
        if calls:
            delta = {"tool_calls": [{"index": n, **c} for n, c in enumerate(calls)]}
            out.append({**base, "choices": [{"index": i, "delta": delta}]})
        out.append(
            {
                **base,
                "choices": [
                    {"index": i, "delta": {}, "finish_reason": choice.get("finish_reason")}
                ],
            }
        )
    if completion.get("usage"):
        out.append({**base, "choices": [], "usage": completion["usage"]})
    return out


class StreamAssembler:
    """Builds the completion a stream amounts to (text, tool calls, finish, usage)."""

    def __init__(self) -> None:
        self.head: JSON = {}
        self.choices: dict[int, JSON] = {}
        self.usage: JSON | None = None
        self.chars = 0
        self.chunks = 0

    def feed(self, chunk: JSON) -> None:
        if not self.head:
            self.head = {k: chunk.get(k) for k in ("id", "created", "model")}
        if chunk.get("usage"):
            self.usage = chunk["usage"]
        for c in chunk.get("choices") or []:
            slot = self.choices.setdefault(
                c.get("index", 0), {"content": [], "tools": {}, "finish": None}
            )
            delta = c.get("delta") or {}
            text = delta.get("content")
            if text:
                slot["content"].append(text)
                self.chars += len(text)
                self.chunks += 1
            for call in delta.get("tool_calls") or []:
                tool = slot["tools"].setdefault(
                    call.get("index", 0),
                    {"id": None, "type": "function", "function": {"name": "", "arguments": ""}},
                )
                if call.get("id"):
                    tool["id"] = call["id"]
                fn = call.get("function") or {}
                tool["function"]["name"] += fn.get("name") or ""
                args = fn.get("arguments") or ""
                tool["function"]["arguments"] += args
                self.chars += len(args)
                self.chunks += 1 if args else 0
            if c.get("finish_reason"):
                slot["finish"] = c["finish_reason"]

    def completion(self) -> JSON:
        choices = []
        for i, slot in sorted(self.choices.items()):
            msg: JSON = {"role": "assistant", "content": "".join(slot["content"]) or None}
            if slot["tools"]:
                msg["tool_calls"] = [t for _, t in sorted(slot["tools"].items())]
            choices.append({"index": i, "message": msg, "finish_reason": slot["finish"]})
        out: JSON = {**self.head, "object": "chat.completion", "choices": choices}
        if self.usage:
            out["usage"] = self.usage
        return out

    def text(self) -> str:
        return "".join("".join(s["content"]) for _, s in sorted(self.choices.items()))
