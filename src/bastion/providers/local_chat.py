"""Request/response translation for the bundled local chat model (llama.cpp).

:class:`~bastion.providers.local.LocalProvider` runs the generation; this module
turns a :class:`ChatRequest` into ``llama_cpp.Llama.create_chat_completion``
arguments (:func:`build_params`) and llama.cpp's results back into OpenAI
``chat.completion`` (:func:`completion_body`) and ``chat.completion.chunk``
(:func:`chunk_head`, :func:`stream_choice`) dicts. The embeddings endpoint's
request checks and ``list`` body (:func:`embed_texts`, :func:`embeddings_body`)
are here too. Pure functions, no I/O.

* **Text only.** Message content must be text parts; ``developer`` messages become
  ``system``; an assistant turn that only called tools is shown as its calls' JSON.
* **JSON.** ``response_format`` ``json_object`` / ``json_schema`` become a llama.cpp
  grammar, so the output parses (unless ``max_tokens`` cuts it: ``finish_reason``
  is then ``length``).
* **Tools.** A 135M model cannot choose tools, so ``tools`` are not shown to it and
  it answers in text, except when ``tool_choice`` names a function (or is
  ``required`` with one tool): the arguments are then generated under a grammar
  built from that function's JSON schema and returned as a ``tool_calls`` message.
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from typing import Any

import numpy as np

from bastion.core.errors import InvalidRequest, RequestTooLarge
from bastion.core.types import JSON, ChatRequest, EmbeddingRequest
from bastion.providers.local_embed import DIMENSIONS, Vectors

MAX_EMBED_INPUTS = 2048


def _text(content: str | list[dict[str, Any]] | None) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    parts = []
    for part in content:
        if part.get("type") not in ("text", "input_text"):
            raise InvalidRequest("the local model accepts text content only", param="messages")
        parts.append(str(part.get("text") or ""))
    return "".join(parts)


def _response_format(rf: dict[str, Any] | None) -> dict[str, Any] | None:
    kind = (rf or {}).get("type")
    if rf is None or kind == "text":
        return None
    if kind == "json_object":
        return {"type": "json_object", **({"schema": rf["schema"]} if "schema" in rf else {})}
    if kind == "json_schema":
        schema = (rf.get("json_schema") or {}).get("schema")
        return {"type": "json_object", **({"schema": schema} if schema else {})}
    raise InvalidRequest(f"unsupported response_format type {kind!r}", param="response_format")


JSON_ATTEMPTS = 3


def json_ok(text: str, fmt: dict[str, Any]) -> bool:
    """Whether ``text`` is the JSON ``fmt`` (a llama.cpp ``response_format``) asks for.

    llama.cpp enforces the format with a grammar, but some builds let greedy
    sampling step outside it; the provider then retries with other seeds.
    """
    try:
        value = json.loads(text)
    except ValueError:
        return False
    schema = fmt.get("schema")
    if not schema:
        return isinstance(value, dict)
    import jsonschema

    try:
        jsonschema.validate(value, schema)
    except (jsonschema.ValidationError, jsonschema.SchemaError):
        return False
    return True


def retry_params(params: dict[str, Any], attempt: int) -> dict[str, Any]:
    """The parameters of the ``attempt``-th retry of a JSON answer: sampled, seeded."""
    return {**params, "temperature": 0.7, "seed": 1000 + attempt}


def _forced_tool(request: ChatRequest) -> dict[str, Any] | None:
    """The one function ``tool_choice`` forces, if any (see the module docs)."""
    tools, choice = request.tools or [], request.tool_choice
    name: str | None = None
    if isinstance(choice, dict):
        name = (choice.get("function") or {}).get("name")
    elif choice == "required" and len(tools) == 1:
        name = (tools[0].get("function") or {}).get("name")
    if name is None:
        return None
    for tool in tools:
        if (tool.get("function") or {}).get("name") == name:
            return tool
    raise InvalidRequest(f"tool_choice names an unknown function {name!r}", param="tool_choice")


def build_params(
    request: ChatRequest, default_max_tokens: int, *, stream: bool
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """``create_chat_completion`` keyword arguments, and the forced tool (or ``None``)."""
    messages = []
    for m in request.messages:
        content = _text(m.content)
        if m.tool_calls and not content:
            content = json.dumps([c.get("function") for c in m.tool_calls])
        messages.append({"role": "system" if m.role == "developer" else m.role, "content": content})
    params: dict[str, Any] = {
        "messages": messages,
        "max_tokens": request.output_limit() or default_max_tokens,
        "stream": stream,
    }
    for key in ("temperature", "top_p", "stop", "seed"):
        value = getattr(request, key)
        if value is not None:
            params[key] = value
    fmt = _response_format(request.response_format)
    if fmt is not None:
        params["response_format"] = fmt
    tool = _forced_tool(request)
    if tool is not None:
        params["tools"] = [tool]
        params["tool_choice"] = {"type": "function", "function": {"name": tool["function"]["name"]}}
    return params, tool


def tool_calls_of(message: dict[str, Any]) -> list[JSON]:
    """OpenAI ``tool_calls`` from llama.cpp's message (fresh ``call_`` ids)."""
    return [
        {
            "id": f"call_{uuid.uuid4().hex[:24]}",
            "type": "function",
            "function": {
                "name": c["function"]["name"],
                "arguments": c["function"].get("arguments") or "",
            },
        }
        for c in message.get("tool_calls") or []
    ]


