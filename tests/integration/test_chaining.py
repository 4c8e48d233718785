"""Bastion in front of another Bastion: the `openai` provider speaks to any compatible API."""

from __future__ import annotations

from pathlib import Path

import openai

from bastion.testing.fake_upstream import FakeUpstream
from bastion.testing.server import run_bastion
from tests.integration.gateway_policy import ENV, policy


def test_bastion_behind_bastion(fake: FakeUpstream, tmp_path: Path) -> None:
    with run_bastion(policy(fake), tmp_path / "inner", env=ENV, admin_key="inner-key") as inner:
        outer_policy = f"""\
providers:
  inner: {{type: openai, base_url: "{inner.url}", api_key: env:INNER_KEY}}
models:
  chat: {{routes: [{{provider: inner, model: gpt}}]}}
  vectors: {{type: embedding, routes: [{{provider: inner, model: emb}}]}}
"""
        with run_bastion(outer_policy, tmp_path / "outer", env={"INNER_KEY": "inner-key"}) as outer:
            client = openai.OpenAI(base_url=outer.url, api_key=outer.admin_key, max_retries=0)
            raw = client.chat.completions.with_raw_response.create(
                model="chat", messages=[{"role": "user", "content": "two hops"}]
            )
            assert raw.parse().choices[0].message.content == "echo: two hops"
            assert raw.headers["x-bastion-deployment"] == "inner/gpt"
            text = "".join(
                c.choices[0].delta.content or ""
                for c in client.chat.completions.create(
                    model="chat", messages=[{"role": "user", "content": "streamed"}], stream=True
                )
                if c.choices
            )
            assert text == "echo: streamed"
            emb = client.embeddings.create(model="vectors", input="x", dimensions=4)
            assert len(emb.data[0].embedding) == 4
    # the innermost upstream saw the inner Bastion's provider key, not the callers' keys
    assert {r["headers"]["authorization"] for r in fake.requests()} == {
        f"Bearer {ENV['UPSTREAM_KEY']}"
    }
