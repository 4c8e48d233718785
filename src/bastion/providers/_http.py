"""Shared HTTP plumbing for provider adapters (aiohttp).

* :class:`PooledSession`: one keep-alive :class:`aiohttp.ClientSession` per provider,
  created lazily inside the running loop.
* :func:`post_json`: a whole non-streaming call (timeouts, status and transport
  errors mapped to :mod:`bastion.core.errors`, body parsed with orjson).
* :func:`open_sse` / :class:`SSEStream`: a streaming call yielding raw SSE events
  ``(event, data)`` with a per-read idle timeout; :class:`SSEDecoder` parses them.
* :func:`status_error`, :func:`parse_retry_after`, :func:`error_message`: classification.

Timeouts come from :class:`~bastion.providers.base.Timeouts`: ``connect`` (TCP/TLS),
``first_byte`` (until response headers), ``total`` (whole call), ``stream_idle`` (gap
between reads of a stream). Every wait on the upstream is added to ``ctx.upstream_s``.
Deadlines are enforced by :class:`Deadlines`, one coarse ticking task per event loop
(``TICK_S`` granularity) instead of a timer per await: the hot path then costs a set
insert per wait, which matters for streams (one wait per read).
Secrets given to these helpers are scrubbed from any upstream error text.
"""

from __future__ import annotations

import asyncio
import email.utils
import re
import time
from collections.abc import AsyncIterator, Awaitable, Iterable, Mapping
from functools import lru_cache
from typing import Any, TypeVar

import aiohttp
import orjson
from yarl import URL

from bastion.core.errors import (
    UpstreamClientError,
    UpstreamConnectError,
    UpstreamError,
    UpstreamFailure,
    UpstreamRateLimited,
    UpstreamTimeout,
)
from bastion.providers.base import CallContext

JSON = dict[str, Any]
SSEEvent = tuple[str, bytes]
"""``(event name or "", data)``; data lines are joined with ``\\n``."""

_KEYISH = re.compile(r"(sk-[\w\-*.]{3,}|Bearer\s+\S+)", re.IGNORECASE)
_MAX_MESSAGE = 500
_perf = time.perf_counter
T = TypeVar("T")
TICK_S = 0.02
"""Granularity of upstream deadlines (a timeout fires up to this late)."""


class _Wait:
    __slots__ = ("cancelling", "deadline", "fired", "task")

    def __init__(self, task: asyncio.Task[Any], deadline: float) -> None:
        self.task = task
        self.deadline = deadline
        self.cancelling = task.cancelling()
        self.fired = False


