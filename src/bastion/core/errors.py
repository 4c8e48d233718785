"""The one error hierarchy of Bastion.

Every error that can reach a caller is a :class:`BastionError` with a stable
``code`` and an HTTP ``status``. The API layer maps it to an OpenAI-style body
``{"error": {"message", "type", "code", "param"}}``; nothing else is ever sent.

::

    BastionError
    ├── InvalidRequest            400 invalid_request
    │   ├── Unsupported           400 unsupported
    │   ├── PolicyError           400 invalid_policy (config; carries file:line)
    │   └── UnparseableDocument   400 unparseable_document (RAG ingestion)
    ├── AuthenticationError       401 authentication_error
    ├── PermissionDenied          403 permission_denied
    ├── NotFound                  404 not_found
    │   └── ModelNotFound         404 model_not_found
    ├── Conflict                  409 conflict
    ├── RequestTooLarge           413 request_too_large
    ├── RateLimited               429 rate_limited      (retry_after)
    ├── Overloaded                503 overloaded        (retry_after)
    └── UpstreamFailure           (base of provider-side failures; ``retryable``)
        ├── UpstreamError         502 upstream_error    (upstream_status)
        ├── UpstreamRateLimited   429 upstream_rate_limited (retry_after)
        ├── UpstreamTimeout       504 upstream_timeout
        ├── UpstreamConnectError  502 upstream_unavailable
        ├── NoHealthyDeployment   503 no_healthy_deployment (every breaker open)
        └── AllRoutesFailed       last failure's status, code of the last failure;
                                  ``failures`` holds every attempt's error

Messages never contain secrets or prompt content.
"""

from __future__ import annotations

from typing import Any


class BastionError(Exception):
    """Base of every error Bastion reports to a caller."""

    status: int = 500
    code: str = "internal_error"
    type: str = "server_error"

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        retry_after: float | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.retry_after = retry_after
        self.headers: dict[str, str] = dict(headers or {})

    def to_body(self) -> dict[str, Any]:
        """The OpenAI-style error body."""
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "code": self.code,
                "param": self.param,
            }
        }


class InvalidRequest(BastionError):
    status = 400
    code = "invalid_request"
    type = "invalid_request_error"


class Unsupported(InvalidRequest):
    """The request asks for something this provider or format cannot do (e.g. embeddings)."""

    code = "unsupported"


class PolicyError(InvalidRequest):
    """A policy file is invalid. ``problems`` are ``(file, line, reason)`` triples."""

    code = "invalid_policy"

    def __init__(self, problems: list[tuple[str, int, str]]) -> None:
        self.problems = problems
        text = "; ".join(f"{f}:{line}: {reason}" for f, line, reason in problems)
        super().__init__(text or "invalid policy")


class AuthenticationError(BastionError):
    status = 401
    code = "authentication_error"
    type = "authentication_error"


class PermissionDenied(BastionError):
    status = 403
    code = "permission_denied"
    type = "permission_error"


class NotFound(BastionError):
    status = 404
    code = "not_found"
    type = "invalid_request_error"


class ModelNotFound(NotFound):
    code = "model_not_found"


class Conflict(BastionError):
    """The object already exists (a collection name taken in the tenant)."""

    status = 409
    code = "conflict"
    type = "invalid_request_error"


class UnparseableDocument(InvalidRequest):
    """A file or upload could not be parsed; the message names it and says why."""

    code = "unparseable_document"


class ContentBlocked(BastionError):
    """A guardrail blocked a text; ``reasons`` names scanners and categories, never the text."""

    status = 400
    code = "content_blocked"
    type = "invalid_request_error"

    def __init__(self, message: str, *, reasons: list[str] | None = None) -> None:
        super().__init__(message)
        self.reasons = list(reasons or [])


class InvalidOutput(BastionError):
    """The model's answer failed its structured-output schema, also after one re-ask."""

    status = 422
    code = "invalid_output"
    type = "invalid_response_error"


class RequestTooLarge(BastionError):
    status = 413
    code = "request_too_large"
    type = "invalid_request_error"


class RateLimited(BastionError):
    status = 429
    code = "rate_limited"
    type = "rate_limit_error"


class BudgetExceeded(BastionError):
    """A hard budget would be passed; retrying will not help until the period ends."""

    status = 429
    code = "budget_exceeded"
    type = "insufficient_quota"


class Overloaded(BastionError):
    status = 503
    code = "overloaded"
    type = "server_error"


class UpstreamFailure(BastionError):
    """A provider call failed. ``retryable`` decides retry and fallback."""

    retryable: bool = True

    def __init__(
        self,
        message: str,
        *,
        deployment: str | None = None,
        retry_after: float | None = None,
        upstream_status: int | None = None,
        retryable: bool | None = None,
    ) -> None:
        super().__init__(message, retry_after=retry_after)
        self.deployment = deployment
        self.upstream_status = upstream_status
        if retryable is not None:
            self.retryable = retryable


class UpstreamError(UpstreamFailure):
    """The upstream answered with an error status (5xx retryable, 4xx not)."""

    status = 502
    code = "upstream_error"


class UpstreamClientError(UpstreamFailure):
    """The upstream rejected the request as invalid (a 4xx other than 408/409/429).

    Never retried, never falls back: the same request would fail elsewhere too.
    The status passes through so callers see 400, 404 or 422 as the upstream said.
    """

    code = "upstream_invalid_request"
    type = "invalid_request_error"
    retryable = False

    def __init__(self, message: str, *, upstream_status: int, deployment: str | None = None):
        super().__init__(message, deployment=deployment, upstream_status=upstream_status)
        self.status = upstream_status if 400 <= upstream_status < 500 else 400


class UpstreamRateLimited(UpstreamFailure):
    status = 429
    code = "upstream_rate_limited"
    type = "rate_limit_error"


class DeploymentQuotaExceeded(UpstreamRateLimited):
    """A deployment's own RPM/TPM quota (from the policy) is used up this minute.

    Raised before any call is made; the router moves on to the next route.
    """

    code = "deployment_quota_exceeded"


class UpstreamTimeout(UpstreamFailure):
    status = 504
    code = "upstream_timeout"


class UpstreamConnectError(UpstreamFailure):
    status = 502
    code = "upstream_unavailable"


class NoHealthyDeployment(UpstreamFailure):
    """Every deployment of a model is cooling down (circuit open)."""

    status = 503
    code = "no_healthy_deployment"


class AllRoutesFailed(UpstreamFailure):
    """Every deployment of a model (and its fallbacks) failed.

    Takes status and code of the last failure; ``failures`` holds each one, and
    :meth:`as_group` returns them as an :class:`ExceptionGroup`.
    """

    def __init__(self, failures: list[BastionError]) -> None:
        last = failures[-1]
        summary = ", ".join(f"{getattr(f, 'deployment', None) or '?'}: {f.code}" for f in failures)
        super().__init__(
            f"all routes failed ({summary}); last: {last.message}",
            retry_after=last.retry_after,
            retryable=False,
        )
        self.failures = failures
        self.status = last.status
        self.code = last.code
        self.type = last.type

    def as_group(self) -> ExceptionGroup[BastionError]:
        return ExceptionGroup("all routes failed", self.failures)
