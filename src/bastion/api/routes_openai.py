"""OpenAI-compatible endpoints: chat completions, embeddings, models."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Coroutine
from typing import TYPE_CHECKING, Any

from bastion.api.errors import parse, to_error
from bastion.api.exchange import Exchange
from bastion.api.guarding import (
    GuardState,
    guard_completion,
    guard_input,
    guard_stream,
    reask,
    schema_problems,
)
from bastion.api.http import dumps, sse_data, wait_disconnect
from bastion.api.prompt_chat import apply_prompt
from bastion.api.rag_chat import annotate_stream, completion_text, prepare_rag
from bastion.core.errors import InvalidOutput, ModelNotFound
from bastion.core.types import JSON, ChatRequest, EmbeddingRequest, RerankRequest
from bastion.gateway.auth import Principal
from bastion.gateway.cache import completion_chunks
from bastion.gateway.router import ModelPlan

if TYPE_CHECKING:
    from bastion.api.app import BastionApp


def _request_attrs(req: ChatRequest) -> dict[str, object]:
    return {
        "gen_ai.request.max_tokens": req.output_limit(),
        "gen_ai.request.temperature": req.temperature,
        "gen_ai.request.top_p": req.top_p,
    }


async def chat_completions(app: BastionApp, ex: Exchange) -> None:
    principal = app.authenticate(ex)
    body = await apply_prompt(app, ex, principal, await ex.req.json(app.max_body))
    req = parse(ChatRequest.from_body, body)
    ex.model = req.model
    ex.request_attrs = {**ex.request_attrs, **_request_attrs(req)}
    plan = app.gateway.plan(principal, req.model, "chat")
    req, turn, grounded = await prepare_rag(app, ex, principal, req)
    if grounded is not None:  # nothing relevant was found: say so, no model call
        if req.stream:
            ex.streamed = True
            await stream_sse(app, ex, replay(grounded), include_usage=req.include_usage())
        else:
            await ex.respond(200, dumps(grounded))
        return
    req, guard, answer = await prepare_chat(app, ex, principal, plan, req)
    if answer is not None:
        if turn is not None:
            answer = turn.annotate(answer, completion_text(answer))
        if req.stream:
            ex.streamed = True
            await stream_sse(app, ex, replay(answer), include_usage=req.include_usage())
        else:
            await ex.respond(200, dumps(answer))
        return
    if req.stream:
        ex.streamed = True
        dep, chunks = await app.gateway.chat_stream(plan, req, ex.ctx)
        ex.routed(dep)
        if guard is not None:
            chunks = guard_stream(guard, chunks)
        if turn is not None:
            chunks = annotate_stream(turn, chunks)
        await stream_sse(app, ex, chunks, include_usage=req.include_usage())
        return
    dep, body = await app.gateway.chat(plan, req, ex.ctx)
    ex.routed(dep)
    if guard is not None and guard.pipeline.cfg.json_schema:
        problems = schema_problems(req, body)
        if problems:  # one automatic re-ask, then a clear error
            ex.add_usage(body)
            first = (ex.prompt_tokens, ex.completion_tokens)
            dep, body = await app.gateway.chat(plan, reask(req, body, problems), ex.ctx)
            ex.routed(dep)
            ex.add_usage(body)
            ex.prompt_tokens += first[0]
            ex.completion_tokens += first[1]
            problems = schema_problems(req, body)
            if problems:
                raise InvalidOutput(
                    "the model's answer did not match the response_format schema, "
                    "also after one re-ask: " + "; ".join(problems[:3])
                )
        else:
            ex.add_usage(body)
    else:
        ex.add_usage(body)
    ex.response_model = body.get("model")
    ex.completion = body
    app.meter.price(ex)
    answer = body if guard is None else await guard_completion(guard, body)
    if turn is not None:
        answer = turn.annotate(answer, completion_text(answer))
    await ex.respond(200, dumps(answer))


async def prepare_chat(
    app: BastionApp, ex: Exchange, principal: Principal, plan: ModelPlan, req: ChatRequest
) -> tuple[ChatRequest, GuardState | None, JSON | None]:
    """Guard the input, reserve limits and budgets, look the cache up.

    Returns the request as it will be sent, the guard state, and a cache hit
    (already through the output guards) or None. Requests whose input was
    redacted skip the cache: an answer must never be restored with another
    caller's values.
    """
    guard = app.guard_state(ex, principal, req.model)
    if guard is not None:
        req = await guard_input(guard, req)
    redacted = bool(guard and guard.red.originals)
    await app.meter.admit_chat(ex, principal, plan, req, no_cache=redacted)
    ex.chat_request = req
    if ex.cache != "hit" or ex.completion is None:
        return req, guard, None
    if req.stream:
        ex.streamed = True
    answer = ex.completion if guard is None else await guard_completion(guard, ex.completion)
    return req, guard, answer


async def replay(completion: JSON) -> AsyncIterator[JSON]:
    """A cached completion as a stream of chunks."""
    for chunk in completion_chunks(completion):
        yield chunk


async def stream_sse(
    app: BastionApp, ex: Exchange, chunks: AsyncIterator[JSON], *, include_usage: bool
) -> None:
    """Relay chunks as SSE; end with ``[DONE]``, or an error event if the upstream dies.

    The upstream is asked for usage always; the usage-only chunk reaches the
    client only when it asked (``stream_options.include_usage``). A client that
    disconnects cancels the relay, which closes the upstream stream.
    """
    send = ex.send
    await ex.start_sse()

    assembler = ex.assembler

    async def relay() -> None:
        try:
            async for chunk in chunks:
                if assembler is not None:
                    assembler.feed(chunk)
                if chunk.get("usage"):
                    ex.add_usage(chunk)
                    if not chunk.get("choices"):
                        if not include_usage:
                            continue
                        # the cost is known once usage is: report it with the usage
                        chunk = {**chunk, "usage": {**chunk["usage"], "cost_usd": cost(app, ex)}}
                    elif not include_usage:
                        chunk = {k: v for k, v in chunk.items() if k != "usage"}
                if ex.response_model is None:
                    ex.response_model = chunk.get("model")
                await send(
                    {"type": "http.response.body", "body": sse_data(chunk), "more_body": True}
                )
            await send({"type": "http.response.body", "body": b"data: [DONE]\n\n"})
        except Exception as exc:  # the stream died after bytes were sent
            err = to_error(exc, ex.rid)
            ex.error_code = err.code
            await send({"type": "http.response.body", "body": sse_data(err.to_body())})

    await relay_until_disconnect(ex, relay(), chunks)


def cost(app: BastionApp, ex: Exchange) -> float:
    return app.meter.price(ex) / 1e6


async def relay_until_disconnect(
    ex: Exchange, relay: Coroutine[Any, Any, None], chunks: AsyncIterator[JSON]
) -> None:
    """Run ``relay`` while watching for the client going away."""
    task = asyncio.ensure_future(relay)
    watcher = asyncio.ensure_future(wait_disconnect(ex.req.receive))
    try:
        done, _ = await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
        if task not in done:
            ex.error_code = "client_disconnected"
            ex.status = 499
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        else:
            task.result()
    finally:
        watcher.cancel()
        close = getattr(chunks, "aclose", None)
        if close is not None:
            await close()


async def embeddings(app: BastionApp, ex: Exchange) -> None:
    principal = app.authenticate(ex)
    req = parse(EmbeddingRequest.model_validate, await ex.req.json(app.max_body))
    ex.model = req.model
    plan = app.gateway.plan(principal, req.model, "embedding")
    await app.meter.admit_embed(ex, principal, plan, req.texts())
    dep, body = await app.gateway.embed(plan, req, ex.ctx)
    ex.routed(dep)
    ex.add_usage(body)
    app.meter.price(ex)
    await ex.respond(200, dumps(body))


async def rerank(app: BastionApp, ex: Exchange) -> None:
    """``POST /v1/rerank``: Cohere/Jina-shaped reranking through a rerank model alias."""
    principal = app.authenticate(ex)
    req = parse(RerankRequest.model_validate, await ex.req.json(app.max_body))
    ex.model = req.model
    plan = app.gateway.plan(principal, req.model, "rerank")
    texts = req.texts()
    await app.meter.admit_embed(ex, principal, plan, [req.query, *texts])
    dep, body = await app.gateway.rerank(plan, req, ex.ctx)
    ex.routed(dep)
    ex.prompt_tokens = int((body.get("usage") or {}).get("total_tokens") or 0)
    app.meter.price(ex)
    if req.return_documents:
        for r in body["results"]:
            r["document"] = {"text": texts[r["index"]]}
    body["model"] = req.model
    await ex.respond(200, dumps(body))


async def models(app: BastionApp, ex: Exchange) -> None:
    principal = app.authenticate(ex)
    prefix = "/v1/models/"
    if ex.req.path.startswith(prefix):
        name = ex.req.path[len(prefix) :]
        for m in app.gateway.models_for(principal):
            if m["id"] == name:
                await ex.respond(200, dumps(m))
                return
        raise ModelNotFound(f"model {name!r} does not exist or is not available to this key")
    await ex.respond(200, dumps({"object": "list", "data": app.gateway.models_for(principal)}))
