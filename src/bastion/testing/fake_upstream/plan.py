"""What the fake upstream answers: request analysis and the reply plan.

:class:`Turn` reads what the fake needs from a chat request (model, last user text,
tool result, tools, prompt size); :class:`Plan` decides the reply from it and the
script step: text, tool call, finish reason and usage. See the package docs for
the default replies and the step fields.
"""

from __future__ import annotations

from typing import Any

import orjson

JSON = dict[str, Any]


def _text(content: Any) -> str:
    """The text of a message content: a string or a list of (text / tool_result) parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for p in content:
            if isinstance(p, dict):
                if isinstance(p.get("text"), str):
                    parts.append(p["text"])
                elif p.get("type") == "tool_result":
                    parts.append(_text(p.get("content")))
        return " ".join(parts)
    return ""


def word_count(text: str) -> int:
    return len(text.split())


class Turn:
    """What the fake needs to know about a chat request."""

    __slots__ = ("last_user", "model", "prompt_words", "system", "tool_result", "tools")

    def __init__(self, body: JSON, anthropic: bool) -> None:
        msgs = body.get("messages") or []
        self.model = str(body.get("model") or "fake-model")
        self.last_user = ""
        self.tool_result: str | None = None
        for m in reversed(msgs):
            if isinstance(m, dict) and m.get("role") == "user":
                self.last_user = _text(m.get("content"))
                break
        last = msgs[-1] if msgs and isinstance(msgs[-1], dict) else {}
        content = last.get("content")
        if last.get("role") == "tool" or (
            isinstance(content, list)
            and any(isinstance(p, dict) and p.get("type") == "tool_result" for p in content)
        ):
            self.tool_result = _text(content)
        words = sum(word_count(_text(m.get("content"))) for m in msgs if isinstance(m, dict))
        self.prompt_words = max(1, words + word_count(_text(body.get("system"))))
        systems = [
            _text(m.get("content"))
            for m in msgs
            if isinstance(m, dict) and m.get("role") in ("system", "developer")
        ]
        self.system = " ".join([_text(body.get("system")), *systems]).strip()
        self.tools: list[str] = []
        for t in body.get("tools") or []:
            if isinstance(t, dict):
                name = (t.get("function") or {}).get("name") if not anthropic else t.get("name")
                self.tools.append(str(name or "tool"))


def _from_schema(schema: Any, text: str) -> Any:
    """A small value that satisfies a JSON schema (enough for fake structured output)."""
    if not isinstance(schema, dict):
        return text
    if schema.get("enum"):
        return schema["enum"][0]
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object" or "properties" in schema:
        props = schema.get("properties") or {}
        return {k: _from_schema(v, text) for k, v in props.items()}
    scalars: JSON = {"string": text, "integer": 0, "number": 0, "boolean": True, "null": None}
    return [] if kind == "array" else scalars.get(str(kind), text)


class Plan:
    """The reply to send: text, tool call, finish reason and usage."""

    __slots__ = ("completion", "content", "finish", "prompt", "tool", "turn")

    def __init__(self, turn: Turn, body: JSON, step: JSON, anthropic: bool) -> None:
        self.turn = turn
        tool = step.get("tool_call")
        weather = "weather" in turn.last_user.lower()
        if tool is None and turn.tools and turn.tool_result is None and weather:
            tool = {"name": turn.tools[0], "arguments": {"location": "Paris"}}
        content: str | None = step.get("content")
        if step.get("echo") == "system":
            content = f"my instructions: {turn.system}"
        if content is None and tool is None:
            fmt = body.get("response_format") or {}
            if turn.tool_result is not None:
                content = f"tool result: {turn.tool_result}"
            elif fmt.get("type") == "json_object":
                content = orjson.dumps({"echo": turn.last_user}).decode()
            elif fmt.get("type") == "json_schema":
                schema = (fmt.get("json_schema") or {}).get("schema")
                content = orjson.dumps(_from_schema(schema, turn.last_user)).decode()
            else:
                content = f"echo: {turn.last_user}"
        self.finish = "tool_use" if anthropic else "tool_calls"
        if tool is None:
            self.finish = "end_turn" if anthropic else "stop"
        limit = body.get("max_completion_tokens") or body.get("max_tokens")
        if content and isinstance(limit, int) and tool is None and word_count(content) > limit:
            content = " ".join(content.split()[:limit])
            self.finish = "max_tokens" if anthropic else "length"
        self.finish = step.get("finish_reason", self.finish)
        self.tool: tuple[str, str] | None = None
        if tool is not None:
            args = tool.get("arguments", {})
            args = args if isinstance(args, str) else orjson.dumps(args).decode()
            self.tool = (str(tool.get("name") or "tool"), args)
        self.content = content
        self.prompt = turn.prompt_words
        self.completion = max(
            1, word_count(content or "") + (word_count(self.tool[1]) if self.tool else 0)
        )
        usage = step.get("usage") or {}
        self.prompt = int(usage.get("prompt_tokens", usage.get("input_tokens", self.prompt)))
        self.completion = int(
            usage.get("completion_tokens", usage.get("output_tokens", self.completion))
        )

    def pieces(self, text: str, n: int | None) -> list[str]:
        """Split reply text into stream chunks: by word, or into ``n`` slices."""
        if n is None:
            words = text.split(" ")
            return [w if i == 0 else " " + w for i, w in enumerate(words)]
        n = max(1, n)
        if len(text) < n and self.content == text:  # too short: pad with filler words
            return self.pieces(text + "".join(f" w{i}" for i in range(n)), None)[:n]
        size = -(-len(text) // n)
        return [text[i * size : (i + 1) * size] for i in range(n)]
