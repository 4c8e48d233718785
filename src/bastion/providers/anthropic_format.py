"""Anthropic Messages API <-> Bastion's canonical (OpenAI chat) format: the front door.

Pure functions, no I/O. The ``POST /v1/messages`` route uses them to accept an
Anthropic request, run it through the gateway as a :class:`ChatRequest`, and
answer in Anthropic's shape:

* :func:`messages_request_to_chat` - Anthropic request body -> ``ChatRequest``
* :func:`chat_to_message` - ``chat.completion`` -> Anthropic ``message``
* :class:`MessagesStreamTranslator` - ``chat.completion.chunk`` stream -> Anthropic SSE
  events (``message_start``, ``content_block_*``, ``message_delta``, ``message_stop``);
  it lives in :mod:`.anthropic_stream` and is re-exported here
* :func:`error_body` / :func:`error_event` - a :class:`BastionError` in Anthropic's shape

The opposite direction (Anthropic as an upstream) lives in :mod:`.anthropic`.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import ValidationError

from bastion.core.errors import BastionError, InvalidRequest, Unsupported
from bastion.core.types import JSON, ChatRequest
from bastion.providers.anthropic_stream import STOP_REASONS, anthropic_usage, new_tool_use_id

# Re-exported: the stream translator and its shared names used to live here.
from bastion.providers.anthropic_stream import Event as Event
from bastion.providers.anthropic_stream import (
    MessagesStreamTranslator as MessagesStreamTranslator,
)
from bastion.providers.anthropic_stream import new_message_id as new_message_id

_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    529: "overloaded_error",
}

_IGNORED_BLOCKS = frozenset({"thinking", "redacted_thinking"})

_TOOL_CHOICES = {"auto": "auto", "any": "required", "none": "none"}


# --------------------------------------------------------------------------- request


def _bad(param: str, what: str) -> InvalidRequest:
    """An :class:`InvalidRequest` naming ``param``."""
    return InvalidRequest(f"{param} {what}", param=param)


def _string(obj: JSON, key: str, param: str) -> str:
    """``obj[key]`` when it is a non-empty string, else an error naming ``param.key``."""
    value = obj.get(key)
    if not isinstance(value, str) or not value:
        raise _bad(f"{param}.{key}" if param else key, "is required and must be a non-empty string")
    return value


def _text(block: JSON, param: str) -> str:
    if not isinstance(block.get("text"), str):
        raise _bad(f"{param}.text", "must be a string")
    return str(block["text"])


def _system_text(system: Any) -> str:
    """The ``system`` field (a string or a list of text blocks) as one string."""
    if isinstance(system, str):
        return system
    if not isinstance(system, list):
        raise _bad("system", "must be a string or a list of text blocks")
    texts: list[str] = []
    for j, block in enumerate(system):
        if not isinstance(block, dict) or block.get("type") != "text":
            raise _bad(f"system[{j}].type", "must be 'text'")
        texts.append(_text(block, f"system[{j}]"))
    return "\n".join(texts)


def _image_part(block: JSON, param: str) -> JSON:
    """An Anthropic ``image`` block as an OpenAI ``image_url`` content part."""
    source = block.get("source")
    if not isinstance(source, dict):
        raise _bad(f"{param}.source", "is required")
    kind = source.get("type")
    if kind == "base64":
        media = _string(source, "media_type", f"{param}.source")
        url = f"data:{media};base64,{_string(source, 'data', f'{param}.source')}"
    elif kind == "url":
        url = _string(source, "url", f"{param}.source")
    else:
        raise _bad(f"{param}.source.type", "must be 'base64' or 'url'")
    return {"type": "image_url", "image_url": {"url": url}}


def _tool_result(block: JSON, param: str) -> tuple[JSON, list[JSON]]:
    """A ``tool_result`` block as a ``tool`` message, plus any images it carried.

    OpenAI tool messages hold text only, so images go to a user message after them.
    """
    tool_use_id = _string(block, "tool_use_id", param)
    content = block.get("content", "")
    images: list[JSON] = []
    if isinstance(content, list):
        texts: list[str] = []
        for k, part in enumerate(content):
            kind = part.get("type") if isinstance(part, dict) else None
            if kind == "text":
                texts.append(_text(part, f"{param}.content[{k}]"))
            elif kind == "image":
                images.append(_image_part(part, f"{param}.content[{k}]"))
            else:
                raise _bad(f"{param}.content[{k}].type", "must be 'text' or 'image'")
        content = "\n".join(texts)
    elif not isinstance(content, str):
        raise _bad(f"{param}.content", "must be a string or a list of blocks")
    return {"role": "tool", "tool_call_id": tool_use_id, "content": content}, images


def _user_messages(content: list[Any], param: str) -> list[JSON]:
    """A user turn's blocks as OpenAI messages: tool results become ``tool`` messages."""
    out: list[JSON] = []
    parts: list[JSON] = []

    def flush() -> None:
        if parts:
            only_text = len(parts) == 1 and parts[0]["type"] == "text"
            out.append({"role": "user", "content": parts[0]["text"] if only_text else list(parts)})
            parts.clear()

    for j, block in enumerate(content):
        bparam = f"{param}[{j}]"
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text":
            parts.append({"type": "text", "text": _text(block, bparam)})
        elif kind == "image":
            parts.append(_image_part(block, bparam))
        elif kind == "tool_result":
            flush()
            message, images = _tool_result(block, bparam)
            out.append(message)
            parts.extend(images)
        elif kind in ("document", "search_result", "container_upload"):
            raise Unsupported(f"{bparam}: {kind} blocks are not supported", param=f"{bparam}.type")
        elif kind not in _IGNORED_BLOCKS:
            raise _bad(f"{bparam}.type", f"{kind!r} is not a valid user content block type")
    flush()
    return out


