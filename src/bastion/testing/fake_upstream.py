"""A real, scriptable fake model provider (OpenAI and Anthropic wire formats).

Run it as its own process (``python -m bastion.testing.fake_upstream --port 0``; it
prints ``FAKE_UPSTREAM_READY <port>`` once listening) or, from tests, with
:func:`run_fake_upstream`, which yields a :class:`FakeUpstream` handle::

    with run_fake_upstream() as fake:
        client = openai.OpenAI(base_url=fake.url, api_key="sk-test")
        fake.script([{"status": 429, "retry_after": 2}], match="flaky")

Endpoints: ``POST /v1/chat/completions`` (plain and SSE), ``POST /v1/embeddings``,
``GET /v1/models``, Anthropic ``POST /v1/messages`` (plain and SSE). By default a
chat reply is ``"echo: <last user text>"`` with word-count usage; with ``tools`` and
"weather" in the last user message it is a tool call (``{"location": "Paris"}``);
after a tool result it is ``"tool result: <text>"``; with ``response_format`` it is
valid JSON; ``max_tokens`` truncates the words (finish ``length`` / ``max_tokens``).
Embeddings are hashed bags of words (texts sharing words have similar vectors).

Scripting (one *step* consumed per model request, FIFO; a step keyed by ``match``
applies only to requests whose last user text contains it; the header
``x-fake-script: <json step>`` overrides both). Step fields:

``status`` (error body shaped per API), ``message``, ``retry_after`` (``Retry-After``),
``retry_after_ms``, ``headers``, ``delay_s`` (before headers), ``body`` (raw text
sent verbatim), ``content``, ``chunks`` (content chunks to stream), ``chunk_delay_s``,
``disconnect_after_chunks`` (abort the TCP connection after that many content
chunks), ``stall_after_chunks`` (stop sending, keep the connection open, up to
``stall_s``), ``error_after_chunks`` (send an in-stream error event), ``tool_call``
(``{name, arguments}``), ``usage``, ``finish_reason``.

Control API: ``POST /_control/script`` ``{"steps": [...], "match": "..."}``,
``POST /_control/reset``, ``GET /_control/requests?limit=N``, ``GET /_control/stats``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hashlib
import itertools
import re
import select
import struct
import subprocess
import sys
import time
from collections import Counter, deque
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
from aiohttp import web

JSON = dict[str, Any]
READY = "FAKE_UPSTREAM_READY"
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
_WORD = re.compile(r"\w+")


# ---------------------------------------------------------------- request analysis


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


def _words(text: str) -> int:
    return len(text.split())


class _Turn:
    """What the fake needs to know about a chat request."""

    __slots__ = ("last_user", "model", "prompt_words", "tool_result", "tools")

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
        words = sum(_words(_text(m.get("content"))) for m in msgs if isinstance(m, dict))
        self.prompt_words = max(1, words + _words(_text(body.get("system"))))
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


class _Plan:
    """The reply to send: text, tool call, finish reason and usage."""

    __slots__ = ("completion", "content", "finish", "prompt", "tool", "turn")

    def __init__(self, turn: _Turn, body: JSON, step: JSON, anthropic: bool) -> None:
        self.turn = turn
        tool = step.get("tool_call")
        weather = "weather" in turn.last_user.lower()
        if tool is None and turn.tools and turn.tool_result is None and weather:
            tool = {"name": turn.tools[0], "arguments": {"location": "Paris"}}
        content: str | None = step.get("content")
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
        if content and isinstance(limit, int) and tool is None and _words(content) > limit:
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
        self.completion = max(1, _words(content or "") + (_words(self.tool[1]) if self.tool else 0))
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


# ---------------------------------------------------------------- the server


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
    ) -> tuple[JSON, JSON, _Turn | None, web.StreamResponse | None]:
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
            turn = _Turn(body, anthropic)
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
            turn = turn or _Turn(body, anthropic)
            plan = _Plan(turn, body, step, anthropic)
            n = next(self.ids)
            if body.get("stream"):
                so = body.get("stream_options") or {}
                events = (
                    _anthropic_events(plan, n, step)
                    if anthropic
                    else _openai_events(plan, n, step, bool(so.get("include_usage")))
                )
                return await self._stream(request, events, step)
            reply = _anthropic_message(plan, n) if anthropic else _openai_completion(plan, n)
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
                await resp.write(_stream_error(step, events[0][1].startswith(b"event:")))
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
            vec = _embed(text, dim)
            emb: Any = base64.b64encode(struct.pack(f"<{dim}f", *vec)).decode() if b64 else vec
            data.append({"object": "embedding", "index": i, "embedding": emb})
        tokens = max(1, sum(_words(t) for t in texts))
        reply = {
            "object": "list",
            "data": data,
            "model": body.get("model", "fake-embed"),
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
        self._done(request, 200)
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


# ---------------------------------------------------------------- reply builders


def _embed(text: str, dim: int) -> list[float]:
    """A deterministic, normalised hashed bag-of-words vector."""
    vec = [0.0] * dim
    for word in _WORD.findall(text.lower()) or [""]:
        h = int.from_bytes(hashlib.blake2b(word.encode(), digest_size=8).digest(), "little")
        vec[h % dim] += 1.0 if (h >> 32) & 1 else -1.0
    norm = sum(v * v for v in vec) ** 0.5 or 1.0
    return [v / norm for v in vec]


def _connected(request: web.Request) -> bool:
    transport = request.transport
    return transport is not None and not transport.is_closing()


def _data(obj: Any) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


def _sse(event: str, **fields: Any) -> bytes:
    """An Anthropic-style SSE event: ``event:`` line and ``{"type": event, ...}`` data."""
    return b"event: " + event.encode() + b"\n" + _data({"type": event, **fields})


def _usage(plan: _Plan) -> JSON:
    total = plan.prompt + plan.completion
    return {
        "prompt_tokens": plan.prompt,
        "completion_tokens": plan.completion,
        "total_tokens": total,
    }


def _call(plan: _Plan, n: int, args: str) -> JSON:
    name = plan.tool[0] if plan.tool else ""
    return {
        "id": f"call_fake_{n}",
        "type": "function",
        "function": {"name": name, "arguments": args},
    }


def _openai_head(plan: _Plan, n: int, obj: str) -> JSON:
    return dict(
        id=f"chatcmpl-fake-{n}",
        object=obj,
        created=int(time.time()),
        model=plan.turn.model,
        system_fingerprint="fp_fake",
    )


def _openai_completion(plan: _Plan, n: int) -> JSON:
    message: JSON = {"role": "assistant", "content": plan.content, "refusal": None}
    if plan.tool is not None:
        message["tool_calls"] = [_call(plan, n, plan.tool[1])]
    choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": plan.finish}
    return {**_openai_head(plan, n, "chat.completion"), "choices": [choice], "usage": _usage(plan)}


def _openai_events(plan: _Plan, n: int, step: JSON, usage: bool) -> list[tuple[int, bytes]]:
    """OpenAI ``chat.completion.chunk`` events as ``(kind, bytes)`` (see ``_stream``)."""
    head = _openai_head(plan, n, "chat.completion.chunk")
    if usage:
        head["usage"] = None

    def chunk(kind: int, delta: JSON, finish: str | None = None) -> tuple[int, bytes]:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        return kind, _data({**head, "choices": [choice]})

    first = "" if plan.tool is None or plan.content else None
    out = [chunk(0, {"role": "assistant", "content": first})]
    if plan.content:
        out += [chunk(1, {"content": p}) for p in plan.pieces(plan.content, step.get("chunks"))]
    if plan.tool is not None:
        out.append(chunk(1, {"tool_calls": [{"index": 0, **_call(plan, n, "")}]}))
        for frag in plan.pieces(plan.tool[1], step.get("chunks") or 3):
            out.append(chunk(1, {"tool_calls": [{"index": 0, "function": {"arguments": frag}}]}))
    out.append(chunk(3, {}, plan.finish))
    if usage:
        out.append((3, _data({**head, "choices": [], "usage": _usage(plan)})))
    out.append((3, b"data: [DONE]\n\n"))
    return out


def _anthropic_blocks(plan: _Plan, n: int) -> list[JSON]:
    blocks: list[JSON] = []
    if plan.content:
        blocks.append({"type": "text", "text": plan.content})
    if plan.tool is not None:
        args = orjson.loads(plan.tool[1] or "{}")
        blocks.append(
            {"type": "tool_use", "id": f"toolu_fake_{n}", "name": plan.tool[0], "input": args}
        )
    return blocks


def _anthropic_message(plan: _Plan, n: int) -> JSON:
    usage = {"input_tokens": plan.prompt, "output_tokens": plan.completion}
    return dict(
        id=f"msg_fake_{n}",
        type="message",
        role="assistant",
        model=plan.turn.model,
        content=_anthropic_blocks(plan, n),
        stop_reason=plan.finish,
        stop_sequence=None,
        usage=usage,
    )


def _anthropic_events(plan: _Plan, n: int, step: JSON) -> list[tuple[int, bytes]]:
    """Anthropic's event sequence as ``(kind, bytes)`` (see ``_stream``)."""
    start = {
        **_anthropic_message(plan, n),
        "content": [],
        "stop_reason": None,
        "usage": {"input_tokens": plan.prompt, "output_tokens": 1},
    }
    out = [(0, _sse("message_start", message=start))]
    for i, block in enumerate(_anthropic_blocks(plan, n)):
        if block["type"] == "text":
            empty: JSON = {"type": "text", "text": ""}
            deltas = [
                {"type": "text_delta", "text": p}
                for p in plan.pieces(block["text"], step.get("chunks"))
            ]
        else:
            empty = {**block, "input": {}}
            args = plan.tool[1] if plan.tool else ""
            deltas = [
                {"type": "input_json_delta", "partial_json": p}
                for p in plan.pieces(args, step.get("chunks") or 3)
            ]
        out.append((0 if i == 0 else 2, _sse("content_block_start", index=i, content_block=empty)))
        if i == 0:
            out.append((0, _sse("ping")))
        out += [(1, _sse("content_block_delta", index=i, delta=d)) for d in deltas]
        out.append((2, _sse("content_block_stop", index=i)))
    stop = {"stop_reason": plan.finish, "stop_sequence": None}
    out.append((3, _sse("message_delta", delta=stop, usage={"output_tokens": plan.completion})))
    out.append((3, _sse("message_stop")))
    return out


