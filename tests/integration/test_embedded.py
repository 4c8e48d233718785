"""Embedded defaults end to end: `bastion serve` with no policy, the bundled models."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from bastion.testing.server import BastionServer, free_port, run_bastion

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def embedded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BastionServer]:
    with run_bastion(None, tmp_path_factory.mktemp("embedded")) as srv:
        yield srv


@pytest.fixture
def client(embedded: BastionServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=embedded.url, api_key=embedded.admin_key, timeout=120)


def test_models_are_the_bundled_ones(client: openai.OpenAI) -> None:
    assert {m.id for m in client.models.list()} == {"local-chat", "local-embed"}


def test_chat_on_the_bundled_model(client: openai.OpenAI) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model="local-chat",
        messages=[{"role": "user", "content": "What is the capital of France?"}],
        max_tokens=24,
        temperature=0,
    )
    done = raw.parse()
    assert (done.choices[0].message.content or "").strip()
    assert done.usage is not None
    assert done.usage.prompt_tokens > 0 and 0 < done.usage.completion_tokens <= 24
    assert raw.headers["x-bastion-deployment"] == "local/smollm2-135m-instruct"


def test_streaming_on_the_bundled_model(client: openai.OpenAI) -> None:
    text, usage = [], None
    for chunk in client.chat.completions.create(
        model="local-chat",
        messages=[{"role": "user", "content": "Name three colours."}],
        max_tokens=24,
        stream=True,
        stream_options={"include_usage": True},
    ):
        if chunk.choices:
            text.append(chunk.choices[0].delta.content or "")
        if chunk.usage:
            usage = chunk.usage
    assert "".join(text).strip()
    assert usage is not None and usage.completion_tokens > 0


def test_embeddings_are_384_dimensional(client: openai.OpenAI) -> None:
    res = client.embeddings.create(model="local-embed", input=["a cat", "a kitten", "taxes"])
    vectors = [d.embedding for d in res.data]
    assert [len(v) for v in vectors] == [384, 384, 384]

    def cos(a: list[float], b: list[float]) -> float:
        return sum(x * y for x, y in zip(a, b, strict=True))

    assert cos(vectors[0], vectors[1]) > cos(vectors[0], vectors[2])


def test_admin_key_generated_once_when_none_is_given(tmp_path: Path) -> None:
    data = tmp_path / "fresh"
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "BASTION_ADMIN_KEY"}
    cmd = [sys.executable, "-m", "bastion", "serve", "--port", str(port), "--data-dir", str(data)]
    outs = []
    for _ in range(2):
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
        try:
            out = b""
            assert proc.stdout is not None
            while b"Uvicorn running" not in out and b"Application startup" not in out:
                line = proc.stdout.readline()
                if not line:
                    break
                out += line
        finally:
            proc.terminate()
            proc.wait(10)
        outs.append(out.decode())
    assert "Generated an admin key" in outs[0] and "bst-" in outs[0]
    assert "Generated an admin key" not in outs[1]
