"""Build providers from policy entries, built-ins and plugins alike.

Every provider type, built in or third-party, registers a factory
``(name: str, cfg: ProviderConfig) -> Provider`` under the entry-point group
``bastion.providers`` (the built-ins are declared in Bastion's own
``pyproject.toml``), so a plugin package adds a type the same way Bastion does.
Factories import their adapter lazily: the local model's heavy dependencies
load only when a ``local`` provider is configured.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib.metadata import entry_points

from bastion.config.schema import ProviderConfig
from bastion.core.errors import InvalidRequest
from bastion.core.secrets import resolve
from bastion.providers.base import Provider

Factory = Callable[[str, ProviderConfig], Provider]


def _key(cfg: ProviderConfig) -> str | None:
    secret = resolve(cfg.api_key)
    return secret.reveal() if secret is not None else None


def build_openai(name: str, cfg: ProviderConfig) -> Provider:
    from bastion.providers.openai_compat import OpenAICompatProvider

    return OpenAICompatProvider(
        name,
        base_url=cfg.base_url or "https://api.openai.com/v1",
        api_key=_key(cfg),
        headers=dict(cfg.headers),
        max_connections=cfg.max_connections,
        azure_api_version=cfg.azure_api_version,
        rerank_api=cfg.rerank_api,
    )


def build_anthropic(name: str, cfg: ProviderConfig) -> Provider:
    from bastion.providers.anthropic import AnthropicProvider

    return AnthropicProvider(
        name,
        api_key=_key(cfg),
        base_url=cfg.base_url or "https://api.anthropic.com",
        anthropic_version=cfg.anthropic_version or "2023-06-01",
        max_connections=cfg.max_connections,
    )


def build_local(name: str, cfg: ProviderConfig) -> Provider:
    from bastion.providers.local import LocalProvider

    return LocalProvider(
        name,
        model_path=cfg.model_path,
        n_ctx=cfg.n_ctx,
        n_threads=cfg.n_threads,
        max_concurrency=cfg.max_concurrency,
        max_queue=cfg.max_queue,
    )


def build_fake(name: str, cfg: ProviderConfig) -> Provider:
    from bastion.providers.fake import FakeProvider

    return FakeProvider(name)


BUILTIN: dict[str, Factory] = {
    "openai": build_openai,
    "anthropic": build_anthropic,
    "local": build_local,
    "fake": build_fake,
}


def factories() -> dict[str, Factory]:
    """Every registered provider type (entry points; built-ins as a safety net)."""
    found: dict[str, Factory] = dict(BUILTIN)
    for ep in entry_points(group="bastion.providers"):
        if ep.name not in BUILTIN:
            found[ep.name] = ep.load()
    return found


def build(name: str, cfg: ProviderConfig, registry: dict[str, Factory] | None = None) -> Provider:
    reg = registry if registry is not None else factories()
    factory = reg.get(cfg.type)
    if factory is None:
        known = ", ".join(sorted(reg))
        raise InvalidRequest(f"provider {name!r}: unknown type {cfg.type!r} (known: {known})")
    return factory(name, cfg)


def default_model(name: str, cfg: ProviderConfig) -> str:
    """The model a fallback naming only this provider uses."""
    if cfg.default_model:
        return cfg.default_model
    if cfg.type == "local":
        return "smollm2-135m-instruct"
    raise InvalidRequest(f"provider {name!r} has no default_model for a bare fallback")
