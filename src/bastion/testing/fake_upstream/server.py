"""The fake upstream's aiohttp server: model endpoints, scripting and the control API.

:class:`FakeServer` holds the scripts, recorded requests and counters and serves
the routes; :func:`serve` / :func:`main` run it as a process (``python -m
bastion.testing.fake_upstream``), printing ``FAKE_UPSTREAM_READY <port>`` once listening.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import itertools
import struct
import time
from collections import Counter, deque
from typing import Any

import orjson
from aiohttp import web

from bastion.testing.fake_upstream.plan import JSON, Plan, Turn, word_count
from bastion.testing.fake_upstream.replies import (
    anthropic_events,
    anthropic_message,
    hashed_embedding,
    openai_completion,
    openai_events,
    stream_error,
)

READY = "FAKE_UPSTREAM_READY"
_DESCRIPTION = "A real, scriptable fake model provider (OpenAI and Anthropic wire formats)."
_JSON_CT = "application/json"
_SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
_MODELS = ["fake-model", "gpt-4o-mini", "text-embedding-3-small", "claude-3-5-haiku-latest"]
# status -> error "type" in OpenAI's and Anthropic's error bodies
_ERR_TYPES = {
    400: ("invalid_request_error",) * 2,
    401: ("invalid_request_error", "authentication_error"),
    403: ("permission_error",) * 2,
    404: ("invalid_request_error", "not_found_error"),
    413: ("invalid_request_error", "request_too_large"),
    429: ("rate_limit_error",) * 2,
    529: ("server_error", "overloaded_error"),
}


class FakeServer:
    """The aiohttp application state: scripts, recorded requests and counters."""

    def __init__(self, api_key: str | None = None, max_requests: int = 1000) -> None:
        self.api_key = api_key
        self.anon: deque[JSON] = deque()
        self.keyed: dict[str, deque[JSON]] = {}
        self.recorded: deque[JSON] = deque(maxlen=max_requests)
        self.stats: Counter[tuple[str, int]] = Counter()
        self.in_flight = 0
        self.max_in_flight = 0
        self.ids = itertools.count(1)
        self.generation = 0  # bumped by reset: late answers to older requests aren't counted
        self.models = orjson.dumps(
            {
                "object": "list",
                "data": [
                    {"id": m, "object": "model", "created": 1700000000, "owned_by": "fake"}
                    for m in _MODELS
                ],
            }
        )

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/chat/completions", self.chat)
        app.router.add_post("/v1/messages", self.messages)
        app.router.add_post("/v1/embeddings", self.embeddings)
        app.router.add_post("/v1/rerank", self.rerank)
        app.router.add_get("/v1/models", self.list_models)
        app.router.add_post("/_control/script", self.ctl_script)
        app.router.add_post("/_control/reset", self.ctl_reset)
        app.router.add_get("/_control/requests", self.ctl_requests)
        app.router.add_get("/_control/stats", self.ctl_stats)
        return app

    # -- plumbing

    def _step(self, request: web.Request, last_user: str) -> JSON:
        header = request.headers.get("x-fake-script")
        if header:
            step = orjson.loads(header)
            return step if isinstance(step, dict) else {}
        if self.keyed:
            for key, queue in self.keyed.items():
                if key in last_user:
                    step = queue.popleft()
                    if not queue:
                        del self.keyed[key]
                    return step
        return self.anon.popleft() if self.anon else {}

    def _done(self, request: web.Request, status: int) -> None:
        if request.get("generation", self.generation) == self.generation:
            self.stats[(request.path, status)] += 1

    def _auth_ok(self, request: web.Request) -> bool:
        if self.api_key is None:
            return True
        h = request.headers
        return self.api_key in (
            h.get("authorization", "").removeprefix("Bearer "),
            h.get("x-api-key"),
            h.get("api-key"),
        )

    def _error(
        self, request: web.Request, status: int, step: JSON, anthropic: bool = False
    ) -> web.Response:
        headers: dict[str, str] = {str(k): str(v) for k, v in (step.get("headers") or {}).items()}
        if "retry_after" in step:
            headers["Retry-After"] = str(step["retry_after"])
        if "retry_after_ms" in step:
            headers["retry-after-ms"] = str(step["retry_after_ms"])
        message = str(step.get("message") or f"fake upstream error {status}")
        openai_type, anthropic_type = _ERR_TYPES.get(status, ("server_error", "api_error"))
        if anthropic:
            body: JSON = {"type": "error", "error": {"type": anthropic_type, "message": message}}
        else:
            body = {"error": {"message": message, "type": openai_type, "param": None, "code": None}}
        self._done(request, status)
        return web.Response(
            status=status, body=orjson.dumps(body), content_type=_JSON_CT, headers=headers
        )

    async def _prologue(
        self, request: web.Request, anthropic: bool
    ) -> tuple[JSON, JSON, Turn | None, web.StreamResponse | None]:
        """Read and record the request; apply a step's delay, error status or raw body."""
        request["generation"] = self.generation
        raw = await request.read()
        try:
            body = orjson.loads(raw) if raw else {}
        except orjson.JSONDecodeError:
            body = None
        self.recorded.append(
            {
                "method": request.method,
                "path": request.path,
                "query": request.query_string,
                "headers": {k.lower(): v for k, v in request.headers.items()},
                "body": body,
                "time": time.time(),
            }
        )
        if not isinstance(body, dict):
            err = self._error(request, 400, {"message": "invalid JSON body"}, anthropic)
            return {}, {}, None, err
        turn = None
        if "messages" in body:
            turn = Turn(body, anthropic)
            last = turn.last_user
        else:
            raw_input = body.get("input")
            last = " ".join(raw_input) if isinstance(raw_input, list) else str(raw_input)
        step = self._step(request, last)
        if step.get("delay_s"):
            await asyncio.sleep(float(step["delay_s"]))
        early: web.StreamResponse | None = None
        status = int(step.get("status", 200))
        if not self._auth_ok(request):
            early = self._error(request, 401, {"message": "invalid api key"}, anthropic)
        elif "body" in step:
            ctype = "text/event-stream" if body.get("stream") else _JSON_CT
            self._done(request, status)
            headers = {"Content-Type": ctype, **(step.get("headers") or {})}
            early = web.Response(status=status, text=str(step["body"]), headers=headers)
        elif status >= 400:
            early = self._error(request, status, step, anthropic)
        return body, step, turn, early

    async def _track(self, request: web.Request, anthropic: bool) -> web.StreamResponse:
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            body, step, turn, early = await self._prologue(request, anthropic)
            if early is not None:
                return early
            turn = turn or Turn(body, anthropic)
            plan = Plan(turn, body, step, anthropic)
            n = next(self.ids)
            if body.get("stream"):
                so = body.get("stream_options") or {}
                events = (
                    anthropic_events(plan, n, step)
                    if anthropic
                    else openai_events(plan, n, step, bool(so.get("include_usage")))
                )
                return await self._stream(request, events, step)
            reply = anthropic_message(plan, n) if anthropic else openai_completion(plan, n)
            self._done(request, 200)
            return web.Response(body=orjson.dumps(reply), content_type=_JSON_CT)
        finally:
            self.in_flight -= 1

    async def _stream(
        self, request: web.Request, events: list[tuple[int, bytes]], step: JSON
    ) -> web.StreamResponse:
        """Write SSE events (kind 0 preamble, 1 content, 2 structure, 3 tail) per the step."""
        resp = web.StreamResponse(headers=_SSE_HEADERS)
        await resp.prepare(request)
        self._done(request, 200)
        with contextlib.suppress(ConnectionResetError):  # the client went away: fine
            await self._write_events(request, resp, events, step)
        return resp

    async def _write_events(
        self,
        request: web.Request,
        resp: web.StreamResponse,
        events: list[tuple[int, bytes]],
        step: JSON,
    ) -> None:
        delay = float(step.get("chunk_delay_s") or 0)
        sent = 0
        for kind, data in events:
            if kind and sent == step.get("disconnect_after_chunks"):
                if request.transport is not None:
                    request.transport.abort()
                return
            if kind and sent == step.get("stall_after_chunks"):
                for _ in range(int(float(step.get("stall_s", 300)) * 20)):
                    if not _connected(request):
                        return
                    await asyncio.sleep(0.05)
                return
            if kind and sent == step.get("error_after_chunks"):
                await resp.write(stream_error(step, events[0][1].startswith(b"event:")))
                await resp.write_eof()
                return
            if kind == 1:
                if delay:
                    await asyncio.sleep(delay)
                sent += 1
            await resp.write(data)
        await resp.write_eof()

    # -- model endpoints

    async def chat(self, request: web.Request) -> web.StreamResponse:
        return await self._track(request, anthropic=False)

    async def messages(self, request: web.Request) -> web.StreamResponse:
        return await self._track(request, anthropic=True)

    async def embeddings(self, request: web.Request) -> web.StreamResponse:
        body, _step, _turn, early = await self._prologue(request, anthropic=False)
        if early is not None:
            return early
        raw = body.get("input", "")
        inputs = raw if isinstance(raw, list) and raw and not isinstance(raw[0], int) else [raw]
        texts = [x if isinstance(x, str) else " ".join(map(str, x)) for x in inputs]
        dim = int(body.get("dimensions") or 8)
        b64 = body.get("encoding_format") == "base64"
        data = []
        for i, text in enumerate(texts):
            vec = hashed_embedding(text, dim)
            emb: Any = base64.b64encode(struct.pack(f"<{dim}f", *vec)).decode() if b64 else vec
            data.append({"object": "embedding", "index": i, "embedding": emb})
        tokens = max(1, sum(word_count(t) for t in texts))
        reply = {
            "object": "list",
            "data": data,
            "model": body.get("model", "fake-embed"),
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
        self._done(request, 200)
        return web.Response(body=orjson.dumps(reply), content_type=_JSON_CT)

    async def rerank(self, request: web.Request) -> web.StreamResponse:
        """Cohere-shaped rerank (``documents``) or TEI-shaped (``texts``): the score is
        the share of the query's words found in the document."""
        body, _step, _turn, early = await self._prologue(request, anthropic=False)
        if early is not None:
            return early
        query = set(str(body.get("query", "")).lower().split())
        tei = "texts" in body
        docs = [
            str(d if isinstance(d, str) else d.get("text", ""))
            for d in body.get("texts" if tei else "documents") or []
        ]
        scored = [
            (i, len(query & set(d.lower().split())) / max(1, len(query)))
            for i, d in enumerate(docs)
        ]
        scored.sort(key=lambda x: (-x[1], x[0]))
        top_n = body.get("top_n")
        if isinstance(top_n, int):
            scored = scored[:top_n]
        self._done(request, 200)
        if tei:
            reply: Any = [{"index": i, "score": s} for i, s in scored]
        else:
            tokens = max(1, sum(word_count(d) for d in docs) + word_count(" ".join(query)))
            reply = {
                "results": [{"index": i, "relevance_score": s} for i, s in scored],
                "usage": {"total_tokens": tokens},
            }
        return web.Response(body=orjson.dumps(reply), content_type=_JSON_CT)

    async def list_models(self, request: web.Request) -> web.Response:
        self._done(request, 200)
        return web.Response(body=self.models, content_type=_JSON_CT)

    # -- control API

    async def ctl_script(self, request: web.Request) -> web.Response:
        spec = await request.json(loads=orjson.loads)
        steps = spec.get("steps") or []
        match = spec.get("match")
        queue = self.keyed.setdefault(match, deque()) if match else self.anon
        queue.extend(s for s in steps if isinstance(s, dict))
        return web.json_response({"queued": len(steps)})

    async def ctl_reset(self, request: web.Request) -> web.Response:
        self.anon.clear()
        self.keyed.clear()
        self.recorded.clear()
        self.stats.clear()
        self.generation += 1
        self.max_in_flight = self.in_flight
        return web.json_response({"ok": True})

    async def ctl_requests(self, request: web.Request) -> web.Response:
        limit = int(request.query.get("limit", len(self.recorded)) or 0)
        items = list(self.recorded)[-limit:] if limit else []
        return web.Response(body=orjson.dumps({"requests": items}), content_type=_JSON_CT)

    async def ctl_stats(self, request: web.Request) -> web.Response:
        by_path: dict[str, dict[str, int]] = {}
        for (path, status), count in self.stats.items():
            by_path.setdefault(path, {})[str(status)] = count
        body = {
            "total": sum(self.stats.values()),
            "by_path": by_path,
            "in_flight": self.in_flight,
            "max_in_flight": self.max_in_flight,
        }
        return web.json_response(body)


def _connected(request: web.Request) -> bool:
    transport = request.transport
    return transport is not None and not transport.is_closing()


async def serve(host: str, port: int, api_key: str | None, max_requests: int) -> None:
    """Serve until cancelled; print the ready line with the bound port."""
    runner = web.AppRunner(
        FakeServer(api_key, max_requests).app(), access_log=None, handle_signals=True
    )
    await runner.setup()
    site = web.TCPSite(runner, host, port, backlog=1024)
    await site.start()
    bound = runner.addresses[0][1]
    print(f"{READY} {bound}", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


def main(argv: list[str] | None = None) -> None:
    """``python -m bastion.testing.fake_upstream [--host H] [--port N] [--api-key K]``."""
    ap = argparse.ArgumentParser(prog="fake_upstream", description=_DESCRIPTION)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0, help="0 picks a free port")
    ap.add_argument("--api-key", default=None, help="require this key (else accept any)")
    ap.add_argument("--max-requests", type=int, default=1000, help="requests kept for /_control")
    args = ap.parse_args(argv)
    loop_factory = None
    with contextlib.suppress(ImportError):
        import uvloop

        loop_factory = uvloop.new_event_loop
    with (
        contextlib.suppress(KeyboardInterrupt),
        asyncio.Runner(loop_factory=loop_factory) as runner,
    ):
        runner.run(serve(args.host, args.port, args.api_key, args.max_requests))
