"""The policy file schema (config as code).

Every model is ``extra="forbid"``: a misspelt key is an error, never silently
ignored. Secrets are *references* (``env:NAME`` or ``file:/path``), never
literals; :func:`bastion.core.secrets.resolve` turns them into values at the
moment a provider is built, and they are never serialised back.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from bastion.core.secrets import SecretRef

NAME = r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}$"


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ProviderConfig(Strict):
    """One backend. ``type`` picks the adapter (built in or a registered plugin)."""

    type: str = Field(description="Adapter: openai, anthropic, local, fake, or a plugin's name.")
    base_url: str | None = None
    api_key: SecretRef | None = None
    headers: dict[str, str] = Field(default_factory=dict)
    max_connections: int = Field(default=256, ge=1, le=10_000)
    azure_api_version: str | None = None
    rerank_api: Literal["cohere", "tei"] = Field(
        default="cohere",
        description="Wire format of the upstream's /rerank: Cohere/Jina or Hugging Face TEI.",
    )
    anthropic_version: str | None = None
    # local provider
    model_path: str | None = None
    n_ctx: int = Field(default=2048, ge=256, le=131_072)
    n_threads: int | None = Field(default=None, ge=1)
    max_concurrency: int = Field(default=1, ge=1, le=64)
    max_queue: int = Field(default=16, ge=0, le=10_000)
    default_model: str | None = Field(
        default=None, description="Model used when a fallback names this provider alone."
    )

    @field_validator("headers")
    @classmethod
    def _no_literal_auth(cls, v: dict[str, str]) -> dict[str, str]:
        for key in v:
            if key.lower() in {"authorization", "x-api-key", "api-key"}:
                raise ValueError(f"header {key!r} carries a secret: use api_key with env:NAME")
        return v


class RouteConfig(Strict):
    """One deployment of a model: a provider and the provider's model name."""

    provider: str
    model: str | None = Field(default=None, description="Provider-side model name.")
    weight: float = Field(default=1.0, gt=0)
    rpm: int | None = Field(
        default=None, ge=1, description="Requests per minute at this deployment."
    )
    tpm: int | None = Field(default=None, ge=1, description="Tokens per minute at this deployment.")


class TimeoutConfig(Strict):
    connect_s: float = Field(default=5.0, gt=0)
    first_byte_s: float = Field(default=60.0, gt=0)
    total_s: float = Field(default=600.0, gt=0)
    stream_idle_s: float = Field(default=30.0, gt=0)


class RetryConfig(Strict):
    attempts: int = Field(default=2, ge=0, le=10, description="Retries after the first try.")
    backoff: Literal["exponential", "constant"] = "exponential"
    base_s: float = Field(default=0.2, ge=0)
    max_s: float = Field(default=8.0, ge=0)
    max_retry_after_s: float = Field(
        default=30.0, ge=0, description="A longer Retry-After moves on to the next route."
    )


class BreakerConfig(Strict):
    consecutive_failures: int = Field(default=5, ge=1)
    error_rate: float = Field(default=0.5, gt=0, le=1)
    window_s: float = Field(default=30.0, gt=0)
    min_requests: int = Field(default=10, ge=1)
    cooldown_s: float = Field(default=30.0, gt=0)


FallbackRef = Annotated[str, Field(pattern=NAME)] | RouteConfig


class SemanticCacheConfig(Strict):
    embedding_model: str = Field(description="An embedding model alias of this policy.")
    threshold: float = Field(default=0.95, gt=0, le=1, description="Cosine similarity for a hit.")


class CacheConfig(Strict):
    """Response caching for a chat model (scoped per tenant)."""

    exact: bool = Field(default=True, description="Cache identical requests.")
    ttl_s: float = Field(default=3600.0, gt=0)
    semantic: SemanticCacheConfig | None = Field(
        default=None, description="Also answer similar single-turn requests (opt-in)."
    )


ScannerType = Literal[
    "injection",
    "injection_rules",
    "injection_classifier",
    "pii",
    "ner",
    "secrets",
    "deny_list",
    "toxicity",
    "links",
]


