"""Streaming half of the Anthropic front door: ``chat.completion.chunk`` -> Anthropic SSE.

:class:`MessagesStreamTranslator` turns a canonical (OpenAI chat) chunk stream into
Anthropic's event sequence (``message_start``, ``content_block_*``, ``message_delta``,
``message_stop``). The helpers it shares with the non-streaming conversion in
:mod:`.anthropic_format` (stop reasons, usage, ids) live here too; that module
re-exports the translator, so ``from bastion.providers.anthropic_format import
MessagesStreamTranslator`` keeps working.
"""

from __future__ import annotations

import uuid
from typing import Any

from bastion.core.types import JSON

Event = tuple[str, JSON]
"""One Anthropic SSE event: ``(event name, data object)``."""

STOP_REASONS = {  # OpenAI finish_reason -> Anthropic stop_reason
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}


def new_message_id() -> str:
    """A fresh Anthropic-style message id (``msg_...``)."""
    return f"msg_{uuid.uuid4().hex[:24]}"


def new_tool_use_id() -> str:
    """A fresh Anthropic-style tool-use id (``toolu_...``)."""
    return f"toolu_{uuid.uuid4().hex[:24]}"


def anthropic_usage(usage: Any) -> JSON:
    """OpenAI ``usage`` as Anthropic's (cached prompt tokens reported apart)."""
    usage = usage if isinstance(usage, dict) else {}
    prompt = int(usage.get("prompt_tokens") or 0)
    details = usage.get("prompt_tokens_details") or {}
    cached = int(details.get("cached_tokens") or 0) if isinstance(details, dict) else 0
    out: JSON = {
        "input_tokens": max(prompt - cached, 0),
        "output_tokens": int(usage.get("completion_tokens") or 0),
    }
    if cached:
        out["cache_read_input_tokens"] = cached
    return out


class MessagesStreamTranslator:
    """Turns a ``chat.completion.chunk`` stream into Anthropic's SSE event sequence.

    Feed every chunk to :meth:`feed` and send the events it returns in order, then
    send those of :meth:`finish`. Text and each tool call get their own content
    block; a block is closed before the next one opens, as Anthropic does.
    """

    def __init__(self, model: str, message_id: str | None = None) -> None:
        self.model = model
        self.message_id = message_id or new_message_id()
        self._started = False
        self._finished = False
        self._index = -1  # the open block's index, -1 when none is open
        self._open: str | None = None  # "text" or "tool:<openai index>"
        self._blocks = 0
        self._tool_blocks: dict[int, int] = {}  # OpenAI tool_call index -> block index
        self._finish_reason: str | None = None
        self._input_tokens = 0
        self._output_tokens = 0
        self._cached_tokens = 0

    def _start(self, events: list[Event]) -> None:
        if self._started:
            return
        self._started = True
        usage = {"input_tokens": self._input_tokens, "output_tokens": 0}
        message: JSON = {
            "id": self.message_id,
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": usage,
        }
        events.append(("message_start", {"type": "message_start", "message": message}))

    def _close(self, events: list[Event]) -> None:
        if self._open is not None:
            events.append(
                ("content_block_stop", {"type": "content_block_stop", "index": self._index})
            )
            self._open = None

    def _open_block(self, events: list[Event], kind: str, block: JSON) -> int:
        self._close(events)
        self._index = self._blocks
        self._blocks += 1
        self._open = kind
        events.append(
            (
                "content_block_start",
                {"type": "content_block_start", "index": self._index, "content_block": block},
            )
        )
        return self._index

    def _delta(self, events: list[Event], index: int, delta: JSON) -> None:
        events.append(
            ("content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta})
        )

    def _record_usage(self, usage: Any) -> None:
        if not isinstance(usage, dict):
            return
        converted = anthropic_usage(usage)
        self._input_tokens = converted["input_tokens"]
        self._output_tokens = converted["output_tokens"]
        self._cached_tokens = converted.get("cache_read_input_tokens", 0)

    def _tool_call(self, events: list[Event], call: JSON) -> None:
        openai_index = int(call.get("index") or 0)
        function = call.get("function") or {}
        block = self._tool_blocks.get(openai_index)
        if block is None:
            content_block: JSON = {
                "type": "tool_use",
                "id": call.get("id") or new_tool_use_id(),
                "name": function.get("name") or "",
                "input": {},
            }
            block = self._open_block(events, f"tool:{openai_index}", content_block)
            self._tool_blocks[openai_index] = block
        arguments = function.get("arguments")
        if arguments:
            # Fragments of an earlier (already closed) call keep its index; the SDKs
            # accumulate by index, and OpenAI upstreams practically never interleave.
            self._delta(events, block, {"type": "input_json_delta", "partial_json": arguments})

    def feed(self, chunk: JSON) -> list[Event]:
        """The Anthropic events for one ``chat.completion.chunk``."""
        events: list[Event] = []
        if self._finished:
            return events
        self._record_usage(chunk.get("usage"))
        self._start(events)
        for choice in chunk.get("choices") or []:
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or {}
            text = delta.get("content") or delta.get("refusal")
            if isinstance(text, str) and text:
                if self._open != "text":
                    self._open_block(events, "text", {"type": "text", "text": ""})
                self._delta(events, self._index, {"type": "text_delta", "text": text})
            for call in delta.get("tool_calls") or []:
                if isinstance(call, dict):
                    self._tool_call(events, call)
            if choice.get("finish_reason"):
                self._finish_reason = choice["finish_reason"]
        return events

    def finish(self) -> list[Event]:
        """The closing events: the open block's stop, ``message_delta``, ``message_stop``."""
        events: list[Event] = []
        if self._finished:
            return events
        self._start(events)
        self._close(events)
        self._finished = True
        stop_reason = STOP_REASONS.get(self._finish_reason or "stop", "end_turn")
        if stop_reason == "end_turn" and self._tool_blocks:
            stop_reason = "tool_use"
        usage: JSON = {"output_tokens": self._output_tokens}
        if self._input_tokens:
            usage["input_tokens"] = self._input_tokens
        if self._cached_tokens:
            usage["cache_read_input_tokens"] = self._cached_tokens
        events.append(
            (
                "message_delta",
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": stop_reason, "stop_sequence": None},
                    "usage": usage,
                },
            )
        )
        events.append(("message_stop", {"type": "message_stop"}))
        return events
