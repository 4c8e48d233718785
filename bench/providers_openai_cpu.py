"""CPU cost of ``OpenAICompatProvider.chat()`` / ``chat_stream()`` per call (not a test).

Starts the fake upstream in its own process and measures this process's CPU time
(user and kernel, ``os.times``) per call, sequentially and with concurrency, under uvloop.
Also shows the part spent building the body (``ChatRequest.upstream_body`` + orjson).

    .venv/bin/python bench/providers_openai_cpu.py [--calls 5000] [--concurrency 32]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time

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


async def floor(url: str, calls: int) -> None:
    """The same exchange over a bare asyncio stream: the socket + event-loop floor."""
    host, port = url.split("//")[1].split("/")[0].split(":")
    payload = orjson.dumps({**BODY, "model": "gpt-4o-mini"})
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

    for _ in range(300):
        await once()
    t0 = os.times()
    for _ in range(calls):
        await once()
    t1 = os.times()
    cpu = (t1.user - t0.user + t1.system - t0.system) / calls * 1e6
    print(f"floor (bare asyncio stream, same exchange), concurrency=1: {cpu:6.1f} us CPU/call")
    writer.close()


async def run(url: str, calls: int, concurrency: int) -> None:
    req = ChatRequest.model_validate(BODY)
    stream_req = ChatRequest.model_validate({**BODY, "stream": True})
    async with OpenAICompatProvider("bench", base_url=url, api_key="sk-bench") as p:

        async def one(_: int) -> None:
            await p.chat(req, "gpt-4o-mini", CallContext(request_id="r"))

        async def one_stream(_: int) -> None:
            async for _chunk in p.chat_stream(stream_req, "gpt-4o-mini", CallContext("r")):
                pass

        for fn in (one, one_stream):
            for i in range(300):  # warm up: pool, caches
                await fn(i)
            for conc in (1, concurrency):
                t0, wall0 = os.times(), time.perf_counter()
                if conc == 1:
                    for i in range(calls):
                        await fn(i)
                else:
                    sem = asyncio.Semaphore(conc)

                    async def limited(i: int, fn=fn, sem=sem) -> None:
                        async with sem:
                            await fn(i)

                    await asyncio.gather(*(limited(i) for i in range(calls)))
                t1, wall = os.times(), time.perf_counter() - wall0
                user = (t1.user - t0.user) / calls * 1e6
                system = (t1.system - t0.system) / calls * 1e6
                print(
                    f"{fn.__name__:<11} concurrency={conc:<3} calls={calls}: CPU/call "
                    f"{user + system:6.1f} us (user {user:6.1f}, kernel {system:6.1f}), "
                    f"{calls / wall:6.0f} calls/s"
                )

    cpu0 = time.process_time()
    for _ in range(calls):
        orjson.dumps(req.upstream_body("gpt-4o-mini"))
    body_us = (time.process_time() - cpu0) / calls * 1e6
    print(f"of which upstream_body() + orjson.dumps: {body_us:.1f} us/call")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, default=5000)
    ap.add_argument("--concurrency", type=int, default=32)
    args = ap.parse_args()
    with run_fake_upstream() as fake:
        uvloop.run(run(fake.url, args.calls, args.concurrency))
        uvloop.run(floor(fake.url, args.calls))


if __name__ == "__main__":
    main()
