"""Prometheus metrics.

Each :class:`Metrics` owns a registry (so several apps can live in one test
process). Label children are cached per label tuple, because
``Metric.labels(...)`` costs microseconds and runs on every request.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
OVERHEAD_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
)


class Metrics:
    """The gateway's metrics; also the router's :class:`RouterObserver`."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "bastion_requests", "Requests served", ["endpoint", "model", "status"], registry=r
        )
        self.errors = Counter("bastion_errors", "Errors by code", ["endpoint", "code"], registry=r)
        self.latency = Histogram(
            "bastion_request_duration_seconds",
            "Time from request to last byte",
            ["endpoint", "model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.overhead = Histogram(
            "bastion_overhead_seconds",
            "Time spent in Bastion itself (total minus waiting on the upstream)",
            ["endpoint"],
            buckets=OVERHEAD_BUCKETS,
            registry=r,
        )
        self.ttft = Histogram(
            "bastion_time_to_first_token_seconds",
            "Streaming: time to the first chunk",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.tokens = Counter(
            "bastion_tokens", "Tokens by direction", ["model", "direction"], registry=r
        )
        self.attempts = Counter(
            "bastion_upstream_attempts",
            "Upstream attempts by deployment and outcome (ok or an error code)",
            ["deployment", "outcome"],
            registry=r,
        )
        self.upstream_latency = Histogram(
            "bastion_upstream_duration_seconds",
            "Upstream attempt duration",
            ["deployment"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.retries = Counter(
            "bastion_upstream_retries", "Retries by deployment", ["deployment"], registry=r
        )
        self.fallbacks = Counter(
            "bastion_fallbacks",
            "Moves to the next deployment after a failure",
            ["model"],
            registry=r,
        )
        self.breaker_state = Gauge(
            "bastion_breaker_state",
            "Circuit breaker state: 0 closed, 1 open, 2 half-open",
            ["deployment"],
            registry=r,
        )
        self.in_flight = Gauge("bastion_requests_in_flight", "Requests in flight", registry=r)
        self.policy_reloads = Counter(
            "bastion_policy_reloads", "Policy reloads by result", ["result"], registry=r
        )
        self.cache_lookups = Counter(
            "bastion_cache_lookups",
            "Response cache lookups by result (exact, semantic, miss)",
            ["model", "result"],
            registry=r,
        )
        self.cost_usd = Counter(
            "bastion_cost_usd", "Cost of requests in USD", ["model"], registry=r
        )
        self.unpriced_requests = Counter(
            "bastion_unpriced_requests", "Requests to a model with no price", ["model"], registry=r
        )
        self.budget_alerts = Counter(
            "bastion_budget_alerts", "Soft budgets passed, by scope", ["scope"], registry=r
        )
        self.queue_depth = Gauge(
            "bastion_queue_depth", "Rows waiting to be written, by queue", ["queue"], registry=r
        )
        self.queue_refused = Gauge(
            "bastion_queue_refused",
            "Rows a full queue turned away, by queue",
            ["queue"],
            registry=r,
        )
        self.guard_findings = Counter(
            "bastion_guard_findings",
            "Guardrail findings by kind of text, scanner, category and action",
            ["kind", "scanner", "category", "action"],
            registry=r,
        )
        self._children: dict[tuple[Any, ...], Any] = {}

    def _child(self, metric: Any, *labels: str) -> Any:
        key = (id(metric), *labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    # request-level
    def request(
        self, endpoint: str, model: str, status: int, seconds: float, overhead: float
    ) -> None:
        self._child(self.requests, endpoint, model, str(status)).inc()
        self._child(self.latency, endpoint, model).observe(seconds)
        self._child(self.overhead, endpoint).observe(overhead)

    def error(self, endpoint: str, code: str) -> None:
        self._child(self.errors, endpoint, code).inc()

    def usage(self, model: str, prompt_tokens: int, completion_tokens: int) -> None:
        if prompt_tokens:
            self._child(self.tokens, model, "input").inc(prompt_tokens)
        if completion_tokens:
            self._child(self.tokens, model, "output").inc(completion_tokens)

    def guard(self, kind: str, scanner: str, category: str, action: str) -> None:
        self._child(self.guard_findings, kind, scanner, category, action).inc()

    def cache(self, model: str, result: str) -> None:
        self._child(self.cache_lookups, model, result).inc()

    def cost(self, model: str, usd: float) -> None:
        if usd:
            self._child(self.cost_usd, model).inc(usd)

    def unpriced(self, model: str) -> None:
        self._child(self.unpriced_requests, model).inc()

    def budget_alert(self, scope: str) -> None:
        self._child(self.budget_alerts, scope).inc()

    def first_token(self, model: str, seconds: float) -> None:
        self._child(self.ttft, model).observe(seconds)

    # RouterObserver
    def attempt(self, deployment: str, outcome: str, seconds: float) -> None:
        self._child(self.attempts, deployment, outcome).inc()
        if seconds:
            self._child(self.upstream_latency, deployment).observe(seconds)

    def retry(self, deployment: str) -> None:
        self._child(self.retries, deployment).inc()

    def fallback(self, model: str) -> None:
        self._child(self.fallbacks, model).inc()

    def breaker(self, deployment: str, state: int) -> None:
        self._child(self.breaker_state, deployment).set(state)

    def render(self) -> bytes:
        return generate_latest(self.registry)