class Deadlines:
    """Timeouts for awaits on the upstream, checked by one ticking task per loop.

    ``await deadlines.wait(aw, deadline)`` raises :class:`TimeoutError` once
    ``loop.time()`` passes ``deadline`` (within ``TICK_S``), cancelling ``aw``
    like :func:`asyncio.timeout` would. The ticker stops itself when idle.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.armed: set[_Wait] = set()
        self._ticker: asyncio.Task[None] | None = None

    async def wait(self, aw: Awaitable[T], deadline: float | None) -> T:
        """Await ``aw``; past ``deadline`` (a ``loop.time()`` value) raise TimeoutError."""
        if deadline is None:
            return await aw
        task = asyncio.current_task()
        assert task is not None, "Deadlines.wait() must run inside a task"
        w = _Wait(task, deadline)
        self.armed.add(w)
        if self._ticker is None:
            self._ticker = self.loop.create_task(self._tick())
        try:
            return await aw
        except BaseException as exc:
            if not w.fired:
                raise
            # Our cancel: a timeout, unless the task was also cancelled from outside.
            outside = task.uncancel() > w.cancelling
            if outside and isinstance(exc, asyncio.CancelledError):
                raise
            raise TimeoutError from None
        finally:
            self.armed.discard(w)

    async def _tick(self) -> None:
        idle = 0
        try:
            while idle < 50:
                await asyncio.sleep(TICK_S)
                if not self.armed:
                    idle += 1
                    continue
                idle = 0
                now = self.loop.time()
                for w in [w for w in self.armed if w.deadline <= now]:
                    self.armed.discard(w)
                    w.fired = True
                    w.task.cancel()
        finally:
            self._ticker = None


_current: Deadlines | None = None


def deadlines() -> Deadlines:
    """The :class:`Deadlines` of the running loop."""
    global _current
    loop = asyncio.get_running_loop()
    current = _current
    if current is None or current.loop is not loop:
        current = _current = Deadlines(loop)
    return current


class PooledSession:
    """A lazily created, pooled keep-alive client session bound to one event loop.

    ``get()`` must be called inside a running loop; if the loop changed (tests that
    run several loops), a new session is made for the new loop.
    """

    def __init__(
        self,
        *,
        max_connections: int = 256,
        headers: Mapping[str, str] | None = None,
        keepalive_timeout: float = 30.0,
    ) -> None:
        self.max_connections = max_connections
        self.headers = dict(headers or {})
        self.keepalive_timeout = keepalive_timeout
        self._session: aiohttp.ClientSession | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def get(self) -> aiohttp.ClientSession:
        """The session of the running loop (created on first use)."""
        session = self._session
        loop = asyncio.get_running_loop()
        if session is not None and self._loop is loop and not session.closed:
            return session
        self._loop = loop
        connector = aiohttp.TCPConnector(
            limit=self.max_connections,
            limit_per_host=0,
            ttl_dns_cache=300,
            keepalive_timeout=self.keepalive_timeout,
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            headers=self.headers,
            cookie_jar=aiohttp.DummyCookieJar(),
            timeout=aiohttp.ClientTimeout(total=None),
            auto_decompress=True,
            trust_env=False,
        )
        return self._session

    async def aclose(self) -> None:
        """Close the session (if any) and its pooled connections."""
        session, self._session = self._session, None
        # A session of another (finished) loop cannot be awaited here: it is dropped.
        if session is not None and not session.closed and self._loop is asyncio.get_running_loop():
            await session.close()


@lru_cache(maxsize=64)
def _client_timeout(connect: float | None) -> aiohttp.ClientTimeout:
    return aiohttp.ClientTimeout(total=None, sock_connect=connect)


def _deadline(now: float, *limits: float | None) -> float | None:
    finite = [x for x in limits if x is not None]
    return now + min(finite) if finite else None


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """Remove known secrets and key-shaped tokens from upstream text."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return _KEYISH.sub("***", text)


def error_message(raw: bytes, status: int, secrets: Iterable[str] = ()) -> str:
    """The upstream's error message (OpenAI, Anthropic, vLLM shapes), redacted and capped."""
    message = ""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        message = raw[:_MAX_MESSAGE].decode("utf-8", "replace").strip()
    else:
        if isinstance(body, dict):
            err = body.get("error", body)
            if isinstance(err, dict):
                message = str(err.get("message") or err.get("detail") or "")
            elif isinstance(err, str):
                message = err
    message = redact(message or f"HTTP {status}", secrets)
    return message[:_MAX_MESSAGE]


