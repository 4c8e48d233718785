"""Canonical request and response types.

Bastion's canonical wire format is OpenAI's chat completions format: every
provider adapter translates *to* it and *from* it, and the Anthropic
``/v1/messages`` front door translates into it. Requests are validated at the
edge with pydantic (unknown provider-specific fields are kept and passed on);
responses are plain JSON dicts in OpenAI's shape (``chat.completion`` and
``chat.completion.chunk``), which avoids a second object model on the hot path.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr

JSON = dict[str, Any]
"""A JSON object in OpenAI's shape (a completion, a chunk, an embeddings list)."""


class Message(BaseModel):
    """One chat message. ``content`` is a string or a list of content parts."""

    model_config = ConfigDict(extra="allow")

    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")

    include_usage: bool = False


class ChatRequest(BaseModel):
    """``POST /v1/chat/completions`` body. Extra fields pass through to upstreams."""

    model_config = ConfigDict(extra="allow")

    model: str = Field(min_length=1)
    messages: list[Message] = Field(min_length=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    n: int | None = Field(default=None, ge=1, le=1)
    stop: str | list[str] | None = None
    seed: int | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    response_format: dict[str, Any] | None = None
    user: str | None = None
    metadata: dict[str, Any] | None = None
    _raw: JSON | None = PrivateAttr(default=None)

    @classmethod
    def from_body(cls, body: JSON) -> ChatRequest:
        """Validate a client's body, keeping it verbatim for OpenAI-compatible upstreams."""
        req = cls.model_validate(body)
        req._raw = body
        return req

    def output_limit(self) -> int | None:
        """The caller's cap on generated tokens, whichever field carried it."""
        return self.max_completion_tokens or self.max_tokens

    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)

    def upstream_body(self, model: str) -> JSON:
        """The body to send an OpenAI-compatible upstream, with its model name.

        A request parsed with :meth:`from_body` passes through as the client sent
        it (cheaper than re-serialising, and faithful to fields Bastion does not
        model); others are dumped from their fields.
        """
        if self._raw is not None:
            body = dict(self._raw)
            body["model"] = model
            return body
        body = self.model_dump(exclude_none=True, exclude_unset=True)
        body["model"] = model
        return body


class EmbeddingRequest(BaseModel):
    """``POST /v1/embeddings`` body."""

    model_config = ConfigDict(extra="allow")

    model: str = Field(min_length=1)
    input: str | list[str] | list[int] | list[list[int]]
    encoding_format: Literal["float", "base64"] | None = None
    dimensions: int | None = Field(default=None, ge=1)
    user: str | None = None

    def texts(self) -> list[str]:
        """The input as a list of strings (token-id inputs are rejected upstream-side)."""
        if isinstance(self.input, str):
            return [self.input]
        return [x for x in self.input if isinstance(x, str)]

    def upstream_body(self, model: str) -> JSON:
        body = self.model_dump(exclude_none=True, exclude_unset=True)
        body["model"] = model
        return body


class RerankRequest(BaseModel):
    """``POST /v1/rerank`` body (Cohere / Jina shape)."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1)
    query: str = Field(min_length=1)
    documents: list[str | dict[str, Any]] = Field(min_length=1, max_length=1000)
    top_n: int | None = Field(default=None, ge=1)
    return_documents: bool = False

    def texts(self) -> list[str]:
        """The documents as strings (an object document gives its ``text``)."""
        return [d if isinstance(d, str) else str(d.get("text", "")) for d in self.documents]


def usage_of(body: JSON | None) -> tuple[int, int]:
    """``(prompt_tokens, completion_tokens)`` of a completion or chunk, 0 when absent."""
    usage = (body or {}).get("usage") or {}
    return int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)
