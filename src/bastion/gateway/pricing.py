"""Prices per provider model, and the cost of a request.

Prices are USD per million tokens: input, output, and cached input (prompt
tokens the provider served from its prompt cache). The policy's ``pricing``
section is searched first, by deployment (``provider/model``) and then by the
provider's model name; then the built-in table of public list prices below.
A dated or ``-latest`` model name falls back to its base name
(``gpt-4o-2024-08-06`` is priced as ``gpt-4o``). Local models cost nothing.
A model priced nowhere costs 0 and is counted in the
``bastion_unpriced_requests_total`` metric, so it cannot go unnoticed.

Costs are kept as integer micro-dollars on the hot path (budgets compare
integers) and reported as USD.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Price:
    input: float
    output: float
    cached_input: float | None = None

    def micro_usd(self, prompt: int, completion: int, cached: int = 0) -> int:
        """The cost in micro-dollars (rounded up, so budgets never under-count)."""
        cached = min(max(cached, 0), prompt)
        cached_rate = self.input if self.cached_input is None else self.cached_input
        # USD per million tokens == micro-dollars per token
        micro = (prompt - cached) * self.input + cached * cached_rate + completion * self.output
        micro = round(micro, 6)  # drop float noise (50 * 1.10 == 55.00000000000001)
        whole = int(micro)
        return whole if micro == whole else whole + 1


FREE = Price(0.0, 0.0, 0.0)

# Public list prices, USD per million tokens (input, output, cached input), late 2025.
DEFAULT_PRICES: dict[str, Price] = {
    "gpt-5": Price(1.25, 10.0, 0.125),
    "gpt-5-mini": Price(0.25, 2.0, 0.025),
    "gpt-5-nano": Price(0.05, 0.40, 0.005),
    "gpt-4.1": Price(2.0, 8.0, 0.50),
    "gpt-4.1-mini": Price(0.40, 1.60, 0.10),
    "gpt-4.1-nano": Price(0.10, 0.40, 0.025),
    "gpt-4o": Price(2.50, 10.0, 1.25),
    "gpt-4o-mini": Price(0.15, 0.60, 0.075),
    "o3": Price(2.0, 8.0, 0.50),
    "o4-mini": Price(1.10, 4.40, 0.275),
    "gpt-3.5-turbo": Price(0.50, 1.50),
    "text-embedding-3-small": Price(0.02, 0.0),
    "text-embedding-3-large": Price(0.13, 0.0),
    "text-embedding-ada-002": Price(0.10, 0.0),
    "claude-opus-4": Price(15.0, 75.0, 1.50),
    "claude-opus-4-1": Price(15.0, 75.0, 1.50),
    "claude-sonnet-4": Price(3.0, 15.0, 0.30),
    "claude-sonnet-4-5": Price(3.0, 15.0, 0.30),
    "claude-3-7-sonnet": Price(3.0, 15.0, 0.30),
    "claude-3-5-sonnet": Price(3.0, 15.0, 0.30),
    "claude-haiku-4-5": Price(1.0, 5.0, 0.10),
    "claude-3-5-haiku": Price(0.80, 4.0, 0.08),
    "claude-3-haiku": Price(0.25, 1.25, 0.03),
}

_SUFFIX = re.compile(r"(-\d{4}-\d{2}-\d{2}|-\d{8}|-latest)$")


class PriceBook:
    """Resolves the price of a deployment; resolutions are memoised per book."""

    def __init__(
        self,
        overrides: Mapping[str, Price] | None = None,
        *,
        free_providers: frozenset[str] = frozenset(),
    ) -> None:
        self.overrides = dict(overrides or {})
        self.free_providers = free_providers
        self._memo: dict[tuple[str, str], Price | None] = {}

    def lookup(self, provider: str, model: str) -> Price | None:
        """The price of ``model`` at ``provider``, or None when it is priced nowhere."""
        memo_key = (provider, model)
        if memo_key in self._memo:
            return self._memo[memo_key]
        price = self._find(provider, model)
        self._memo[memo_key] = price
        return price

    def _find(self, provider: str, model: str) -> Price | None:
        if provider in self.free_providers:
            return FREE
        for name in (f"{provider}/{model}", model):
            if name in self.overrides:
                return self.overrides[name]
        base = model.rsplit("/", 1)[-1]
        while True:
            if f"{provider}/{base}" in self.overrides:
                return self.overrides[f"{provider}/{base}"]
            for table in (self.overrides, DEFAULT_PRICES):
                if base in table:
                    return table[base]
            stripped = _SUFFIX.sub("", base)
            if stripped == base:
                return None
            base = stripped


def usd(micro: int) -> float:
    return micro / 1_000_000
