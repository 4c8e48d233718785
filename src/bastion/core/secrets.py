"""Secret references and values that never leak.

A policy file names secrets by reference only: ``env:OPENAI_API_KEY`` or
``file:/run/secrets/openai``. :func:`resolve` reads the value when a provider
is built; the value lives in a :class:`Secret`, whose ``repr``/``str`` are
masked so it cannot end up in a log line, a trace or an error by accident.
Virtual keys are stored as SHA-256 digests (:func:`hash_key`).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path
from typing import Annotated

from pydantic import AfterValidator

from bastion.core.errors import InvalidRequest


def _check_ref(value: str) -> str:
    scheme, sep, rest = value.partition(":")
    if not sep or scheme not in {"env", "file"} or not rest:
        raise ValueError(
            "secrets must be references like env:NAME or file:/path, never literal values"
        )
    return value


SecretRef = Annotated[str, AfterValidator(_check_ref)]
"""A validated ``env:NAME`` / ``file:/path`` reference (a pydantic field type)."""


class Secret:
    """A secret value. ``str()`` and ``repr()`` are masked; use :meth:`reveal`."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__


def resolve(ref: str | None) -> Secret | None:
    """Read a reference's value. A missing variable or file is an ``InvalidRequest``."""
    if ref is None:
        return None
    scheme, _, rest = ref.partition(":")
    if scheme == "env":
        value = os.environ.get(rest)
        if value is None:
            raise InvalidRequest(f"environment variable {rest} (from {ref}) is not set")
        return Secret(value)
    if scheme == "file":
        try:
            return Secret(Path(rest).read_text().strip())
        except OSError as exc:
            raise InvalidRequest(f"cannot read secret file {rest}: {exc.strerror}") from None
    raise InvalidRequest(f"not a secret reference: scheme {scheme!r}")


KEY_PREFIX = "bst-"


def new_key() -> str:
    """A new virtual key secret (shown once, stored only as its hash)."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_key(secret: str) -> str:
    """SHA-256 hex digest of a key; keys are high-entropy so no salt/KDF is needed."""
    return hashlib.sha256(secret.encode()).hexdigest()


def same_digest(a: str, b: str) -> bool:
    return hmac.compare_digest(a, b)
