"""The embedded defaults: what ``bastion serve`` runs with no policy file.

One ``local`` provider (the bundled SmolLM2-135M-Instruct chat model and the
all-MiniLM-L6-v2 embedder, both in-process, no network, no API key) and two
model aliases callers can use right away.
"""

from __future__ import annotations

from bastion.config.schema import ModelConfig, Policy, ProviderConfig, RouteConfig

LOCAL_CHAT = "local-chat"
LOCAL_EMBED = "local-embed"
CHAT_MODEL = "smollm2-135m-instruct"
EMBED_MODEL = "all-minilm-l6-v2"


def embedded_policy() -> Policy:
    return Policy(
        providers={"local": ProviderConfig(type="local", default_model=CHAT_MODEL)},
        models={
            LOCAL_CHAT: ModelConfig(
                routes=[RouteConfig(provider="local", model=CHAT_MODEL)],
                description="Bundled SmolLM2-135M-Instruct (llama.cpp, in-process)",
            ),
            LOCAL_EMBED: ModelConfig(
                type="embedding",
                routes=[RouteConfig(provider="local", model=EMBED_MODEL)],
                description="Bundled all-MiniLM-L6-v2 (int8 ONNX, 384 dimensions)",
            ),
        },
    )
