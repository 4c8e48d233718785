"""The HTTP :class:`~bastion.evals.types.ModelClient`: evals call models through a gateway.

:class:`HttpModelClient` speaks the OpenAI wire format over ``httpx`` to a
Bastion gateway, either a running server (``base_url`` = its address) or the
gateway running in this process (an ``httpx.ASGITransport`` over the app), so
every eval call passes budgets, guardrails, the cache, usage rows and the audit
log like any other request. It also calls any other OpenAI-compatible server
(the ``http`` target).

Error answers (``{"error": {"message", "type", "code"}}``) come back as the
matching :class:`~bastion.core.errors.BastionError` subclass, chosen by
``code`` (then by status), carrying the server's message, status and
``Retry-After``. Connection failures raise
:class:`~bastion.core.errors.UpstreamConnectError`, timeouts
:class:`~bastion.core.errors.UpstreamTimeout`. :func:`is_transient` says
which of them are worth retrying.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from functools import cache
from typing import Any

import httpx
import orjson

from bastion.core import errors as E
from bastion.core.errors import BastionError
from bastion.evals.types import JSON, ChatResult

COST_HEADER = "x-bastion-cost-usd"
CACHE_HEADER = "x-bastion-cache"
# 429s and 5xx are worth another try, except a hard budget (it stays spent)
_NOT_TRANSIENT = frozenset({"budget_exceeded", "content_blocked", "invalid_request"})

_BY_STATUS: dict[int, type[BastionError]] = {
    400: E.InvalidRequest,
    401: E.AuthenticationError,
    403: E.PermissionDenied,
    404: E.NotFound,
    409: E.Conflict,
    413: E.RequestTooLarge,
    422: E.InvalidOutput,
    429: E.RateLimited,
    502: E.UpstreamError,
    503: E.Overloaded,
    504: E.UpstreamTimeout,
}


def _subclasses(cls: type[BastionError]) -> list[type[BastionError]]:
    out = [cls]
    for sub in cls.__subclasses__():
        out.extend(_subclasses(sub))
    return out


@cache
def _by_code() -> dict[str, type[BastionError]]:
    """Every error class of :mod:`bastion.core.errors` by its ``code`` (first one wins)."""
    table: dict[str, type[BastionError]] = {}
    for cls in _subclasses(BastionError):
        if cls.__module__ == E.__name__ and cls is not E.AllRoutesFailed:
            table.setdefault(cls.code, cls)
    return table


def _retry_after(headers: httpx.Headers) -> float | None:
    raw = headers.get("retry-after")
    if raw is None:
        return None
    try:
        return max(0.0, float(raw))
    except ValueError:
        return None  # an HTTP date: rare from gateways; back off normally


def error_from_response(status: int, body: Any, headers: httpx.Headers) -> BastionError:
    """The :class:`BastionError` an error answer stands for (never raises)."""
    err = body.get("error") if isinstance(body, dict) else None
    if isinstance(err, dict):
        message = str(err.get("message") or f"HTTP {status}")
        code = str(err.get("code") or "")
        param = err.get("param") if isinstance(err.get("param"), str) else None
    else:
        message = (err if isinstance(err, str) else None) or f"HTTP {status}"
        code, param = "", None
    ra = _retry_after(headers)
    cls = _by_code().get(code) or _BY_STATUS.get(status)
    if cls is None:
        cls = E.UpstreamError if status >= 500 else E.InvalidRequest
    exc = _construct(cls, message, status=status, retry_after=ra, param=param)
    exc.status = status
    if code and exc.code != code:
        exc.code = code  # keep the server's code (a subclass this version does not know)
    return exc


def _construct(
    cls: type[BastionError], message: str, *, status: int, retry_after: float | None, param: Any
) -> BastionError:
    if issubclass(cls, E.UpstreamClientError):
        return cls(message, upstream_status=status)
    if issubclass(cls, E.UpstreamFailure):
        return cls(message, retry_after=retry_after)
    if issubclass(cls, E.ContentBlocked):
        return cls(message)
    if issubclass(cls, E.PolicyError):
        return E.InvalidRequest(message, param=param)
    return cls(message, param=param, retry_after=retry_after)


def is_transient(exc: BaseException) -> bool:
    """Whether retrying the same call later may succeed.

    Yes for rate limits (429 other than ``budget_exceeded``), 408, 5xx,
    connection failures and timeouts; no for budgets, blocked content,
    invalid requests, auth and anything that is not a :class:`BastionError`.
    """
    if not isinstance(exc, BastionError):
        return False
    if exc.code in _NOT_TRANSIENT or isinstance(exc, E.BudgetExceeded | E.ContentBlocked):
        return False
    if isinstance(exc, E.UpstreamConnectError | E.UpstreamTimeout):
        return True
    return exc.status in (408, 429) or exc.status >= 500


class AiohttpTransport(httpx.AsyncBaseTransport):
    """An httpx transport over a pooled aiohttp session (the default for real servers).

    httpx's own pool costs several milliseconds of CPU per request at 32
    requests in flight (its connection assignment is quadratic), which made the
    client, not the gateway, the bottleneck of an eval; aiohttp's pool costs a
    fraction of one. Errors come out as the httpx exceptions they stand for.
    """

    def __init__(self, *, max_connections: int = 64) -> None:
        self.max_connections = max_connections
        self._session: Any = None  # aiohttp.ClientSession, created in the running loop

    def _get(self) -> Any:
        import aiohttp

        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(
                limit=self.max_connections, limit_per_host=0, ttl_dns_cache=300
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                cookie_jar=aiohttp.DummyCookieJar(),
                timeout=aiohttp.ClientTimeout(total=None),
                auto_decompress=False,  # httpx decodes, by the content-encoding header
                trust_env=False,
            )
        return self._session

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        import aiohttp

        t: dict[str, float | None] = request.extensions.get("timeout") or {}
        timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=t.get("connect"), sock_read=t.get("read")
        )
        body = await request.aread()
        try:
            async with self._get().request(
                request.method,
                str(request.url),
                headers=request.headers.multi_items(),
                data=body or None,
                timeout=timeout,
                allow_redirects=False,
            ) as resp:
                content = await resp.read()
                headers = list(resp.raw_headers)
                status = resp.status
        except (aiohttp.ServerTimeoutError, TimeoutError) as exc:
            raise httpx.ReadTimeout(str(exc) or "timed out", request=request) from exc
        except aiohttp.ClientConnectorError as exc:
            raise httpx.ConnectError(str(exc), request=request) from exc
        except aiohttp.ClientError as exc:
            raise httpx.ReadError(str(exc) or type(exc).__name__, request=request) from exc
        return httpx.Response(status, headers=headers, content=content, request=request)

    async def aclose(self) -> None:
        session, self._session = self._session, None
        if session is not None and not session.closed:
            await session.close()


def _api_root(url: str, openai_base: bool) -> str:
    url = url.rstrip("/")
    return url if openai_base or url.endswith("/v1") else url + "/v1"


class HttpModelClient:
    """A :class:`~bastion.evals.types.ModelClient` over HTTP (pooled, async).

    ``base_url`` is a Bastion address (``http://host:8080`` or ``.../v1``);
    with ``openai_base=True`` it is taken as an OpenAI API root as is (an
    external server whose root does not end in ``/v1``). ``transport`` lets a
    caller pass an ``httpx.ASGITransport`` to reach an in-process app; the
    default is :class:`AiohttpTransport`.
    """

    def __init__(
        self,
        base_url: str,
        api_key: str | None,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        headers: Mapping[str, str] | None = None,
        timeout_s: float = 120,
        max_connections: int = 64,
        openai_base: bool = False,
    ) -> None:
        self.root = _api_root(base_url, openai_base)
        self.origin = self.root.removesuffix("/v1")
        self._headers = {k: v for k, v in (headers or {}).items() if k.lower() != "authorization"}
        self._shared_transport = transport  # an in-process app's: siblings may share it
        self._timeout_s, self._max_connections = timeout_s, max_connections
        hdrs = {"content-type": "application/json", **self._headers}
        if api_key:
            hdrs["authorization"] = f"Bearer {api_key}"
        self._http = httpx.AsyncClient(
            transport=transport or AiohttpTransport(max_connections=max_connections),
            headers=hdrs,
            timeout=httpx.Timeout(timeout_s, connect=min(10.0, timeout_s)),
            limits=httpx.Limits(
                max_connections=max_connections, max_keepalive_connections=max_connections
            ),
        )

    def _url(self, path: str) -> str:
        if path.startswith("/v1/"):
            return self.root + path[3:]
        return self.origin + (path if path.startswith("/") else "/" + path)

    async def _send(self, url: str, body: JSON) -> tuple[httpx.Response, Any, float]:
        t0 = time.perf_counter()
        try:
            resp = await self._http.post(url, content=orjson.dumps(body))
        except httpx.TimeoutException as exc:
            raise E.UpstreamTimeout(f"timed out calling {url}: {type(exc).__name__}") from None
        except httpx.TransportError as exc:
            raise E.UpstreamConnectError(
                f"cannot reach {url}: {exc or type(exc).__name__}"
            ) from None
        latency = time.perf_counter() - t0
        try:
            data: Any = orjson.loads(resp.content) if resp.content else None
        except orjson.JSONDecodeError:
            data = None
        if resp.status_code >= 400:
            if data is None:
                data = {"error": resp.text[:300] or None}
            raise error_from_response(resp.status_code, data, resp.headers)
        if not isinstance(data, dict):
            raise E.UpstreamError(f"{url} answered {resp.status_code} without a JSON object")
        return resp, data, latency

    async def chat(self, body: JSON) -> ChatResult:
        """POST ``/v1/chat/completions``; error answers raise :class:`BastionError`."""
        resp, data, latency = await self._send(self.root + "/chat/completions", body)
        cost: float | None = None
        if (raw := resp.headers.get(COST_HEADER)) is not None:
            try:
                cost = float(raw)
            except ValueError:
                cost = None
        if cost is None:
            usage = data.get("usage")
            if isinstance(usage, dict) and isinstance(usage.get("cost_usd"), int | float):
                cost = float(usage["cost_usd"])
        return ChatResult(
            body=data,
            status=resp.status_code,
            latency_s=latency,
            cost_usd=cost,
            cache=resp.headers.get(CACHE_HEADER),
        )

    async def post(self, path: str, body: JSON) -> JSON:
        """POST another JSON endpoint (``/v1/rag/query``, ...); returns the JSON answer."""
        _, data, _ = await self._send(self._url(path), body)
        out: JSON = data
        return out

    async def get(self, path: str, params: Mapping[str, str] | None = None) -> Any:
        """GET a JSON endpoint (``/admin/usage``, ...)."""
        return await self._call("GET", path, params)

    async def delete(self, path: str) -> Any:
        """DELETE a resource (``/v1/collections/{name}``, ``/admin/keys/{id}``)."""
        return await self._call("DELETE", path, None)

    async def _call(self, method: str, path: str, params: Mapping[str, str] | None) -> Any:
        url = self._url(path)
        try:
            resp = await self._http.request(method, url, params=dict(params or {}))
        except httpx.TimeoutException:
            raise E.UpstreamTimeout(f"timed out calling {url}") from None
        except httpx.TransportError as exc:
            raise E.UpstreamConnectError(f"cannot reach {url}: {exc}") from None
        try:
            data: Any = orjson.loads(resp.content) if resp.content else None
        except orjson.JSONDecodeError:
            data = None
        if resp.status_code >= 400:
            raise error_from_response(resp.status_code, data, resp.headers)
        return data

    def with_key(self, api_key: str) -> HttpModelClient:
        """A client of the same gateway (same transport, in process) with another key.

        Close it on its own; closing it leaves this one open (a shared
        transport, such as ``httpx.ASGITransport``, has nothing to close).
        """
        return HttpModelClient(
            self.root,
            api_key,
            transport=self._shared_transport,
            headers=self._headers,
            timeout_s=self._timeout_s,
            max_connections=self._max_connections,
            openai_base=True,
        )

    async def aclose(self) -> None:
        await self._http.aclose()
