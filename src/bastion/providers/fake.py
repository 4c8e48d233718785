"""An in-process fake provider for unit tests and demos.

It implements the real :class:`~bastion.providers.base.Provider` protocol:
it echoes the last user message, streams word by word, returns deterministic
embeddings, and can be told to fail (``fail_next``) with any Bastion error.
Integration tests use the out-of-process HTTP fake in
:mod:`bastion.testing.fake_upstream` instead.
"""

from __future__ import annotations

import hashlib
import time
from collections import deque
from collections.abc import AsyncIterator

from bastion.core.errors import BastionError
from bastion.core.types import JSON, ChatRequest, EmbeddingRequest
from bastion.providers.base import CallContext


def _last_user_text(request: ChatRequest) -> str:
    for m in reversed(request.messages):
        if m.role == "user":
            if isinstance(m.content, str):
                return m.content
            return " ".join(str(p.get("text", "")) for p in m.content or [])
    return ""


class FakeProvider:
    """Echoes; fails on demand."""

    type = "fake"

    def __init__(self, name: str = "fake") -> None:
        self.name = name
        self.failures: deque[BastionError] = deque()
        self.calls = 0

    def fail_next(self, *errors: BastionError) -> None:
        self.failures.extend(errors)

    def _maybe_fail(self) -> None:
        self.calls += 1
        if self.failures:
            raise self.failures.popleft()

    async def chat(self, request: ChatRequest, model: str, ctx: CallContext) -> JSON:
        self._maybe_fail()
        text = "echo: " + _last_user_text(request)
        n_in, n_out = (
            sum(len(str(m.content or "").split()) for m in request.messages),
            len(text.split()),
        )
        return {
            "id": "chatcmpl-fake",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "finish_reason": "stop",
                }
            ],
            "usage": {
                "prompt_tokens": n_in,
                "completion_tokens": n_out,
                "total_tokens": n_in + n_out,
            },
        }

    async def chat_stream(
        self, request: ChatRequest, model: str, ctx: CallContext
    ) -> AsyncIterator[JSON]:
        self._maybe_fail()
        words = ("echo: " + _last_user_text(request)).split(" ")
        base = {
            "id": "chatcmpl-fake",
            "object": "chat.completion.chunk",
            "model": model,
            "created": int(time.time()),
        }
        yield {**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]}
        for i, w in enumerate(words):
            piece = w if i == 0 else " " + w
            yield {**base, "choices": [{"index": 0, "delta": {"content": piece}}]}
        yield {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
        yield {
            **base,
            "choices": [],
            "usage": {
                "prompt_tokens": 1,
                "completion_tokens": len(words),
                "total_tokens": 1 + len(words),
            },
        }

    async def embed(self, request: EmbeddingRequest, model: str, ctx: CallContext) -> JSON:
        self._maybe_fail()
        data = []
        for i, text in enumerate(request.texts()):
            digest = hashlib.sha256(text.encode()).digest()
            vec = [b / 255.0 for b in digest[: request.dimensions or 8]]
            data.append({"object": "embedding", "index": i, "embedding": vec})
        n = sum(len(t.split()) for t in request.texts())
        return {
            "object": "list",
            "data": data,
            "model": model,
            "usage": {"prompt_tokens": n, "total_tokens": n},
        }

    async def aclose(self) -> None:
        return None
