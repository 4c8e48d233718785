"""Helpers shared by the eval unit tests."""

from __future__ import annotations

from typing import Any

from bastion.evals.suite import Suite


def make_suite(*scorers: dict[str, Any], repetitions: int = 1) -> Suite:
    """A one-case suite against model ``chat`` with ``scorers``."""
    return Suite.model_validate(
        {
            "name": "demo",
            "target": {"model": "chat"},
            "dataset": {"cases": [{"input": "x"}]},
            "scorers": list(scorers),
            "repetitions": repetitions,
        }
    )
