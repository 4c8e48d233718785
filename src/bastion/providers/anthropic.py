"""The Anthropic Messages API as an upstream: OpenAI canonical in, Anthropic out.

:class:`AnthropicProvider` translates a :class:`ChatRequest` into a ``POST
{base_url}/v1/messages`` body (system and developer messages become ``system``,
tool calls and tool messages become ``tool_use`` / ``tool_result`` blocks,
consecutive same-role turns are merged), and translates the answer back into a
``chat.completion`` or a stream of ``chat.completion.chunk`` objects whose last
one carries ``usage``. Failures are classified as :mod:`bastion.providers.base`
describes. The API key travels only in the ``x-api-key`` header.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import orjson
from yarl import URL

from bastion.core.errors import InvalidRequest, Unsupported, UpstreamError, UpstreamFailure
from bastion.core.types import JSON, ChatRequest, EmbeddingRequest, Message
from bastion.providers import _http
from bastion.providers.base import CallContext

_FINISH = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}

_JSON_OBJECT = "Respond with a single valid JSON object and nothing else."


# --------------------------------------------------------------------------- request


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return ""


def _image_block(url: str) -> JSON:
    if url.startswith("data:") and ";base64," in url:
        media, _, data = url[5:].partition(";base64,")
        return {"type": "image", "source": {"type": "base64", "media_type": media, "data": data}}
    return {"type": "image", "source": {"type": "url", "url": url}}


def _blocks(content: Any, param: str) -> list[JSON]:
    """OpenAI message content (a string or parts) as Anthropic content blocks."""
    if content is None:
        return []
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    out: list[JSON] = []
    for j, part in enumerate(content):
        kind = part.get("type")
        if kind in ("text", "refusal"):
            text = part.get("text", part.get("refusal"))
            if isinstance(text, str) and text:
                out.append({"type": "text", "text": text})
        elif kind == "image_url":
            image = part.get("image_url")
            url = image.get("url") if isinstance(image, dict) else image
            if not isinstance(url, str) or not url:
                raise InvalidRequest(f"{param}[{j}].image_url.url is required", param=param)
            out.append(_image_block(url))
        elif kind == "file" and str((part.get("file") or {}).get("file_data", "")).startswith(
            "data:application/pdf;base64,"
        ):
            data = part["file"]["file_data"].partition(";base64,")[2]
            source = {"type": "base64", "media_type": "application/pdf", "data": data}
            out.append({"type": "document", "source": source})
        else:
            raise Unsupported(
                f"{param}[{j}]: content part {kind!r} is not supported by Anthropic",
                param=f"{param}[{j}].type",
            )
    return out


def _tool_use_blocks(message: Message, param: str) -> list[JSON]:
    out: list[JSON] = []
    for k, call in enumerate(message.tool_calls or []):
        function = call.get("function") or {}
        raw = function.get("arguments") or "{}"
        try:
            args = orjson.loads(raw) if isinstance(raw, str) else raw
        except orjson.JSONDecodeError:
            args = None
        if not isinstance(args, dict):
            where = f"{param}.tool_calls[{k}].function.arguments"
            raise InvalidRequest(f"{where} must be a JSON object", param=where)
        name = function.get("name")
        if not isinstance(name, str) or not name:
            where = f"{param}.tool_calls[{k}].function.name"
            raise InvalidRequest(f"{where} is required", param=where)
        call_id = call.get("id") or f"toolu_{k}"
        out.append({"type": "tool_use", "id": call_id, "name": name, "input": args})
    return out


def _system_text(request: ChatRequest) -> str:
    parts = [_text_of(m.content) for m in request.messages if m.role in ("system", "developer")]
    fmt = request.response_format or {}
    if fmt.get("type") == "json_object":
        parts.append(_JSON_OBJECT)
    elif fmt.get("type") == "json_schema":
        schema = (fmt.get("json_schema") or {}).get("schema", {})
        parts.append(
            f"{_JSON_OBJECT} It must match this JSON schema: {orjson.dumps(schema).decode()}"
        )
    return "\n\n".join(p for p in parts if p)


def _turns(request: ChatRequest) -> list[JSON]:
    """The conversation as Anthropic messages, alternating roles, tool results first."""
    turns: list[JSON] = []
    for i, message in enumerate(request.messages):
        param = f"messages[{i}]"
        if message.role in ("system", "developer"):
            continue
        if message.role == "user":
            role, blocks = "user", _blocks(message.content, f"{param}.content")
        elif message.role == "assistant":
            blocks = _blocks(message.content, f"{param}.content")
            role, blocks = "assistant", blocks + _tool_use_blocks(message, param)
        elif message.role == "tool":
            if not message.tool_call_id:
                raise InvalidRequest(
                    f"{param}.tool_call_id is required", param=f"{param}.tool_call_id"
                )
            result: JSON = {"type": "tool_result", "tool_use_id": message.tool_call_id}
            content = _blocks(message.content, f"{param}.content")
            if content:
                result["content"] = content
            role, blocks = "user", [result]
        else:
            raise Unsupported(f"{param}.role 'function' is not supported", param=f"{param}.role")
        if not blocks:
            continue
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"].extend(blocks)
        else:
            turns.append({"role": role, "content": blocks})
    for turn in turns:  # Anthropic wants tool_result blocks before any other user content
        if turn["role"] == "user":
            turn["content"].sort(key=lambda b: b["type"] != "tool_result")
    if turns and turns[-1]["role"] == "assistant":  # a prefill may not end in whitespace
        last = turns[-1]["content"][-1]
        if last["type"] == "text":
            last["text"] = last["text"].rstrip()
            if not last["text"]:
                turns[-1]["content"].pop()
                if not turns[-1]["content"]:
                    turns.pop()
    return turns


def _tools(request: ChatRequest) -> list[JSON]:
    out: list[JSON] = []
    for i, tool in enumerate(request.tools or []):
        function = tool.get("function")
        if tool.get("type", "function") != "function" or not isinstance(function, dict):
            raise Unsupported(f"tools[{i}]: only function tools are supported", param=f"tools[{i}]")
        name = function.get("name")
        if not isinstance(name, str) or not name:
            raise InvalidRequest(f"tools[{i}].function.name is required", param=f"tools[{i}]")
        schema = function.get("parameters") or {"type": "object", "properties": {}}
        spec: JSON = {"name": name, "input_schema": schema}
        if function.get("description"):
            spec["description"] = function["description"]
        out.append(spec)
    return out


def _tool_choice(request: ChatRequest) -> JSON | None:
    choice = request.tool_choice
    parallel = (request.model_extra or {}).get("parallel_tool_calls")
    if choice is None and parallel is not False:
        return None
    out: JSON
    if choice is None or choice == "auto":
        out = {"type": "auto"}
    elif choice == "required":
        out = {"type": "any"}
    elif choice == "none":
        return {"type": "none"}
    elif isinstance(choice, dict) and isinstance(choice.get("function"), dict):
        out = {"type": "tool", "name": choice["function"].get("name")}
    else:
        raise InvalidRequest("tool_choice is not valid", param="tool_choice")
    if parallel is False:
        out["disable_parallel_tool_use"] = True
    return out


def to_anthropic_request(request: ChatRequest, model: str, default_max_tokens: int) -> JSON:
    """The Anthropic Messages body for a canonical request (without ``stream``)."""
    body: JSON = {
        "model": model,
        "max_tokens": request.output_limit() or default_max_tokens,
        "messages": _turns(request),
    }
    if system := _system_text(request):
        body["system"] = system
    if request.temperature is not None:
        body["temperature"] = min(request.temperature, 1.0)  # Anthropic's range is 0..1
    if request.top_p is not None:
        body["top_p"] = request.top_p
    top_k = (request.model_extra or {}).get("top_k")
    if isinstance(top_k, int) and not isinstance(top_k, bool):
        body["top_k"] = top_k
    stops = [request.stop] if isinstance(request.stop, str) else request.stop or []
    if stops := [s for s in stops if s.strip()]:
        body["stop_sequences"] = stops
    if request.tools:
        body["tools"] = _tools(request)
        if (choice := _tool_choice(request)) is not None:
            body["tool_choice"] = choice
    if request.user:
        body["metadata"] = {"user_id": request.user}
    return body


# --------------------------------------------------------------------------- response


def _usage(usage: Any) -> JSON:
    usage = usage if isinstance(usage, dict) else {}
    cached = int(usage.get("cache_read_input_tokens") or 0)
    prompt = int(usage.get("input_tokens") or 0) + cached
    prompt += int(usage.get("cache_creation_input_tokens") or 0)
    completion = int(usage.get("output_tokens") or 0)
    out: JSON = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }
    if cached:
        out["prompt_tokens_details"] = {"cached_tokens": cached}
    return out


def to_chat_completion(message: JSON, model: str) -> JSON:
    """An Anthropic ``message`` as an OpenAI ``chat.completion``."""
    texts: list[str] = []
    thinking: list[str] = []
    calls: list[JSON] = []
    for block in message.get("content") or []:
        kind = block.get("type")
        if kind == "text":
            texts.append(str(block.get("text", "")))
        elif kind == "thinking":
            thinking.append(str(block.get("thinking", "")))
        elif kind == "tool_use":
            arguments = orjson.dumps(block.get("input") or {}).decode()
            function = {"name": block.get("name", ""), "arguments": arguments}
            calls.append({"id": block.get("id", ""), "type": "function", "function": function})
    reply: JSON = {"role": "assistant", "content": "".join(texts) if texts else None}
    if calls:
        reply["tool_calls"] = calls
    if thinking:
        reply["reasoning_content"] = "".join(thinking)
    finish = _FINISH.get(message.get("stop_reason") or "end_turn", "stop")
    return {
        "id": message.get("id") or "msg_unknown",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": message.get("model") or model,
        "choices": [{"index": 0, "message": reply, "finish_reason": finish, "logprobs": None}],
        "usage": _usage(message.get("usage")),
    }


def _stream_error(data: JSON, secrets: tuple[str, ...]) -> UpstreamError:
    """An Anthropic ``error`` object (mid-stream or in a 200 body) as a retryable error."""
    error = data.get("error")
    error = error if isinstance(error, dict) else {}
    etype = str(error.get("type") or "error")
    message = _http.redact(str(error.get("message") or ""), secrets)[:500]
    status = 529 if etype == "overloaded_error" else None
    return UpstreamError(f"anthropic error event: {etype}: {message}", upstream_status=status)


class ChunkTranslator:
    """Anthropic stream events in, ``chat.completion.chunk`` dicts out (pure, no I/O)."""

    def __init__(self, model: str, secrets: tuple[str, ...] = ()) -> None:
        self._secrets = secrets
        self.id = "msg_unknown"
        self.model = model
        self.created = int(time.time())
        self.usage: JSON = {}
        self.stop_reason: str | None = None
        self.done = False
        self._tools: dict[int, int] = {}  # Anthropic block index -> OpenAI tool_calls index

    def _chunk(self, delta: JSON, finish: str | None = None) -> JSON:
        return {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}],
        }

    def feed(self, data: JSON) -> list[JSON]:
        """The chunks for one event's data; raises :class:`UpstreamError` on ``error``."""
        kind = data.get("type")
        if kind == "message_start":
            message = data.get("message") or {}
            self.id = message.get("id") or self.id
            self.model = message.get("model") or self.model
            self.usage.update(message.get("usage") or {})
            return [self._chunk({"role": "assistant", "content": ""})]
        if kind == "content_block_start":
            block = data.get("content_block") or {}
            if block.get("type") == "tool_use":
                index = self._tools[int(data.get("index") or 0)] = len(self._tools)
                call = {"index": index, "id": block.get("id", ""), "type": "function"}
                call["function"] = {"name": block.get("name", ""), "arguments": ""}
                return [self._chunk({"tool_calls": [call]})]
            if block.get("type") == "text" and block.get("text"):
                return [self._chunk({"content": block["text"]})]
            return []
        if kind == "content_block_delta":
            delta = data.get("delta") or {}
            if delta.get("type") == "text_delta" and delta.get("text"):
                return [self._chunk({"content": delta["text"]})]
            if delta.get("type") == "thinking_delta" and delta.get("thinking"):
                return [self._chunk({"reasoning_content": delta["thinking"]})]
            if delta.get("type") == "input_json_delta" and delta.get("partial_json"):
                index = self._tools.get(int(data.get("index") or 0), 0)
                call = {"index": index, "function": {"arguments": delta["partial_json"]}}
                return [self._chunk({"tool_calls": [call]})]
            return []
        if kind == "message_delta":
            self.stop_reason = (data.get("delta") or {}).get("stop_reason") or self.stop_reason
            self.usage.update({k: v for k, v in (data.get("usage") or {}).items() if v is not None})
            return []
        if kind == "message_stop":
            self.done = True
            finish = _FINISH.get(self.stop_reason or "end_turn", "stop")
            last = {**self._chunk({}), "choices": [], "usage": _usage(self.usage)}
            return [self._chunk({}, finish), last]
        if kind == "error":
            raise _stream_error(data, self._secrets)
        return []  # ping and event types added later