class ScannerConfig(Strict):
    """One scanner of a guard pipeline and what to do when it finds something."""

    type: ScannerType
    action: Literal["block", "redact", "flag"] = "block"
    threshold: float = Field(default=0.5, ge=0, le=1, description="Minimum finding score.")
    entities: list[str] | None = Field(
        default=None, description="pii/ner/secrets: types to report."
    )
    keywords: list[str] = Field(default_factory=list, description="deny_list: words.")
    regexes: list[str] = Field(default_factory=list, description="deny_list: patterns.")
    topics: dict[str, list[str]] = Field(default_factory=dict, description="deny_list: topics.")
    allowed_domains: list[str] = Field(default_factory=list, description="links: allow-list.")
    tenants: list[str] = Field(default_factory=list, description="Only for these tenants.")


class GuardPipelineConfig(Strict):
    """Scanners per kind of text, and the output controls."""

    input: list[ScannerConfig] = Field(default_factory=list)
    retrieved: list[ScannerConfig] = Field(default_factory=list)
    tool_output: list[ScannerConfig] = Field(default_factory=list)
    output: list[ScannerConfig] = Field(default_factory=list)
    restore: bool = Field(default=True, description="Put redacted input values back in answers.")
    canary: bool = Field(default=False, description="Plant a system-prompt canary; block leaks.")
    json_schema: bool = Field(default=True, description="Check json_schema outputs; re-ask once.")
    stream_window: int = Field(default=256, ge=16, le=8192, description="Chars held back.")


class GuardrailsConfig(Strict):
    pipelines: dict[Annotated[str, Field(pattern=NAME)], GuardPipelineConfig] = Field(
        default_factory=dict
    )
    default: str | None = Field(
        default=None, description="Pipeline of models without their own, and of /v1/guard/scan."
    )


class ModelConfig(Strict):
    """A model alias callers use, and how it is served."""

    type: Literal["chat", "embedding", "rerank"] = "chat"
    routes: list[RouteConfig] = Field(min_length=1)
    fallbacks: list[FallbackRef] = Field(
        default_factory=list,
        description="Tried in order after every route failed: a model alias, a provider "
        "(its default model), or a {provider, model} route.",
    )
    strategy: Literal["weighted", "latency"] = "weighted"
    timeout_s: float | None = Field(default=None, gt=0, description="Shortcut for timeouts.total_s")
    timeouts: TimeoutConfig = Field(default_factory=TimeoutConfig)
    retries: RetryConfig = Field(default_factory=RetryConfig)
    breaker: BreakerConfig = Field(default_factory=BreakerConfig)
    cache: CacheConfig | None = Field(default=None, description="Off unless given.")
    guard: str | None = Field(default=None, description="A guardrails pipeline name, or 'none'.")
    description: str | None = None


class KeyConfig(Strict):
    """A virtual key declared in the policy file (besides keys made with the CLI)."""

    secret: SecretRef | None = None
    sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")
    models: list[str] = Field(default_factory=lambda: ["*"])
    admin: bool = Field(default=False, description="A platform admin (no tenant).")
    role: Literal["admin", "developer", "viewer"] | None = None
    tenant: str | None = Field(default=None, description="Tenant name (default: 'default').")
    team: str | None = Field(default=None, description="Team name within the tenant.")
    rpm: int | None = Field(default=None, ge=0)
    tpm: int | None = Field(default=None, ge=0)

    @model_validator(mode="after")
    def _one_secret(self) -> KeyConfig:
        if (self.secret is None) == (self.sha256 is None):
            raise ValueError("give exactly one of secret (env:NAME) or sha256")
        if self.admin and (self.tenant or self.team or self.role not in (None, "admin")):
            raise ValueError("a platform admin key (admin: true) has no tenant, team or other role")
        return self


class PriceConfig(Strict):
    """USD per million tokens."""

    input: float = Field(ge=0)
    output: float = Field(ge=0)
    cached_input: float | None = Field(default=None, ge=0, description="Default: input.")


class LoggingRuleConfig(Strict):
    mode: Literal["none", "metadata", "redacted", "full"]
    tenant: str = Field(default="*", description="Tenant name or glob.")
    model: str = Field(default="*", description="Model alias or glob.")


