"""OpenTelemetry spans following the GenAI semantic conventions.

Off by default: with no exporter the tracer is OpenTelemetry's no-op tracer
and the hot path only pays for a falsy check. ``telemetry.otlp_endpoint`` in
the policy (or ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``) turns on an OTLP/HTTP exporter
behind a batch processor (the ``otlp`` extra). Tests pass their own
``SpanExporter`` (e.g. an in-memory one).

Spans are named ``{gen_ai.operation.name} {gen_ai.request.model}`` (kind
CLIENT) and carry ``gen_ai.operation.name``, ``gen_ai.provider.name``,
``gen_ai.request.model``, ``gen_ai.response.model``, ``gen_ai.usage.*`` and
``error.type`` on failure. Message content is never recorded.
"""

from __future__ import annotations

from typing import Any

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.trace import SpanKind, Status, StatusCode, Tracer


class Tracing:
    """Creates GenAI spans when enabled; does nothing otherwise."""

    def __init__(
        self,
        *,
        service_name: str = "bastion",
        otlp_endpoint: str | None = None,
        exporter: SpanExporter | None = None,
    ) -> None:
        self.provider: TracerProvider | None = None
        self.tracer: Tracer | None = None
        if exporter is None and otlp_endpoint:
            exporter = _otlp_exporter(otlp_endpoint)
        if exporter is not None:
            self.provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
            processor = BatchSpanProcessor(exporter, schedule_delay_millis=500)
            self.provider.add_span_processor(processor)
            self.tracer = self.provider.get_tracer("bastion")

    @property
    def enabled(self) -> bool:
        return self.tracer is not None

    def record(
        self,
        *,
        operation: str,
        request_model: str,
        provider: str | None,
        response_model: str | None,
        start_ns: int,
        end_ns: int,
        attributes: dict[str, Any],
        error_type: str | None = None,
    ) -> None:
        """Emit one finished span (built after the fact, so no context juggling)."""
        if self.tracer is None:
            return
        attrs: dict[str, Any] = {
            "gen_ai.operation.name": operation,
            "gen_ai.request.model": request_model,
        }
        if provider:
            attrs["gen_ai.provider.name"] = provider
        if response_model:
            attrs["gen_ai.response.model"] = response_model
        attrs.update({k: v for k, v in attributes.items() if v is not None})
        span = self.tracer.start_span(
            f"{operation} {request_model}",
            kind=SpanKind.CLIENT,
            start_time=start_ns,
            attributes=attrs,
        )
        if error_type:
            span.set_attribute("error.type", error_type)
            span.set_status(Status(StatusCode.ERROR))
        span.end(end_time=end_ns)

    def shutdown(self) -> None:
        if self.provider is not None:
            self.provider.shutdown()

    def flush(self) -> None:
        if self.provider is not None:
            self.provider.force_flush()


def _otlp_exporter(endpoint: str) -> SpanExporter:
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import (  # type: ignore[import-not-found,unused-ignore]
            OTLPSpanExporter,
        )
    except ImportError as exc:  # pragma: no cover - depends on the extra
        raise RuntimeError("OTLP export needs the 'otlp' extra: pip install bastion[otlp]") from exc
    exporter: SpanExporter = OTLPSpanExporter(endpoint=endpoint)
    return exporter