def _assistant_message(content: list[Any], param: str) -> JSON:
    """An assistant turn's blocks as one OpenAI assistant message (text + tool_calls)."""
    texts: list[str] = []
    calls: list[JSON] = []
    for j, block in enumerate(content):
        bparam = f"{param}[{j}]"
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text":
            texts.append(_text(block, bparam))
        elif kind == "tool_use":
            name, args = _string(block, "name", bparam), block.get("input", {})
            if not isinstance(args, dict):
                raise _bad(f"{bparam}.input", "must be an object")
            call_id = block.get("id") if isinstance(block.get("id"), str) else new_tool_use_id()
            function = {"name": name, "arguments": json.dumps(args)}
            calls.append({"id": call_id, "type": "function", "function": function})
        elif kind not in _IGNORED_BLOCKS:
            raise _bad(f"{bparam}.type", f"{kind!r} is not a valid assistant content block type")
    message: JSON = {"role": "assistant", "content": "".join(texts) if texts else None}
    if calls:
        message["tool_calls"] = calls
    return message


def _convert_tools(tools: Any) -> list[JSON]:
    if not isinstance(tools, list):
        raise _bad("tools", "must be a list")
    out: list[JSON] = []
    for i, tool in enumerate(tools):
        param = f"tools[{i}]"
        if not isinstance(tool, dict):
            raise _bad(param, "must be an object")
        if tool.get("type") not in (None, "custom"):
            raise Unsupported(f"{param}: server tools are not supported", param=f"{param}.type")
        function: JSON = {"name": _string(tool, "name", param)}
        if isinstance(tool.get("description"), str):
            function["description"] = tool["description"]
        if not isinstance(tool.get("input_schema"), dict):
            raise _bad(f"{param}.input_schema", "is required and must be an object")
        function["parameters"] = tool["input_schema"]
        out.append({"type": "function", "function": function})
    return out


def _convert_tool_choice(choice: Any, fields: JSON) -> None:
    """Set ``tool_choice`` (and ``parallel_tool_calls``) in ``fields`` from Anthropic's."""
    if not isinstance(choice, dict):
        raise _bad("tool_choice", "must be an object")
    kind = choice.get("type")
    if kind in _TOOL_CHOICES:
        fields["tool_choice"] = _TOOL_CHOICES[kind]
    elif kind == "tool":
        name = _string(choice, "name", "tool_choice")
        fields["tool_choice"] = {"type": "function", "function": {"name": name}}
    else:
        raise _bad("tool_choice.type", "must be 'auto', 'any', 'tool' or 'none'")
    if choice.get("disable_parallel_tool_use") is True:
        fields["parallel_tool_calls"] = False


def _number(body: JSON, key: str, high: float) -> float | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= high:
        raise _bad(key, f"must be a number between 0 and {high:g}")
    return float(value)


def _convert_messages(raw: Any) -> list[JSON]:
    if not isinstance(raw, list) or not raw:
        raise _bad("messages", "must be a non-empty list")
    messages: list[JSON] = []
    for i, msg in enumerate(raw):
        param = f"messages[{i}]"
        if not isinstance(msg, dict):
            raise _bad(param, "must be an object")
        role, content = msg.get("role"), msg.get("content")
        if role not in ("user", "assistant"):
            raise _bad(f"{param}.role", "must be 'user' or 'assistant'")
        if isinstance(content, str):
            messages.append({"role": role, "content": content})
        elif not isinstance(content, list):
            raise _bad(f"{param}.content", "must be a string or a list of content blocks")
        elif role == "user":
            messages.extend(_user_messages(content, f"{param}.content"))
        else:
            messages.append(_assistant_message(content, f"{param}.content"))
    return messages