# --------------------------------------------------------------------------- provider


class AnthropicProvider:
    """The Anthropic Messages API (or a compatible endpoint) as a Bastion provider."""

    type = "anthropic"

    def __init__(
        self,
        name: str,
        *,
        api_key: str | None,
        base_url: str = "https://api.anthropic.com",
        anthropic_version: str = "2023-06-01",
        max_connections: int = 256,
        default_max_tokens: int = 1024,
    ) -> None:
        self.name = name
        self.base_url = base_url.rstrip("/")
        self.default_max_tokens = default_max_tokens
        headers = {"anthropic-version": anthropic_version, "content-type": "application/json"}
        if api_key:
            headers["x-api-key"] = api_key
        self._secrets: tuple[str, ...] = (api_key,) if api_key else ()
        self._session = _http.PooledSession(max_connections=max_connections, headers=headers)
        self._url = URL(f"{self.base_url}/v1/messages")

    def __repr__(self) -> str:
        return f"AnthropicProvider(name={self.name!r}, base_url={self.base_url!r})"

    def build_body(self, request: ChatRequest, model: str, *, stream: bool) -> JSON:
        """The upstream request body (public for tests and debugging)."""
        body = to_anthropic_request(request, model, self.default_max_tokens)
        if stream:
            body["stream"] = True
        return body

    async def chat(self, request: ChatRequest, model: str, ctx: CallContext) -> JSON:
        """A non-streaming completion."""
        data = orjson.dumps(self.build_body(request, model, stream=False))
        try:
            message = await _http.post_json(
                self._session.get(), self._url, data, ctx, secrets=self._secrets
            )
            if message.get("type") == "error":
                raise _stream_error(message, self._secrets)
        except UpstreamFailure as exc:
            exc.deployment = exc.deployment or self.name
            raise
        return to_chat_completion(message, model)

    async def chat_stream(
        self, request: ChatRequest, model: str, ctx: CallContext
    ) -> AsyncIterator[JSON]:
        """Stream ``chat.completion.chunk`` objects; the last one carries ``usage``."""
        data = orjson.dumps(self.build_body(request, model, stream=True))
        translator = ChunkTranslator(model, self._secrets)
        try:
            stream = await _http.open_sse(
                self._session.get(), self._url, data, ctx, secrets=self._secrets
            )
            try:
                async for event, raw in stream.events():
                    if not raw.strip():
                        continue
                    obj = _http.loads_object(raw, "stream event")
                    obj.setdefault("type", event)
                    for chunk in translator.feed(obj):
                        yield chunk
                    if translator.done:
                        break
            finally:
                if translator.done:
                    await stream.finish()
                else:
                    stream.close()
            if not translator.done:
                raise UpstreamError("anthropic stream ended before message_stop")
        except UpstreamFailure as exc:
            exc.deployment = exc.deployment or self.name
            raise

    async def embed(self, request: EmbeddingRequest, model: str, ctx: CallContext) -> JSON:
        """Anthropic has no embeddings API: always :class:`Unsupported`."""
        raise Unsupported("the anthropic provider does not support embeddings", param="model")

    async def aclose(self) -> None:
        """Close the pooled HTTP session."""
        await self._session.aclose()
