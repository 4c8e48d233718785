"""Prices: exact micro-dollar costs and the lookup order of a PriceBook."""

from __future__ import annotations

import math
from fractions import Fraction

import pytest

from bastion.gateway.pricing import DEFAULT_PRICES, FREE, Price, PriceBook, usd


def exact_micro(price: Price, prompt: int, completion: int, cached: int = 0) -> int:
    """The cost computed in exact decimal arithmetic, rounded up."""
    cached = min(max(cached, 0), prompt)
    rate_in = Fraction(str(price.input))
    rate_cached = rate_in if price.cached_input is None else Fraction(str(price.cached_input))
    rate_out = Fraction(str(price.output))
    total = (prompt - cached) * rate_in + cached * rate_cached + completion * rate_out
    return math.ceil(total)


# --- Price.micro_usd -----------------------------------------------------------


def test_micro_usd_prices_cached_tokens_at_the_cached_rate() -> None:
    p = Price(2.5, 10.0, 1.25)
    # 600 uncached at 2.5 + 400 cached at 1.25 + 200 out at 10
    assert p.micro_usd(1000, 200, 400) == exact_micro(p, 1000, 200, 400) == 4000
    assert isinstance(p.micro_usd(1000, 200, 400), int)


def test_micro_usd_without_a_cached_rate_uses_the_input_rate() -> None:
    p = Price(3.0, 15.0)
    assert p.micro_usd(100, 10, 60) == p.micro_usd(100, 10, 0) == 100 * 3 + 10 * 15


def test_micro_usd_rounds_up() -> None:
    p = Price(0.15, 0.60)
    assert p.micro_usd(0, 0) == 0
    assert p.micro_usd(1, 0) == 1  # 0.15 micro-dollars
    assert p.micro_usd(7, 0) == 2  # 1.05
    assert p.micro_usd(0, 5) == 3  # exactly 3.0


def test_cached_is_clamped_to_the_prompt_and_to_zero() -> None:
    p = Price(2.0, 8.0, 0.5)
    assert p.micro_usd(100, 0, 500) == p.micro_usd(100, 0, 100) == 50
    assert p.micro_usd(100, 0, -5) == p.micro_usd(100, 0, 0) == 200


def test_free_costs_nothing() -> None:
    assert FREE.micro_usd(10**6, 10**6, 10**5) == 0


@pytest.mark.parametrize("model", sorted(DEFAULT_PRICES))
def test_table_prices_never_undercount(model: str) -> None:
    price = DEFAULT_PRICES[model]
    for prompt, completion, cached in [(1, 0, 0), (13, 7, 5), (50, 25, 50), (1234, 567, 89)]:
        exact = exact_micro(price, prompt, completion, cached)
        got = price.micro_usd(prompt, completion, cached)
        assert exact <= got <= exact + 1


@pytest.mark.parametrize(
    ("prompt", "completion", "cached"), [(50, 0, 0), (0, 25, 0), (200, 0, 200)]
)
def test_integer_costs_are_exact(prompt: int, completion: int, cached: int) -> None:
    price = DEFAULT_PRICES["o4-mini"]
    assert price.micro_usd(prompt, completion, cached) == exact_micro(
        price, prompt, completion, cached
    )


def test_usd() -> None:
    assert usd(1_500_000) == 1.5
    assert usd(0) == 0.0


# --- PriceBook.lookup ----------------------------------------------------------

DEPLOYED = Price(1.0, 2.0)
NAMED = Price(3.0, 4.0)


def test_deployment_override_beats_model_override_beats_table() -> None:
    book = PriceBook({"openai/gpt-4o": DEPLOYED, "gpt-4o": NAMED})
    assert book.lookup("openai", "gpt-4o") == DEPLOYED
    assert book.lookup("azure", "gpt-4o") == NAMED
    assert PriceBook().lookup("openai", "gpt-4o") == DEFAULT_PRICES["gpt-4o"]


def test_model_override_for_a_model_not_in_the_table() -> None:
    book = PriceBook({"qwen2.5-7b": NAMED, "vllm/llama-3": DEPLOYED})
    assert book.lookup("vllm", "qwen2.5-7b") == NAMED
    assert book.lookup("vllm", "llama-3") == DEPLOYED
    assert book.lookup("other", "llama-3") is None


@pytest.mark.parametrize(
    ("model", "base"),
    [
        ("gpt-4o-2024-08-06", "gpt-4o"),
        ("gpt-4o-mini-2024-07-18", "gpt-4o-mini"),
        ("claude-3-5-sonnet-20241022", "claude-3-5-sonnet"),
        ("claude-3-5-sonnet-latest", "claude-3-5-sonnet"),
        ("claude-sonnet-4-5-20250929", "claude-sonnet-4-5"),
        ("openai/gpt-4.1-mini", "gpt-4.1-mini"),
    ],
)
def test_dated_latest_and_prefixed_names_fall_back_to_the_base(model: str, base: str) -> None:
    assert PriceBook().lookup("p", model) == DEFAULT_PRICES[base]


def test_model_override_applies_to_dated_names() -> None:
    book = PriceBook({"gpt-4o": NAMED})
    assert book.lookup("openai", "gpt-4o-2024-08-06") == NAMED


def test_exact_dated_entry_beats_its_base() -> None:
    book = PriceBook({"gpt-4o-2024-05-13": NAMED})
    assert book.lookup("openai", "gpt-4o-2024-05-13") == NAMED
    assert book.lookup("openai", "gpt-4o-2024-08-06") == DEFAULT_PRICES["gpt-4o"]


def test_deployment_override_applies_to_dated_names() -> None:
    book = PriceBook({"azure/gpt-4o": DEPLOYED})
    assert book.lookup("azure", "gpt-4o-2024-08-06") == DEPLOYED


def test_free_providers_cost_nothing_whatever_the_overrides() -> None:
    book = PriceBook({"local/smollm2": NAMED}, free_providers=frozenset({"local"}))
    assert book.lookup("local", "smollm2") == FREE
    assert book.lookup("local", "gpt-4o") == FREE


@pytest.mark.parametrize("model", ["totally-unknown", "mystery-20240101", "x/y-latest", "gpt-4"])
def test_unknown_model_is_none(model: str) -> None:
    assert PriceBook().lookup("openai", model) is None


def test_memo_is_per_provider() -> None:
    book = PriceBook({"a/m": DEPLOYED}, free_providers=frozenset({"local"}))
    assert book.lookup("a", "m") == DEPLOYED
    assert book.lookup("b", "m") is None
    assert book.lookup("local", "gpt-4o") == FREE
    assert book.lookup("openai", "gpt-4o") == DEFAULT_PRICES["gpt-4o"]
    # asked again, in the other order, each keeps its own answer
    assert book.lookup("openai", "gpt-4o") == DEFAULT_PRICES["gpt-4o"]
    assert book.lookup("local", "gpt-4o") == FREE
    assert book.lookup("b", "m") is None
    assert book.lookup("a", "m") == DEPLOYED