def chunk_delta(delta: dict[str, Any], tool_ids: dict[int, str]) -> JSON:
    """An OpenAI delta from llama.cpp's: no ``None`` fields, tool call id/name sent once."""
    out: JSON = {k: delta[k] for k in ("role", "content") if delta.get(k) is not None}
    calls = []
    for c in delta.get("tool_calls") or []:
        index = int(c.get("index") or 0)
        args = (c.get("function") or {}).get("arguments") or ""
        if index not in tool_ids:
            tool_ids[index] = f"call_{uuid.uuid4().hex[:24]}"
            fn = {"name": c["function"]["name"], "arguments": args}
            calls.append(
                {"index": index, "id": tool_ids[index], "type": "function", "function": fn}
            )
        elif args:
            calls.append({"index": index, "function": {"arguments": args}})
    if calls:
        out["tool_calls"] = calls
    return out


def completion_body(result: JSON, model: str, forced_tool: JSON | None, usage: JSON) -> JSON:
    """A ``chat.completion`` from llama.cpp's result; a forced tool becomes ``tool_calls``."""
    choice = result["choices"][0]
    message: JSON = {"role": "assistant", "content": choice["message"].get("content")}
    if forced_tool is not None:
        message["content"] = None
        message["tool_calls"] = tool_calls_of(choice["message"])
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": message,
                "logprobs": None,
                "finish_reason": choice.get("finish_reason") or "stop",
            }
        ],
        "usage": usage,
    }


def chunk_head(model: str) -> JSON:
    """The fields every ``chat.completion.chunk`` of one stream shares."""
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
    }


def stream_choice(chunk: JSON, tool_ids: dict[int, str]) -> JSON:
    """The OpenAI ``choices[0]`` entry for one of llama.cpp's stream chunks."""
    choice = chunk["choices"][0]
    delta = chunk_delta(choice.get("delta") or {}, tool_ids)
    finish = choice.get("finish_reason")
    return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}


def embed_texts(request: EmbeddingRequest) -> list[str]:
    """The texts to embed; rejects token arrays, empty or oversized input, bad ``dimensions``."""
    raw = request.input
    items = [raw] if isinstance(raw, str) else list(raw)
    if not items:
        raise InvalidRequest("input must not be empty", param="input")
    if not all(isinstance(x, str) for x in items):
        raise InvalidRequest(
            "the local embedder accepts text input only, not token arrays", param="input"
        )
    if len(items) > MAX_EMBED_INPUTS:
        raise RequestTooLarge(f"at most {MAX_EMBED_INPUTS} inputs per request", param="input")
    dims = request.dimensions
    if dims is not None and dims > DIMENSIONS:
        raise InvalidRequest(
            f"dimensions must be at most {DIMENSIONS} for the local embedder",
            param="dimensions",
        )
    return [str(x) for x in items]


def embeddings_body(
    vecs: Vectors, counts: list[int], request: EmbeddingRequest, model: str
) -> JSON:
    """An OpenAI embeddings ``list`` (``dimensions`` truncates + renormalises)."""
    dims = request.dimensions
    if dims is not None and dims < DIMENSIONS:
        vecs = vecs[:, :dims]
        vecs = vecs / np.maximum(np.linalg.norm(vecs, axis=1, keepdims=True), 1e-12)
    as_b64 = request.encoding_format == "base64"
    data = [
        {
            "object": "embedding",
            "index": i,
            "embedding": (
                base64.b64encode(v.astype("<f4").tobytes()).decode("ascii")
                if as_b64
                else [float(x) for x in v]
            ),
        }
        for i, v in enumerate(vecs)
    ]
    n = sum(counts)
    return {
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": n, "total_tokens": n},
    }
