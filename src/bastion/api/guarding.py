"""Guardrails around a chat request: input before the call, output after it.

:func:`guard_input` scans the request's user and system messages (kind
``input``) and tool results (kind ``tool_output``) with the model's pipeline:
a block raises ``content_blocked``; redactions rewrite the messages (the
upstream never sees the values); a canary is planted in the system prompt
when the pipeline asks for one. :func:`guard_completion` scans the answer's
text and tool-call arguments (kind ``output``), blocks canary leaks, checks a
``json_schema`` response format (the caller re-asks once), and puts redacted
values back when the pipeline restores them. :func:`guard_stream` does the
same on a stream, window by window (:class:`~bastion.guard.stream.StreamGuard`).

Scanning is CPU work: texts over :data:`INLINE_CHARS` are scanned in a worker
thread so one long document does not stall every other request.
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from typing import Any

from bastion.core.errors import ContentBlocked
from bastion.core.types import JSON, ChatRequest
from bastion.guard.base import ScanContext
from bastion.guard.output import (
    CanaryScanner,
    canary_instruction,
    new_canary,
    reask_message,
    validate_json,
)
from bastion.guard.pipeline import Pipeline, Redactions, Verdict
from bastion.guard.stream import StreamGuard
from bastion.telemetry.metrics import Metrics

INLINE_CHARS = 4000
_INPUT_ROLES = {"system", "developer", "user"}


@dataclass
class GuardState:
    """One request's guard context."""

    pipeline: Pipeline
    ctx: ScanContext
    metrics: Metrics | None = None
    red: Redactions = field(default_factory=Redactions)
    canary: CanaryScanner | None = None
    findings: list[str] = field(default_factory=list)

    @property
    def trusted_ctx(self) -> ScanContext:
        """The context for the application's own system prompt (no injection scan)."""
        return replace(self.ctx, extra={**self.ctx.extra, "trusted": True})

    def record(self, kind: str, verdict: Verdict) -> None:
        for f, action in verdict.findings:
            self.findings.append(f"{kind}:{f.scanner}:{f.category}:{action}")
            if self.metrics is not None:
                self.metrics.guard(kind, f.scanner, f.category, action)


async def _scan(state: GuardState, text: str, kind: str, trusted: bool = False) -> Verdict:
    ctx = state.trusted_ctx if trusted else state.ctx
    if len(text) > INLINE_CHARS:
        verdict = await asyncio.to_thread(state.pipeline.scan, text, kind, ctx, state.red)
    else:
        verdict = state.pipeline.scan(text, kind, ctx, state.red)
    state.record(kind, verdict)
    verdict.raise_if_blocked(kind)
    return verdict


async def _scan_content(
    state: GuardState, content: Any, kind: str, trusted: bool = False
) -> tuple[Any, bool]:
    """A message content (string or parts) scanned; returns (new content, changed)."""
    if isinstance(content, str):
        v = await _scan(state, content, kind, trusted)
        return v.text, v.text != content
    if isinstance(content, list):
        changed = False
        parts = []
        for part in content:
            if isinstance(part, dict) and isinstance(part.get("text"), str):
                v = await _scan(state, part["text"], kind, trusted)
                if v.text != part["text"]:
                    part, changed = {**part, "text": v.text}, True
            parts.append(part)
        return parts, changed
    return content, False


async def guard_input(state: GuardState, req: ChatRequest) -> ChatRequest:
    """The request as the upstream may see it (or ``content_blocked``)."""
    p = state.pipeline
    if not (p.has("input") or p.has("tool_output") or p.cfg.canary):
        return req
    messages = [m.model_dump(exclude_none=True) for m in req.messages]
    changed = False
    for m in messages:
        role = m.get("role")
        kind = "input" if role in _INPUT_ROLES else "tool_output" if role == "tool" else None
        if kind is None or not p.has(kind) or m.get("content") is None:
            continue
        trusted = role in ("system", "developer")
        m["content"], did = await _scan_content(state, m["content"], kind, trusted)
        changed = changed or did
    if p.cfg.canary:
        canary = new_canary()
        state.canary = CanaryScanner(canary)
        line = canary_instruction(canary)
        if (
            messages
            and messages[0].get("role") in ("system", "developer")
            and isinstance(messages[0].get("content"), str)
        ):
            messages[0]["content"] = f"{messages[0]['content']}\n\n{line}"
        else:
            messages.insert(0, {"role": "system", "content": line})
        changed = True
    state.red.mark_restorable()
    if not changed:
        return req
    raw = req._raw if req._raw is not None else req.model_dump(exclude_none=True)
    return ChatRequest.from_body({**raw, "messages": messages})