class LoggingConfig(Strict):
    """What the audit log keeps of each request (first matching rule wins)."""

    default: Literal["none", "metadata", "redacted", "full"] = "metadata"
    rules: list[LoggingRuleConfig] = Field(default_factory=list)
    retention_days: float | None = Field(
        default=30.0, gt=0, description="Prompts and completions are purged after this."
    )


class GovernanceConfig(Strict):
    default_max_tokens: int = Field(
        default=1024,
        ge=1,
        description="Output tokens reserved against budgets and TPM when a request sets none.",
    )
    logging: LoggingConfig = Field(default_factory=LoggingConfig)
    queue_size: int = Field(default=10_000, ge=10, description="Usage/audit rows held in memory.")


class ServerConfig(Strict):
    max_body_bytes: int = Field(default=4 * 1024 * 1024, ge=1024)
    expose_upstream_errors: bool = True


class TelemetryConfig(Strict):
    otlp_endpoint: str | None = Field(default=None, description="OTLP/HTTP traces endpoint.")
    service_name: str = "bastion"
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    access_log: bool = Field(default=True, description="One structured log line per request.")


class RetrievalConfig(Strict):
    """How queries are answered from collections (see docs/rag.md)."""

    mode: Literal["hybrid", "bm25", "dense"] = "hybrid"
    fusion: Literal["weighted", "rrf"] = "weighted"
    text_weight: float = Field(
        default=0.45, ge=0, le=1, description="BM25's share of the fused score."
    )
    rrf_k: int = Field(default=60, ge=1)
    candidates: int = Field(default=100, ge=1, le=1000, description="Per retriever.")
    recency_half_life_days: float | None = Field(default=None, gt=0)
    recency_weight: float = Field(default=0.2, ge=0, le=1)
    max_age_s: float | None = Field(default=None, gt=0)
    rerank_model: str | None = Field(
        default=None, description="A rerank model alias: reorders the fused candidates."
    )
    rerank_candidates: int = Field(default=30, ge=2, le=200)
    feedback_chunks: int = Field(
        default=0, ge=0, le=20, description="Pseudo-relevance feedback from the top N chunks."
    )
    feedback_terms: int = Field(default=10, ge=0, le=50)
    feedback_term_weight: float = Field(default=0.3, ge=0, le=1)
    feedback_vector_weight: float = Field(default=1.0, ge=0, le=5)


class AnsweringConfig(Strict):
    """Chat with ``bastion.collections``: context assembly and the citation check."""

    context_tokens: int = Field(default=1500, ge=64, description="Budget for sources.")
    min_similarity: float = Field(
        default=0.25, ge=-1, le=1, description="Dense similarity that makes a chunk relevant."
    )
    min_support: float = Field(
        default=0.5, ge=0, le=1, description="Share of a claim's terms a citation must hold."
    )


class RagConfig(Strict):
    embedding_model: str = Field(
        default="local-embed", description="Embedding alias for new collections."
    )
    max_upload_bytes: int = Field(default=64 * 1024 * 1024, ge=1024)
    retrieval: RetrievalConfig = Field(default_factory=RetrievalConfig)
    answering: AnsweringConfig = Field(default_factory=AnsweringConfig)


class Policy(Strict):
    """The whole policy file."""

    version: Literal[1] = 1
    providers: dict[Annotated[str, Field(pattern=NAME)], ProviderConfig] = Field(
        default_factory=dict
    )
    models: dict[Annotated[str, Field(pattern=NAME)], ModelConfig] = Field(default_factory=dict)
    keys: dict[Annotated[str, Field(pattern=NAME)], KeyConfig] = Field(default_factory=dict)
    server: ServerConfig = Field(default_factory=ServerConfig)
    telemetry: TelemetryConfig = Field(default_factory=TelemetryConfig)
    pricing: dict[str, PriceConfig] = Field(
        default_factory=dict,
        description="Prices by provider model name or 'provider/model' (over the built-in table).",
    )
    governance: GovernanceConfig = Field(default_factory=GovernanceConfig)
    guardrails: GuardrailsConfig = Field(default_factory=GuardrailsConfig)
    rag: RagConfig = Field(default_factory=RagConfig)
