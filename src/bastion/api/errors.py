"""Errors -> HTTP: every failure becomes an OpenAI-style body with a stable code.

Unknown exceptions become a 500 ``internal_error`` whose body carries only the
request id; the traceback goes to the log, never to the client.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, TypeVar

from pydantic import ValidationError

from bastion.core.errors import (
    BastionError,
    InvalidRequest,
    UpstreamClientError,
)

log = logging.getLogger("bastion.api")
T = TypeVar("T")


def from_validation(exc: ValidationError) -> InvalidRequest:
    """The first pydantic error as an ``invalid_request`` naming the field."""
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in err["loc"] if not (isinstance(p, str) and "[" in p))
    msg = err["msg"]
    if err["type"] == "missing":
        msg = "field required"
    text = f"{loc}: {msg}" if loc else msg
    if len(exc.errors()) > 1:
        text += f" (and {len(exc.errors()) - 1} more)"
    return InvalidRequest(text, param=loc or None)


def parse(validate: Callable[[dict[str, Any]], T], body: dict[str, Any]) -> T:
    """Validate a request body; a failure is a 400 naming the field."""
    try:
        return validate(body)
    except ValidationError as exc:
        raise from_validation(exc) from None


def to_error(exc: BaseException, request_id: str, *, expose_upstream: bool = True) -> BastionError:
    """Any exception as a :class:`BastionError`."""
    if isinstance(exc, BastionError):
        if isinstance(exc, UpstreamClientError) and not expose_upstream:
            return InvalidRequest("the upstream rejected the request")
        return exc
    if isinstance(exc, ValidationError):
        return from_validation(exc)
    log.error(
        "unhandled error",
        exc_info=exc,
        extra={"fields": {"request_id": request_id}},
    )
    err = BastionError(f"internal error (request id {request_id})")
    return err


def error_headers(err: BastionError, request_id: str) -> list[tuple[bytes, bytes]]:
    headers = [(b"x-request-id", request_id.encode())]
    if err.retry_after is not None:
        headers.append((b"retry-after", str(max(1, round(err.retry_after))).encode()))
    for k, v in err.headers.items():
        headers.append((k.encode(), v.encode()))
    return headers