def parse_retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds to wait from ``retry-after-ms`` or ``Retry-After`` (seconds or HTTP date)."""
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            return max(0.0, float(ms) / 1000.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def status_error(
    status: int, raw: bytes, headers: Mapping[str, str], secrets: Iterable[str] = ()
) -> UpstreamFailure:
    """Classify an upstream error status (see the table in ``providers/base.py``)."""
    message = error_message(raw, status, secrets)
    if status == 429:
        return UpstreamRateLimited(
            f"upstream rate limited: {message}",
            retry_after=parse_retry_after(headers),
            upstream_status=429,
        )
    if status >= 500 or status in (408, 409):
        return UpstreamError(
            f"upstream error {status}: {message}",
            upstream_status=status,
            retryable=True,
            retry_after=parse_retry_after(headers),
        )
    if 400 <= status < 500:
        return UpstreamClientError(message, upstream_status=status)
    return UpstreamError(
        f"unexpected upstream status {status}", upstream_status=status, retryable=False
    )


def transport_error(exc: BaseException, phase: str) -> UpstreamFailure:
    """Map an aiohttp / OS / timeout exception to an upstream error (never with secrets)."""
    if isinstance(exc, TimeoutError):
        if isinstance(exc, aiohttp.ServerTimeoutError):
            phase = "connect"
        return UpstreamTimeout(f"upstream timed out ({phase})")
    if isinstance(exc, aiohttp.ClientConnectorError):
        reason = exc.os_error.strerror or type(exc.os_error).__name__
        return UpstreamConnectError(f"cannot connect to upstream: {reason}")
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return UpstreamConnectError(f"upstream closed the connection ({phase})")
    if isinstance(exc, aiohttp.ClientPayloadError):
        return UpstreamConnectError(f"upstream connection lost ({phase})")
    if isinstance(exc, aiohttp.ClientOSError | OSError):
        return UpstreamConnectError(f"upstream connection failed ({phase})")
    return UpstreamError(f"upstream protocol error ({phase}): {type(exc).__name__}")


def loads_object(raw: bytes, what: str = "response") -> JSON:
    """Parse a JSON object from the upstream, or raise UpstreamError."""
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise UpstreamError(f"malformed JSON in upstream {what}") from None
    if not isinstance(obj, dict):
        raise UpstreamError(f"upstream {what} is not a JSON object")
    return obj


async def _post(
    session: aiohttp.ClientSession,
    url: URL,
    data: bytes,
    headers: Mapping[str, str] | None,
    ctx: CallContext,
    dl: Deadlines,
    now: float,
) -> aiohttp.ClientResponse:
    """Send the request and wait for the response headers (connect and first-byte limits)."""
    t = ctx.timeouts
    try:
        return await dl.wait(
            session.post(
                url,
                data=data,
                headers=headers,
                timeout=_client_timeout(t.connect),
                allow_redirects=False,
            ),
            _deadline(now, t.first_byte, t.total),
        )
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        raise transport_error(exc, "first byte") from None


async def post_bytes(
    session: aiohttp.ClientSession,
    url: URL,
    data: bytes,
    ctx: CallContext,
    *,
    headers: Mapping[str, str] | None = None,
    secrets: Iterable[str] = (),
) -> bytes:
    """POST ``data`` and return the raw 2xx body; errors mapped per the table."""
    dl = deadlines()
    now = dl.loop.time()
    start = _perf()
    try:
        resp = await _post(session, url, data, headers, ctx, dl, now)
        try:
            raw = await dl.wait(resp.read(), _deadline(now, ctx.timeouts.total))
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise transport_error(exc, "body") from None
        finally:
            resp.release()
    finally:
        ctx.upstream_s += _perf() - start
    if resp.status >= 300:
        raise status_error(resp.status, raw, resp.headers, secrets)
    return raw


async def post_json(
    session: aiohttp.ClientSession,
    url: URL,
    data: bytes,
    ctx: CallContext,
    *,
    headers: Mapping[str, str] | None = None,
    secrets: Iterable[str] = (),
) -> JSON:
    """POST ``data`` and return the JSON object answered; errors mapped per the table."""
    raw = await post_bytes(session, url, data, ctx, headers=headers, secrets=secrets)
    return loads_object(raw)


class SSEDecoder:
    """Incremental Server-Sent Events parser: ``feed(bytes) -> [(event, data)]``."""

    __slots__ = ("_buf", "_data", "_event")

    def __init__(self) -> None:
        self._buf = b""
        self._event = ""
        self._data: list[bytes] = []

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        """Parse a chunk; return the events it completed."""
        buf = self._buf + chunk if self._buf else chunk
        lines = buf.split(b"\n")
        self._buf = lines.pop()
        out: list[SSEEvent] = []
        for line in lines:
            if line.endswith(b"\r"):
                line = line[:-1]
            if not line:
                if self._data:
                    out.append((self._event, b"\n".join(self._data)))
                self._event, self._data = "", []
            elif line.startswith(b"data:"):
                value = line[5:]
                self._data.append(value[1:] if value.startswith(b" ") else value)
            elif line.startswith(b"event:"):
                self._event = line[6:].strip().decode("utf-8", "replace")
            # comments (":...") and other fields (id:, retry:) are ignored
        return out

    def flush(self) -> list[SSEEvent]:
        """Events left at end of stream (a last event without its blank line)."""
        out = self.feed(b"\n\n") if self._buf or self._data else []
        self._buf = b""
        return out


class SSEStream:
    """An open streaming response. Iterate :meth:`events`; then :meth:`finish` or :meth:`close`."""

    def __init__(
        self, resp: aiohttp.ClientResponse, ctx: CallContext, deadline: float | None
    ) -> None:
        self.resp = resp
        self.ctx = ctx
        self.deadline = deadline
        self.idle = ctx.timeouts.stream_idle

    async def _read(self, dl: Deadlines) -> bytes:
        start = _perf()
        deadline = self.deadline
        if self.idle is not None:
            idle_deadline = dl.loop.time() + self.idle
            if deadline is None or idle_deadline < deadline:
                deadline = idle_deadline
        try:
            return await dl.wait(self.resp.content.readany(), deadline)
        except TimeoutError:
            total = self.deadline is not None and dl.loop.time() >= self.deadline
            raise UpstreamTimeout(
                "upstream timed out (total)" if total else "upstream stream idle timeout"
            ) from None
        except (aiohttp.ClientError, OSError) as exc:
            raise transport_error(exc, "mid-stream") from None
        finally:
            self.ctx.upstream_s += _perf() - start

    async def events(self) -> AsyncIterator[SSEEvent]:
        """Yield ``(event, data)`` until the upstream ends the body."""
        dl = deadlines()
        decoder = SSEDecoder()
        while chunk := await self._read(dl):
            for event in decoder.feed(chunk):
                yield event
        for event in decoder.flush():
            yield event

    async def read_all(self) -> bytes:
        """The rest of the body (for a response that turned out not to be a stream)."""
        dl = deadlines()
        parts = []
        while chunk := await self._read(dl):
            parts.append(chunk)
        return b"".join(parts)

    async def finish(self, grace: float = 1.0) -> None:
        """Drain what is left (to keep the connection alive), then release it."""
        content = self.resp.content
        if not content.at_eof():
            dl = deadlines()
            deadline = dl.loop.time() + grace
            try:
                while await dl.wait(content.readany(), deadline):
                    pass
            except (aiohttp.ClientError, OSError, TimeoutError):
                self.resp.close()
                return
        self.resp.release()

    def close(self) -> None:
        """Drop the connection unless the body was read to the end."""
        if self.resp.content.at_eof():
            self.resp.release()
        else:
            self.resp.close()


async def open_sse(
    session: aiohttp.ClientSession,
    url: URL,
    data: bytes,
    ctx: CallContext,
    *,
    headers: Mapping[str, str] | None = None,
    secrets: Iterable[str] = (),
) -> SSEStream:
    """POST ``data`` and return the open event stream once its headers arrived.

    An error status, or a JSON body instead of a stream, raises (mapped per the table).
    """
    dl = deadlines()
    now = dl.loop.time()
    total = _deadline(now, ctx.timeouts.total)
    start = _perf()
    try:
        resp = await _post(session, url, data, headers, ctx, dl, now)
    finally:
        ctx.upstream_s += _perf() - start
    stream = SSEStream(resp, ctx, total)
    if resp.status < 300 and resp.content_type != "application/json":
        return stream  # text/event-stream, or a server that labels it oddly
    try:
        raw = await stream.read_all()
    finally:
        stream.close()
    if resp.status >= 300:
        raise status_error(resp.status, raw, resp.headers, secrets)
    body = loads_object(raw)
    if "error" in body:
        raise UpstreamError(f"upstream error: {error_message(raw, resp.status, secrets)}")
    raise UpstreamError(f"upstream answered {resp.content_type or 'no type'}, not a stream")
