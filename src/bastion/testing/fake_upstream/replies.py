"""Wire bodies for the fake upstream: OpenAI and Anthropic replies and SSE events.

Each builder turns a :class:`~.plan.Plan` into a ``chat.completion`` /
Anthropic ``message`` body, or into a stream's events as ``(kind, bytes)`` pairs
(kind 0 preamble, 1 content, 2 structure, 3 tail; see
:meth:`~.server.FakeServer._stream`). Embeddings are hashed bags of words.
"""

from __future__ import annotations

import hashlib
import re
import time
from typing import Any

import orjson

from bastion.testing.fake_upstream.plan import JSON, Plan

_WORD = re.compile(r"\w+")


def hashed_embedding(text: str, dim: int) -> list[float]:
    """A deterministic, normalised hashed bag-of-words vector."""
    vec = [0.0] * dim
    for word in _WORD.findall(text.lower()) or [""]:
        h = int.from_bytes(hashlib.blake2b(word.encode(), digest_size=8).digest(), "little")
        vec[h % dim] += 1.0 if (h >> 32) & 1 else -1.0
    norm = sum(v * v for v in vec) ** 0.5 or 1.0
    return [v / norm for v in vec]


def _data(obj: Any) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


def _sse(event: str, **fields: Any) -> bytes:
    """An Anthropic-style SSE event: ``event:`` line and ``{"type": event, ...}`` data."""
    return b"event: " + event.encode() + b"\n" + _data({"type": event, **fields})


def _usage(plan: Plan) -> JSON:
    total = plan.prompt + plan.completion
    return {
        "prompt_tokens": plan.prompt,
        "completion_tokens": plan.completion,
        "total_tokens": total,
    }


def _call(plan: Plan, n: int, args: str) -> JSON:
    name = plan.tool[0] if plan.tool else ""
    return {
        "id": f"call_fake_{n}",
        "type": "function",
        "function": {"name": name, "arguments": args},
    }


def _openai_head(plan: Plan, n: int, obj: str) -> JSON:
    return dict(
        id=f"chatcmpl-fake-{n}",
        object=obj,
        created=int(time.time()),
        model=plan.turn.model,
        system_fingerprint="fp_fake",
    )


def openai_completion(plan: Plan, n: int) -> JSON:
    message: JSON = {"role": "assistant", "content": plan.content, "refusal": None}
    if plan.tool is not None:
        message["tool_calls"] = [_call(plan, n, plan.tool[1])]
    choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": plan.finish}
    return {**_openai_head(plan, n, "chat.completion"), "choices": [choice], "usage": _usage(plan)}


def openai_events(plan: Plan, n: int, step: JSON, usage: bool) -> list[tuple[int, bytes]]:
    """OpenAI ``chat.completion.chunk`` events as ``(kind, bytes)`` (see ``FakeServer._stream``)."""
    head = _openai_head(plan, n, "chat.completion.chunk")
    if usage:
        head["usage"] = None

    def chunk(kind: int, delta: JSON, finish: str | None = None) -> tuple[int, bytes]:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        return kind, _data({**head, "choices": [choice]})

    first = "" if plan.tool is None or plan.content else None
    out = [chunk(0, {"role": "assistant", "content": first})]
    if plan.content:
        out += [chunk(1, {"content": p}) for p in plan.pieces(plan.content, step.get("chunks"))]
    if plan.tool is not None:
        out.append(chunk(1, {"tool_calls": [{"index": 0, **_call(plan, n, "")}]}))
        for frag in plan.pieces(plan.tool[1], step.get("chunks") or 3):
            out.append(chunk(1, {"tool_calls": [{"index": 0, "function": {"arguments": frag}}]}))
    out.append(chunk(3, {}, plan.finish))
    if usage:
        out.append((3, _data({**head, "choices": [], "usage": _usage(plan)})))
    out.append((3, b"data: [DONE]\n\n"))
    return out


def _anthropic_blocks(plan: Plan, n: int) -> list[JSON]:
    blocks: list[JSON] = []
    if plan.content:
        blocks.append({"type": "text", "text": plan.content})
    if plan.tool is not None:
        args = orjson.loads(plan.tool[1] or "{}")
        blocks.append(
            {"type": "tool_use", "id": f"toolu_fake_{n}", "name": plan.tool[0], "input": args}
        )
    return blocks


def anthropic_message(plan: Plan, n: int) -> JSON:
    usage = {"input_tokens": plan.prompt, "output_tokens": plan.completion}
    return dict(
        id=f"msg_fake_{n}",
        type="message",
        role="assistant",
        model=plan.turn.model,
        content=_anthropic_blocks(plan, n),
        stop_reason=plan.finish,
        stop_sequence=None,
        usage=usage,
    )


def anthropic_events(plan: Plan, n: int, step: JSON) -> list[tuple[int, bytes]]:
    """Anthropic's event sequence as ``(kind, bytes)`` (see ``FakeServer._stream``)."""
    start = {
        **anthropic_message(plan, n),
        "content": [],
        "stop_reason": None,
        "usage": {"input_tokens": plan.prompt, "output_tokens": 1},
    }
    out = [(0, _sse("message_start", message=start))]
    for i, block in enumerate(_anthropic_blocks(plan, n)):
        if block["type"] == "text":
            empty: JSON = {"type": "text", "text": ""}
            deltas = [
                {"type": "text_delta", "text": p}
                for p in plan.pieces(block["text"], step.get("chunks"))
            ]
        else:
            empty = {**block, "input": {}}
            args = plan.tool[1] if plan.tool else ""
            deltas = [
                {"type": "input_json_delta", "partial_json": p}
                for p in plan.pieces(args, step.get("chunks") or 3)
            ]
        out.append((0 if i == 0 else 2, _sse("content_block_start", index=i, content_block=empty)))
        if i == 0:
            out.append((0, _sse("ping")))
        out += [(1, _sse("content_block_delta", index=i, delta=d)) for d in deltas]
        out.append((2, _sse("content_block_stop", index=i)))
    stop = {"stop_reason": plan.finish, "stop_sequence": None}
    out.append((3, _sse("message_delta", delta=stop, usage={"output_tokens": plan.completion})))
    out.append((3, _sse("message_stop")))
    return out


def stream_error(step: JSON, anthropic: bool) -> bytes:
    message = str(step.get("message") or "fake upstream stream error")
    if anthropic:
        return _sse("error", error={"type": "overloaded_error", "message": message})
    return _data(
        {"error": {"message": message, "type": "server_error", "param": None, "code": None}}
    )
