"""CPU cost of ``OpenAICompatProvider.chat()`` / ``chat_stream()`` per call (not a test).

Starts the fake upstream in its own process and measures this process's CPU time
(``time.process_time``: user + kernel) per call under uvloop, next to two floors on
the same exchange: a bare aiohttp ``session.post`` and a bare asyncio stream.

    .venv/bin/python bench/providers_openai_cpu.py [--calls 5000] [--concurrency 32]
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Awaitable, Callable

import aiohttp
import orjson
import uvloop

from bastion.core.types import ChatRequest
from bastion.providers.base import CallContext
from bastion.providers.openai_compat import OpenAICompatProvider
from bastion.testing.fake_upstream import run_fake_upstream

BODY = {
    "model": "chat-default",
    "messages": [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "Say hello to the benchmark, briefly please."},
    ],
    "max_tokens": 64,
    "temperature": 0.2,
}
Call = Callable[[], Awaitable[object]]


async def measure(label: str, fn: Call, calls: int, conc: int = 1, per: int = 1) -> None:
    """Print CPU µs per call (or per ``per`` events of a call) and calls/s."""
    for _ in range(min(300, calls)):  # warm up: pool, caches
        await fn()
    sem = asyncio.Semaphore(conc)

    async def limited() -> None:
        async with sem:
            await fn()

    cpu0, wall0 = time.process_time(), time.perf_counter()
    if conc == 1:
        for _ in range(calls):
            await fn()
    else:
        await asyncio.gather(*(limited() for _ in range(calls)))
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    unit = "event" if per > 1 else "call"
    print(
        f"{label:<44} conc={conc:<3} {cpu / calls / per * 1e6:7.1f} us CPU/{unit}"
        f"  {calls / wall:7.0f} calls/s"
    )


async def run(url: str, calls: int, concurrency: int) -> None:
    req = ChatRequest.model_validate(BODY)
    stream_req = ChatRequest.model_validate({**BODY, "stream": True})
    slow = orjson.dumps({"chunks": 200, "chunk_delay_s": 0.001}).decode()
    async with (
        OpenAICompatProvider("bench", base_url=url, api_key="sk-bench") as p,
        OpenAICompatProvider("slow", base_url=url, headers={"x-fake-script": slow}) as slow_p,
        aiohttp.ClientSession() as session,
    ):

        async def chat() -> None:
            await p.chat(req, "gpt-4o-mini", CallContext("r"))

        async def stream() -> None:
            async for _chunk in p.chat_stream(stream_req, "gpt-4o-mini", CallContext("r")):
                pass

        async def slow_stream() -> None:
            async for _chunk in slow_p.chat_stream(stream_req, "m", CallContext("r")):
                pass

        data = orjson.dumps(req.upstream_body("gpt-4o-mini"))
        headers = {"Authorization": "Bearer sk-bench", "Content-Type": "application/json"}

        async def bare_aiohttp() -> None:
            async with session.post(url + "/chat/completions", data=data, headers=headers) as r:
                orjson.loads(await r.read())

        for conc in (1, concurrency):
            await measure("provider.chat()", chat, calls, conc)
            await measure("floor: bare aiohttp post + orjson", bare_aiohttp, calls, conc)
        await measure("floor: bare asyncio stream", await bare_stream(url, data), calls)
        for conc in (1, concurrency):
            await measure("provider.chat_stream() (7 events)", stream, calls, conc)
        await measure("chat_stream(), 200 chunks 1 ms apart", slow_stream, 20, per=203)

    cpu0 = time.process_time()
    for _ in range(calls):
        orjson.dumps(req.upstream_body("gpt-4o-mini"))
    body_us = (time.process_time() - cpu0) / calls * 1e6
    print(f"of which ChatRequest.upstream_body() + orjson.dumps: {body_us:.1f} us/call")


async def bare_stream(url: str, payload: bytes) -> Call:
    """The same exchange over a bare asyncio stream: the socket + event-loop floor."""
    host, port = url.split("//")[1].split("/")[0].split(":")
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: {host}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n"
    )
    raw = head.encode() + payload
    reader, writer = await asyncio.open_connection(host, int(port))

    async def once() -> None:
        writer.write(raw)
        headers = await reader.readuntil(b"\r\n\r\n")
        length = int(headers.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
        orjson.loads(await reader.readexactly(length))

    return once


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, default=5000)
    ap.add_argument("--concurrency", type=int, default=32)
    args = ap.parse_args()
    with run_fake_upstream() as fake:
        uvloop.run(run(fake.url, args.calls, args.concurrency))


if __name__ == "__main__":
    main()