def _canary_check(state: GuardState, text: str) -> None:
    if state.canary is not None and state.canary.scan(text, state.ctx):
        state.findings.append("output:canary:system_prompt_leak:block")
        if state.metrics is not None:
            state.metrics.guard("output", "canary", "system_prompt_leak", "block")
        raise ContentBlocked(
            "output blocked by guardrails: canary:system_prompt_leak",
            reasons=["canary:system_prompt_leak"],
        )


async def guard_completion(state: GuardState, completion: JSON) -> JSON:
    """The answer as the caller may see it (or ``content_blocked``)."""
    p = state.pipeline
    out = copy.deepcopy(completion)
    for choice in out.get("choices") or []:
        msg = choice.get("message") or {}
        content = msg.get("content")
        if isinstance(content, str) and content:
            _canary_check(state, content)
            if p.has("output"):
                content = (await _scan(state, content, "output")).text
            msg["content"] = state.red.restore(content) if p.cfg.restore else content
        for call in msg.get("tool_calls") or []:
            fn = call.get("function") or {}
            args = fn.get("arguments")
            if isinstance(args, str) and args:
                _canary_check(state, args)
                if p.has("output"):
                    fn["arguments"] = (await _scan(state, args, "output")).text
    return out


def schema_problems(req: ChatRequest, completion: JSON) -> list[str]:
    """Problems of a ``json_schema`` / ``json_object`` answer (empty when fine or n/a)."""
    fmt = req.response_format
    if not fmt or fmt.get("type") not in ("json_schema", "json_object"):
        return []
    choices = completion.get("choices") or []
    content = (choices[0].get("message") or {}).get("content") if choices else None
    if not isinstance(content, str):
        return ["the answer has no text"]
    return validate_json(content, fmt)


async def guard_stream(state: GuardState, chunks: AsyncIterator[JSON]) -> AsyncIterator[JSON]:
    """``chunks`` with their text released window by window after scanning."""
    p = state.pipeline
    sg = StreamGuard(p, state.ctx, state.red, window=p.cfg.stream_window, restore=p.cfg.restore)
    seen = ""
    async for chunk in chunks:
        choices = chunk.get("choices") or []
        delta = (choices[0].get("delta") or {}) if choices else {}
        text = delta.get("content")
        if isinstance(text, str) and text:
            if state.canary is not None:
                seen = (seen + text)[-512:]
                _canary_check(state, seen)
            released = sg.feed(text) if p.has("output") else text
            if not released:
                continue
            yield _with_text(chunk, released)
            continue
        if choices and choices[0].get("finish_reason") and p.has("output"):
            rest = sg.flush()
            if rest:
                yield _with_text(chunk, rest, finish=False)
        yield chunk
    rest = sg.flush() if p.has("output") else ""
    if rest:
        yield {
            "object": "chat.completion.chunk",
            "choices": [{"index": 0, "delta": {"content": rest}}],
        }


def _with_text(chunk: JSON, text: str, *, finish: bool = True) -> JSON:
    choice = dict(chunk["choices"][0])
    choice["delta"] = {**(choice.get("delta") or {}), "content": text}
    if not finish:
        choice["finish_reason"] = None
        choice["delta"] = {"content": text}
    return {**chunk, "choices": [choice, *chunk["choices"][1:]]}


def state_for(
    pipeline: Pipeline | None, tenant: str | None, model: str, metrics: Metrics | None
) -> GuardState | None:
    if pipeline is None:
        return None
    return GuardState(pipeline, ScanContext("input", tenant, model), metrics)


def reask(req: ChatRequest, completion: JSON, problems: list[str]) -> ChatRequest:
    """The request again, with the invalid answer and a request to fix it appended."""
    choices = completion.get("choices") or []
    answer = (choices[0].get("message") or {}).get("content") if choices else ""
    raw = req._raw if req._raw is not None else req.model_dump(exclude_none=True)
    messages = [
        *raw["messages"],
        {"role": "assistant", "content": answer or ""},
        reask_message(problems),
    ]
    return ChatRequest.from_body({**raw, "messages": messages})
