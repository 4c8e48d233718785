"""Minimal ASGI request/response plumbing for the hot path.

The gateway's own endpoints are a handful of JSON and SSE routes whose
overhead budget is a fraction of a millisecond, so they speak ASGI directly
(measured against Starlette's Request/Response in ``bench/gateway``): a
:class:`Request` with lower-cased headers and a size-limited body reader, and
``send_*`` helpers for JSON bodies and server-sent events.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import orjson

from bastion.core.errors import InvalidRequest, RequestTooLarge

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

JSON_HEADERS = [(b"content-type", b"application/json")]
SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]


class Request:
    """One HTTP request: method, path, lower-cased headers, lazily read body."""

    __slots__ = ("_body", "headers", "method", "path", "query", "receive", "scope")

    def __init__(self, scope: Scope, receive: Receive) -> None:
        self.scope = scope
        self.receive = receive
        self.method: str = scope["method"]
        self.path: str = scope["path"]
        self.query: bytes = scope.get("query_string", b"")
        self.headers: dict[str, str] = {
            k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]
        }
        self._body: bytes | None = None

    async def body(self, limit: int) -> bytes:
        """The whole body; ``RequestTooLarge`` past ``limit`` bytes (checked early)."""
        if self._body is not None:
            return self._body
        declared = self.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise RequestTooLarge(f"request body is larger than {limit} bytes")
        chunks: list[bytes] = []
        size = 0
        while True:
            msg = await self.receive()
            if msg["type"] == "http.disconnect":
                raise asyncio.CancelledError
            chunk = msg.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise RequestTooLarge(f"request body is larger than {limit} bytes")
            chunks.append(chunk)
            if not msg.get("more_body", False):
                break
        self._body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        return self._body

    async def json(self, limit: int) -> dict[str, Any]:
        """The body as a JSON object, or ``InvalidRequest``."""
        raw = await self.body(limit)
        if not raw:
            raise InvalidRequest("request body is empty; expected a JSON object")
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise InvalidRequest(f"request body is not valid JSON: {exc.msg}") from None
        if not isinstance(data, dict):
            raise InvalidRequest("request body must be a JSON object")
        return data


async def send_json(
    send: Send,
    status: int,
    payload: bytes,
    headers: list[tuple[bytes, bytes]] | None = None,
) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                *JSON_HEADERS,
                (b"content-length", str(len(payload)).encode()),
                *(headers or ()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload})


async def send_bytes(
    send: Send, status: int, payload: bytes, content_type: bytes, headers: list[tuple[bytes, bytes]]
) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", content_type),
                (b"content-length", str(len(payload)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload})


def dumps(obj: Any) -> bytes:
    return orjson.dumps(obj)


def sse_data(obj: Any) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


def sse_event(name: str, obj: Any) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(obj) + b"\n\n"


async def wait_disconnect(receive: Receive) -> None:
    """Return when the client goes away (the body has been read already)."""
    while True:
        msg = await receive()
        if msg["type"] == "http.disconnect":
            return
