"""Built-in pipelines: what guards a text when the policy names none."""

from __future__ import annotations

import functools

from bastion.config.schema import GuardPipelineConfig, ScannerConfig
from bastion.guard.pipeline import Pipeline

FULL = GuardPipelineConfig(
    input=[
        ScannerConfig(type="injection", action="block", threshold=0.5),
        ScannerConfig(type="secrets", action="redact"),
        ScannerConfig(type="pii", action="redact"),
    ],
    # documents and tool results are often Markdown, code and text *about* LLMs,
    # where the classifier is less reliable: flag there instead of blocking
    retrieved=[
        ScannerConfig(type="injection", action="flag", threshold=0.5),
        ScannerConfig(type="secrets", action="redact"),
        ScannerConfig(type="pii", action="redact"),
    ],
    tool_output=[
        ScannerConfig(type="injection", action="flag", threshold=0.5),
        ScannerConfig(type="secrets", action="redact"),
        ScannerConfig(type="pii", action="redact"),
    ],
    output=[
        ScannerConfig(type="secrets", action="redact"),
        ScannerConfig(type="pii", action="redact"),
    ],
)


@functools.cache
def full_pipeline() -> Pipeline:
    """Injection detection (block on input, flag elsewhere), secrets and PII (redact)."""
    return Pipeline("builtin-full", FULL)