def messages_request_to_chat(body: JSON) -> ChatRequest:
    """An Anthropic Messages request body as a canonical :class:`ChatRequest`.

    Raises :class:`InvalidRequest` (``param`` names the field) on bad input, and
    :class:`Unsupported` for Anthropic features Bastion cannot carry over (server
    tools, documents). ``top_k`` and ``thinking`` are dropped.
    """
    if not isinstance(body, dict):
        raise InvalidRequest("request body must be a JSON object")
    fields: JSON = {"model": _string(body, "model", "")}
    max_tokens = body.get("max_tokens")
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise _bad("max_tokens", "is required and must be a positive integer")
    fields["max_tokens"] = max_tokens
    system = _system_text(body["system"]) if body.get("system") is not None else ""
    messages = _convert_messages(body.get("messages"))
    fields["messages"] = [{"role": "system", "content": system}, *messages] if system else messages
    if (temperature := _number(body, "temperature", 1.0)) is not None:
        fields["temperature"] = temperature
    if (top_p := _number(body, "top_p", 1.0)) is not None:
        fields["top_p"] = top_p
    stops = body.get("stop_sequences")
    if stops is not None and (
        not isinstance(stops, list) or not all(isinstance(s, str) for s in stops)
    ):
        raise _bad("stop_sequences", "must be a list of strings")
    if stops:
        fields["stop"] = list(stops)
    if body.get("tools") is not None:
        fields["tools"] = _convert_tools(body["tools"])
    if body.get("tool_choice") is not None:
        _convert_tool_choice(body["tool_choice"], fields)
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise _bad("stream", "must be a boolean")
    if stream:
        fields["stream"] = True
        fields["stream_options"] = {"include_usage": True}
    metadata = body.get("metadata")
    if metadata is not None and not isinstance(metadata, dict):
        raise _bad("metadata", "must be an object")
    if metadata and metadata.get("user_id") is not None:
        if not isinstance(metadata["user_id"], str):
            raise _bad("metadata.user_id", "must be a string")
        fields["user"] = metadata["user_id"]
    try:
        return ChatRequest.model_validate(fields)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(p) for p in first["loc"])
        raise InvalidRequest(f"{loc}: {first['msg']}", param=loc) from None


# --------------------------------------------------------------------------- response


def _parse_arguments(raw: Any) -> JSON:
    """Tool-call arguments (a JSON string) as an object; unparsable text is kept verbatim."""
    if isinstance(raw, dict):
        return raw
    if not raw:
        return {}
    try:
        value = json.loads(raw)
    except (TypeError, ValueError):
        return {"_raw_arguments": raw}
    return value if isinstance(value, dict) else {"_raw_arguments": raw}


def _message_id(completion_id: Any) -> str:
    if isinstance(completion_id, str) and completion_id:
        if completion_id.startswith("msg_"):
            return completion_id
        return "msg_" + completion_id.removeprefix("chatcmpl-")
    return new_message_id()


def chat_to_message(completion: JSON, model: str) -> JSON:
    """An OpenAI ``chat.completion`` as an Anthropic ``message`` object."""
    choices = completion.get("choices") or [{}]
    choice = choices[0] if isinstance(choices[0], dict) else {}
    message = choice.get("message") or {}
    blocks: list[JSON] = []
    content = message.get("content")
    if isinstance(content, list):
        content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
    if not content and isinstance(message.get("refusal"), str):
        content = message["refusal"]
    if content:
        blocks.append({"type": "text", "text": content})
    for call in message.get("tool_calls") or []:
        function = call.get("function") or {}
        blocks.append(
            {
                "type": "tool_use",
                "id": call.get("id") or new_tool_use_id(),
                "name": function.get("name", ""),
                "input": _parse_arguments(function.get("arguments")),
            }
        )
    finish = choice.get("finish_reason")
    stop_reason = STOP_REASONS.get(finish or "stop", "end_turn")
    if stop_reason == "end_turn" and any(b["type"] == "tool_use" for b in blocks):
        stop_reason = "tool_use"
    return {
        "id": _message_id(completion.get("id")),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": blocks,
        "stop_reason": stop_reason,
        "stop_sequence": None,
        "usage": anthropic_usage(completion.get("usage")),
    }


# --------------------------------------------------------------------------- errors


def error_type(err: BastionError) -> str:
    """Anthropic's error ``type`` for a Bastion error."""
    if err.code == "overloaded" or getattr(err, "upstream_status", None) == 529:
        return "overloaded_error"
    known = _ERROR_TYPES.get(err.status)
    if known:
        return known
    return "invalid_request_error" if 400 <= err.status < 500 else "api_error"


def error_body(err: BastionError) -> JSON:
    """An Anthropic error body for ``err`` (the HTTP status stays ``err.status``)."""
    return {"type": "error", "error": {"type": error_type(err), "message": err.message}}


def error_event(err: BastionError) -> Event:
    """An Anthropic ``error`` SSE event for a failure after the stream began."""
    return "error", error_body(err)
