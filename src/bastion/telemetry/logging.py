"""Structured JSON logs.

One JSON object per line on stderr: ``ts``, ``level``, ``logger``, ``event``
and keyword fields (``log.info("request", extra={"fields": {...}})`` or
:func:`event`). Message content is never logged, and a last-line filter
masks anything that looks like a bearer token or an API key, so a secret
cannot reach a log line even by mistake.
"""

from __future__ import annotations

import logging
import re
import sys
import time
from typing import Any

import orjson

_SECRET = re.compile(
    r"(?i)(bearer\s+)[A-Za-z0-9._~+/=-]{8,}|"
    r"\b(sk-[A-Za-z0-9_-]{8,}|bst-[A-Za-z0-9_-]{8,}|sk-ant-[A-Za-z0-9_-]{8,})"
)


def mask_secrets(text: str) -> str:
    """Replace bearer tokens and known key formats with ``***``."""
    return _SECRET.sub(lambda m: (m.group(1) or "") + "***", text)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            out.update(fields)
        if record.exc_info and record.exc_info[0] is not None:
            out["error.type"] = record.exc_info[0].__name__
            out["exception"] = self.formatException(record.exc_info)
        return mask_secrets(orjson.dumps(out, default=str).decode())


def configure(level: str = "info") -> None:
    """Install the JSON handler on the root logger (idempotent)."""
    root = logging.getLogger()
    for h in list(root.handlers):
        if getattr(h, "_bastion", False):
            root.removeHandler(h)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    handler._bastion = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level.upper())
    for noisy in ("uvicorn.access",):
        logging.getLogger(noisy).disabled = True
    for name in ("uvicorn", "uvicorn.error"):
        lg = logging.getLogger(name)
        lg.handlers.clear()
        lg.propagate = True


def event(logger: logging.Logger, name: str, level: int = logging.INFO, **fields: Any) -> None:
    """Log one structured event."""
    if logger.isEnabledFor(level):
        logger.log(level, name, extra={"fields": fields})


def now_ms() -> float:
    return time.time() * 1000
