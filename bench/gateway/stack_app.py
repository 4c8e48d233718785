"""A minimal gateway hot path, for choosing the server stack by measurement.

Per request: read the body, check the bearer key (sha256 -> dict lookup), parse the JSON with
orjson, resolve the model route, re-serialize, forward to the upstream with a pooled keep-alive
client, parse the upstream JSON, rewrite the model name, re-serialize and answer with a few
headers.

Configuration comes from the environment so that every server can import the same module:
  STACK_UPSTREAM  upstream base URL, e.g. http://127.0.0.1:18081/v1 (required)
  STACK_CLIENT    aiohttp | httpx (default aiohttp)
  STACK_KEY       the valid bearer key (default harness.BENCH_KEY)
  STACK_WATCH     if set to a directory, run a watchfiles ``awatch(dir, step=50)`` task
                  (what a policy hot-reload watcher costs; off by default)
  STACK_ACCESS_LOG  if "1", log one JSON access line per request to stdout via logging

Apps: ``raw_app`` (plain ASGI callable) and ``starlette_app`` (Starlette Route/Request/Response).
Run under uvicorn (uvloop + httptools):  python stack_app.py {raw|starlette} PORT
Run under granian:  granian --interface asgi --loop uvloop stack_app:raw_app (see stack_choice.py)
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import sys
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, Protocol

import orjson

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

UPSTREAM = os.environ.get("STACK_UPSTREAM", "http://127.0.0.1:18081/v1").rstrip("/")
CLIENT_KIND = os.environ.get("STACK_CLIENT", "aiohttp")
VALID_KEY = os.environ.get("STACK_KEY", "sk-bench-0123456789abcdef")
UPSTREAM_KEY = "sk-upstream-bench"
WATCH_DIR = os.environ.get("STACK_WATCH", "")
ACCESS_LOG = os.environ.get("STACK_ACCESS_LOG", "") == "1"
_access = logging.getLogger("stack.access")
if ACCESS_LOG:
    _h = logging.StreamHandler(sys.stdout)
    _h.setFormatter(logging.Formatter("%(message)s"))
    _access.addHandler(_h)
    _access.setLevel(logging.INFO)
    _access.propagate = False


def _digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


# A key table of realistic size: hashed keys -> principal.
KEYS: dict[str, dict[str, Any]] = {
    _digest(f"sk-dummy-{i:05d}"): {"tenant": f"t{i % 50}", "key_id": f"k{i}"} for i in range(5000)
}
KEYS[_digest(VALID_KEY)] = {"tenant": "bench", "key_id": "kbench"}
ROUTES: dict[str, tuple[str, str]] = {
    "bench-model": (f"{UPSTREAM}/chat/completions", "gpt-4o-mini"),
}
UPSTREAM_HEADERS = {
    "Authorization": f"Bearer {UPSTREAM_KEY}",
    "Content-Type": "application/json",
}


class Upstream(Protocol):
    async def post(self, url: str, body: bytes) -> tuple[int, bytes]: ...


class AiohttpUpstream:
    def __init__(self) -> None:
        import aiohttp

        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=256, keepalive_timeout=60),
            timeout=aiohttp.ClientTimeout(total=60),
            skip_auto_headers=("User-Agent",),
            auto_decompress=False,
        )

    async def post(self, url: str, body: bytes) -> tuple[int, bytes]:
        async with self._session.post(url, data=body, headers=UPSTREAM_HEADERS) as r:
            return r.status, await r.read()


class HttpxUpstream:
    def __init__(self) -> None:
        import httpx

        self._client = httpx.AsyncClient(
            limits=httpx.Limits(max_connections=256, max_keepalive_connections=256),
            timeout=60.0,
        )

    async def post(self, url: str, body: bytes) -> tuple[int, bytes]:
        r = await self._client.post(url, content=body, headers=UPSTREAM_HEADERS)
        return r.status_code, r.content


_upstream: Upstream | None = None
_background: set[asyncio.Task[None]] = set()


async def _watch(path: str) -> None:
    from watchfiles import awatch

    async for _changes in awatch(path, debounce=200, step=50):
        pass


def upstream() -> Upstream:
    # Created lazily, inside the running event loop (no await between check and set).
    global _upstream
    if _upstream is None:
        _upstream = HttpxUpstream() if CLIENT_KIND == "httpx" else AiohttpUpstream()
        if WATCH_DIR:
            task = asyncio.get_running_loop().create_task(_watch(WATCH_DIR))
            _background.add(task)
    return _upstream


def _error(status: int, message: str) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
    body = orjson.dumps({"error": {"message": message, "type": "invalid_request_error"}})
    return status, body, []


async def handle(auth: str | None, body: bytes) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
    """The shared hot path. Returns (status, body, extra headers)."""
    t0 = time.perf_counter()
    if not auth or not auth.startswith("Bearer "):
        return _error(401, "missing bearer key")
    principal = KEYS.get(_digest(auth[7:]))
    if principal is None:
        return _error(401, "invalid key")
    try:
        req = orjson.loads(body)
    except orjson.JSONDecodeError:
        return _error(400, "invalid JSON")
    model = req.get("model")
    route = ROUTES.get(model) if isinstance(model, str) else None
    if route is None:
        return _error(404, f"unknown model {model!r}")
    url, upstream_model = route
    req["model"] = upstream_model
    status, data = await upstream().post(url, orjson.dumps(req))
    if status != 200:
        return _error(502, f"upstream status {status}")
    resp = orjson.loads(data)
    resp["model"] = model
    out = orjson.dumps(resp)
    if ACCESS_LOG:
        usage = resp.get("usage") or {}
        _access.info(
            orjson.dumps(
                {
                    "ts": time.time(),
                    "event": "request",
                    "model": model,
                    "tenant": principal["tenant"],
                    "status": 200,
                    "duration_ms": round((time.perf_counter() - t0) * 1000, 3),
                    "input_tokens": usage.get("prompt_tokens"),
                    "output_tokens": usage.get("completion_tokens"),
                }
            ).decode()
        )
    extra = [
        (b"x-request-id", os.urandom(8).hex().encode()),
        (b"x-bastion-route", b"up/gpt-4o-mini"),
        (b"x-bastion-tenant", principal["tenant"].encode()),
        (b"x-bastion-overhead-ms", f"{(time.perf_counter() - t0) * 1000:.3f}".encode()),
    ]
    return 200, out, extra


# --------------------------------------------------------------------------- raw ASGI


async def raw_app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        while True:
            msg = await receive()
            if msg["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif msg["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "http":
        return
    path = scope["path"]
    if path == "/healthz":
        await _send(send, 200, b'{"ok":true}', [])
        return
    if path != "/v1/chat/completions" or scope["method"] != "POST":
        await _send(send, *_error(404, "not found"))
        return
    auth = None
    for k, v in scope["headers"]:
        if k == b"authorization":
            auth = v.decode("latin-1")
            break
    chunks: list[bytes] = []
    more = True
    while more:
        msg = await receive()
        chunks.append(msg.get("body", b""))
        more = msg.get("more_body", False)
    body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
    await _send(send, *(await handle(auth, body)))


async def _send(send: Send, status: int, body: bytes, extra: list[tuple[bytes, bytes]]) -> None:
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        *extra,
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


# --------------------------------------------------------------------------- Starlette
# Optional (not a Bastion dependency): built on first access of ``stack_app.starlette_app``.


def build_starlette_app() -> Any:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    async def chat_endpoint(request: Request) -> Response:
        auth = request.headers.get("authorization")
        status, body, extra = await handle(auth, await request.body())
        headers = {k.decode(): v.decode() for k, v in extra}
        return Response(body, status_code=status, headers=headers, media_type="application/json")

    async def healthz(request: Request) -> Response:
        return Response(b'{"ok":true}', media_type="application/json")

    return Starlette(
        routes=[
            Route("/v1/chat/completions", chat_endpoint, methods=["POST"]),
            Route("/healthz", healthz, methods=["GET"]),
        ]
    )


_starlette_app: Any = None


def __getattr__(name: str) -> Any:
    global _starlette_app
    if name == "starlette_app":
        if _starlette_app is None:
            _starlette_app = build_starlette_app()
        return _starlette_app
    raise AttributeError(name)


def main() -> None:
    import uvicorn

    kind, port = sys.argv[1], int(sys.argv[2])
    app = raw_app if kind == "raw" else build_starlette_app()
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=port,
        loop="uvloop",
        http="httptools",
        lifespan="off",
        access_log=False,
        log_level="warning",
    )


if __name__ == "__main__":
    main()
