"""``POST /v1/messages``: the Anthropic Messages API in front of any provider.

The request is translated to the canonical chat request, routed like any chat
call (same policy, keys, routing and telemetry), and the answer translated
back: a ``message`` object, or Anthropic's SSE event sequence when streaming.
Errors use Anthropic's error shape (the app does that for this route).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from bastion.api.errors import to_error
from bastion.api.exchange import Exchange
from bastion.api.guarding import guard_completion, guard_stream
from bastion.api.http import dumps, sse_event
from bastion.api.routes_openai import prepare_chat, relay_until_disconnect, replay
from bastion.core.types import JSON
from bastion.providers.anthropic_format import (
    MessagesStreamTranslator,
    chat_to_message,
    error_event,
    messages_request_to_chat,
)

if TYPE_CHECKING:
    from bastion.api.app import BastionApp


async def messages(app: BastionApp, ex: Exchange) -> None:
    principal = app.authenticate(ex)
    body = await ex.req.json(app.max_body)
    req = messages_request_to_chat(body)
    ex.model = req.model
    plan = app.gateway.plan(principal, req.model, "chat")
    req, guard, answer = await prepare_chat(app, ex, principal, plan, req)
    if answer is not None:
        if req.stream:
            ex.streamed = True
            await _stream(ex, replay(answer), req.model)
        else:
            await ex.respond(200, dumps(chat_to_message(answer, req.model)))
        return
    if req.stream:
        ex.streamed = True
        dep, chunks = await app.gateway.chat_stream(plan, req, ex.ctx)
        ex.routed(dep)
        if guard is not None:
            chunks = guard_stream(guard, chunks)
        await _stream(ex, chunks, req.model)
        return
    dep, completion = await app.gateway.chat(plan, req, ex.ctx)
    ex.routed(dep)
    ex.response_model = completion.get("model")
    ex.add_usage(completion)
    ex.completion = completion
    app.meter.price(ex)
    answer = completion if guard is None else await guard_completion(guard, completion)
    await ex.respond(200, dumps(chat_to_message(answer, req.model)))


async def _stream(ex: Exchange, chunks: AsyncIterator[JSON], model: str) -> None:
    send = ex.send
    await ex.start_sse()
    translator = MessagesStreamTranslator(model)

    async def out(events: list[tuple[str, JSON]], more: bool = True) -> None:
        if events:
            payload = b"".join(sse_event(name, data) for name, data in events)
            await send({"type": "http.response.body", "body": payload, "more_body": more})
        elif not more:
            await send({"type": "http.response.body", "body": b""})

    async def relay() -> None:
        try:
            async for chunk in chunks:
                if ex.assembler is not None:
                    ex.assembler.feed(chunk)
                if chunk.get("usage"):
                    ex.add_usage(chunk)
                await out(translator.feed(chunk))
            await out(translator.finish(), more=False)
        except Exception as exc:
            err = to_error(exc, ex.rid)
            ex.error_code = err.code
            await out([error_event(err)], more=False)

    await relay_until_disconnect(ex, relay(), chunks)