def _stream_error(step: JSON, anthropic: bool) -> bytes:
    message = str(step.get("message") or "fake upstream stream error")
    if anthropic:
        return _sse("error", error={"type": "overloaded_error", "message": message})
    return _data(
        {"error": {"message": message, "type": "server_error", "param": None, "code": None}}
    )


# ---------------------------------------------------------------- process + client


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
    ap = argparse.ArgumentParser(prog="fake_upstream", description=__doc__.splitlines()[0])
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


class FakeUpstream:
    """A handle on a running fake upstream: its URLs and its control API."""

    def __init__(self, base: str, process: subprocess.Popen[str] | None = None) -> None:
        self.base = base.rstrip("/")
        """``http://127.0.0.1:PORT`` (the Anthropic SDK's ``base_url``)."""
        self.url = self.base + "/v1"
        """``http://127.0.0.1:PORT/v1`` (the OpenAI SDK's ``base_url``)."""
        self.port = int(self.base.rsplit(":", 1)[1])
        self.process = process
        self._http = httpx.Client(base_url=self.base, timeout=10.0)

    def script(self, steps: list[JSON] | JSON, match: str | None = None) -> None:
        """Queue steps (one per model request), optionally only for ``match``-ing requests."""
        steps = [steps] if isinstance(steps, dict) else steps
        self._http.post(
            "/_control/script", json={"steps": steps, "match": match}
        ).raise_for_status()

    def reset(self) -> None:
        """Drop queued steps, recorded requests and counters."""
        self._http.post("/_control/reset").raise_for_status()

    def requests(self, limit: int | None = None) -> list[JSON]:
        """The last received model requests, oldest first.

        Each is ``{"method", "path", "query", "headers", "body", "time"}``; header names
        are lower-cased, values raw (``authorization`` included, for tests to assert).
        """
        params = {} if limit is None else {"limit": limit}
        r = self._http.get("/_control/requests", params=params)
        r.raise_for_status()
        items: list[JSON] = r.json()["requests"]
        return items

    def stats(self) -> JSON:
        """``{"total", "by_path": {path: {status: n}}, "in_flight", "max_in_flight"}``."""
        r = self._http.get("/_control/stats")
        r.raise_for_status()
        out: JSON = r.json()
        return out

    def close(self) -> None:
        """Close the control client and stop the process, if this handle owns one."""
        self._http.close()
        proc = self.process
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        if proc is not None and proc.stdout is not None:
            proc.stdout.close()


@contextlib.contextmanager
def run_fake_upstream(
    *, api_key: str | None = None, max_requests: int = 1000, startup_timeout: float = 20.0
) -> Iterator[FakeUpstream]:
    """Start the fake upstream as a subprocess on a free loopback port; stop it on exit."""
    cmd = [sys.executable, "-m", "bastion.testing.fake_upstream", "--port", "0"]
    cmd += ["--max-requests", str(max_requests)]
    if api_key is not None:
        cmd += ["--api-key", api_key]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    deadline = time.monotonic() + startup_timeout
    line = ""
    while not line.startswith(READY):
        left = deadline - time.monotonic()
        if left <= 0 or proc.poll() is not None:
            proc.kill()
            proc.wait()
            raise RuntimeError(f"fake upstream did not start (exit code {proc.poll()})")
        if select.select([proc.stdout], [], [], left)[0]:
            line = proc.stdout.readline()
    fake = FakeUpstream(f"http://127.0.0.1:{int(line.split()[1])}", proc)
    try:
        yield fake
    finally:
        fake.close()


if __name__ == "__main__":
    main()
