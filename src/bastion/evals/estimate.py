"""The ``--dry-run`` arithmetic: calls, tokens and cost of a suite before any call."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import orjson

from bastion.config.schema import Policy
from bastion.core.errors import BastionError
from bastion.evals.suite import Suite
from bastion.evals.types import Case
from bastion.gateway.pricing import FREE, Price, PriceBook
from bastion.providers import registry

DEFAULT_MAX_TOKENS = 256
JUDGE_TEMPLATE_TOKENS = 300  # the judge prompt's own instructions
JUDGE_OUTPUT_TOKENS = 200  # a verdict and its reasons
LLM_SCORERS = {"judge"}


@dataclass(frozen=True, slots=True)
class Estimate:
    """What a run will cost, worked out before any call (``--dry-run``).

    Tokens are estimates (4 characters a token; every answer as long as its
    ``max_tokens``, so an upper bound for outputs). ``cost_usd`` is None when
    no price is known (a remote gateway); ``unpriced`` names the aliases
    without a price, which the cost leaves out.
    """

    cases: int
    repetitions: int
    target_calls: int
    judge_calls: int
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float | None
    unpriced: tuple[str, ...] = ()


def _tokens(chars: int) -> int:
    return math.ceil(chars / 4)


def _chars(case: Case) -> int:
    if isinstance(case.input, str):
        n = len(case.input)
    else:
        n = sum(len(orjson.dumps(m.get("content", ""))) for m in case.input)
    return n + sum(len(str(v)) for v in case.variables.values())


def estimate_cost(
    suite: Suite, cases: Iterable[Case], prices: Mapping[str, Price] | None
) -> Estimate:
    """Tokens and cost of running ``suite`` over ``cases``, before any call.

    ``prices`` maps model aliases to their price (see :func:`policy_prices`);
    None means prices are unknown (cost None). Per row: the target call's
    prompt (input, variables and system prompt) and its output cap
    (``params.max_tokens``, default 256); per judge scorer, a judge call over
    the input, the expected answer, the output, the rubric and a fixed template.
    """
    spec = suite.target
    reps = suite.repetitions
    params = spec.params
    max_out = int(params.get("max_tokens") or params.get("max_completion_tokens") or 0)
    max_out = max_out or DEFAULT_MAX_TOKENS
    chats = spec.kind != "retrieval"
    system = len(spec.system or "")
    judges = [s for s in suite.scorers if s.type in LLM_SCORERS]
    n = 0
    tokens: dict[str, list[int]] = {}  # alias -> [prompt, completion]

    def add(alias: str, p: int, c: int) -> None:
        acc = tokens.setdefault(alias, [0, 0])
        acc[0] += p
        acc[1] += c

    target_alias = _alias_of(suite)
    for case in cases:
        n += 1
        chars = _chars(case)
        if chats:
            add(target_alias, reps * _tokens(chars + system), reps * max_out)
        for j in judges:
            calls = reps * (2 if j.agreement else 1)
            extra = len(j.rubric or "") + len(str(case.expected or ""))
            prompt = _tokens(chars + extra) + max_out + JUDGE_TEMPLATE_TOKENS
            add(str(j.model), calls * prompt, calls * JUDGE_OUTPUT_TOKENS)
    judge_calls = n * reps * sum(2 if j.agreement else 1 for j in judges)
    cost: float | None = None
    unpriced: list[str] = []
    if prices is not None:
        cost = 0.0
        for alias, (p, c) in tokens.items():
            price = prices.get(alias)
            if price is None:
                unpriced.append(alias)
                continue
            cost += (p * price.input + c * price.output) / 1e6
    return Estimate(
        cases=n,
        repetitions=reps,
        target_calls=n * reps if chats else 0,
        judge_calls=judge_calls,
        prompt_tokens=sum(p for p, _ in tokens.values()),
        completion_tokens=sum(c for _, c in tokens.values()),
        cost_usd=cost,
        unpriced=tuple(unpriced),
    )


def _alias_of(suite: Suite) -> str:
    spec = suite.target
    if spec.kind == "http":
        assert spec.http is not None
        return f"http:{spec.http.model}"
    if spec.kind == "prompt" and not spec.model:
        return f"prompt:{spec.prompt}"
    return str(spec.model)


def policy_prices(policy: Policy) -> dict[str, Price]:
    """Each chat model alias's price: the dearest of its routes (as budgets reserve)."""
    free = frozenset(n for n, p in policy.providers.items() if p.type in ("local", "fake"))
    overrides = {n: Price(p.input, p.output, p.cached_input) for n, p in policy.pricing.items()}
    book = PriceBook(overrides, free_providers=free)
    out: dict[str, Price] = {}
    for alias, m in policy.models.items():
        found: list[Price] = []
        for r in m.routes:
            cfg = policy.providers.get(r.provider)
            if cfg is None:
                continue
            try:
                model = r.model or registry.default_model(r.provider, cfg)
            except BastionError:
                continue
            price = FREE if r.provider in free else book.lookup(r.provider, model)
            if price is not None:
                found.append(price)
        if found:
            out[alias] = Price(max(p.input for p in found), max(p.output for p in found))
    return out
