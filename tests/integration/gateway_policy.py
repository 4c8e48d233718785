"""The policy the gateway integration tests run with (fake upstream behind it)."""

from __future__ import annotations

from bastion.testing.fake_upstream import FakeUpstream

UPSTREAM_KEY = "sk-upstream-canary-7f3a9c"
ANTHROPIC_KEY = "sk-ant-canary-b81d22"


def policy(fake: FakeUpstream, extra: str = "") -> str:
    return f"""\
providers:
  up: {{type: openai, base_url: "{fake.url}", api_key: env:UPSTREAM_KEY}}
  up2: {{type: openai, base_url: "{fake.url}", api_key: env:UPSTREAM_KEY}}
  anth: {{type: anthropic, base_url: "{fake.base}", api_key: env:ANTHROPIC_KEY}}
models:
  gpt:
    routes: [{{provider: up, model: gpt-4o-mini}}]
    retries: {{attempts: 1, base_s: 0.01}}
    timeouts: {{first_byte_s: 2, stream_idle_s: 1}}
  claude:
    routes: [{{provider: anth, model: claude-3-5-haiku}}]
    retries: {{attempts: 0}}
  emb:
    type: embedding
    routes: [{{provider: up, model: text-embedding-3-small}}]
  failover:
    routes: [{{provider: up, model: primary}}]
    fallbacks: [{{provider: up2, model: secondary}}]
    retries: {{attempts: 1, base_s: 0.01}}
    timeouts: {{first_byte_s: 1, stream_idle_s: 1}}
    breaker: {{consecutive_failures: 3, cooldown_s: 60}}
server: {{max_body_bytes: 65536}}
{extra}"""


ENV = {"UPSTREAM_KEY": UPSTREAM_KEY, "ANTHROPIC_KEY": ANTHROPIC_KEY}
