"""Governor: RPM/TPM limits, budgets, reservation and settlement, on MemoryCounters."""

from __future__ import annotations

import math
import time
from datetime import UTC, datetime

import pytest

from bastion.core.errors import BudgetExceeded, RateLimited
from bastion.core.types import Message
from bastion.gateway.auth import BudgetRule, KeyRecord, Principal, ScopeLimits, principal_of
from bastion.gateway.governance import Governor, Ticket, estimate_tokens, message_chars
from bastion.gateway.quota import MemoryCounters
from bastion.gateway.tenancy import Budget

DAY = 86400
# 2024-10-04 01:00:40 UTC: 40 s into a minute, early in a month (the next day is the same month).
T0 = 20000 * DAY + 3600 + 40.0


class Clock:
    """A settable clock shared by the governor and its counters."""

    def __init__(self, t: float = T0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def make(clock: Clock | None = None) -> tuple[Governor, MemoryCounters, Clock]:
    clock = clock or Clock()
    counters = MemoryCounters(clock=clock)
    return Governor(counters, clock=clock), counters, clock


def caller(*scopes: ScopeLimits, key_id: str = "k1") -> Principal:
    return Principal(key_id=key_id, name=key_id, scopes=scopes)


def rpm_key(tag: str, now: float) -> str:
    return f"rl:{tag}:rpm:{int(now // 60)}"


def tpm_key(tag: str, now: float) -> str:
    return f"rl:{tag}:tpm:{int(now // 60)}"


def headers(ticket: Ticket) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in ticket.headers}


def day_window(now: float) -> str:
    return f"d{int(now // DAY)}"


def month_window(now: float) -> str:
    d = datetime.fromtimestamp(now, UTC)
    return f"m{d.year}{d.month:02d}"


# --- estimates -----------------------------------------------------------------


@pytest.mark.parametrize("chars", [0, 1, 3, 4, 5, 8, 9, 1001])
def test_estimate_tokens_is_ceiling_of_a_quarter(chars: int) -> None:
    assert estimate_tokens(chars) == math.ceil(chars / 4)


def test_message_chars_counts_strings_text_parts_and_tool_calls() -> None:
    call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    msgs = [
        Message(role="system", content="be brief"),
        Message(
            role="user",
            content=[
                {"type": "text", "text": "look at this"},
                {"type": "image_url", "image_url": {"url": "data:"}},
            ],
        ),
        Message(role="assistant", content=None, tool_calls=[call]),
    ]
    expected = (len("be brief") + 16) + len("look at this") + 64 + len(str(call))
    assert message_chars(msgs) == expected
    assert message_chars([]) == 0


# --- needed --------------------------------------------------------------------


def test_needed_only_when_some_scope_has_a_limit_or_budget() -> None:
    rule = BudgetRule("b", "day", 1, None, True)
    assert not Governor.needed(caller())
    assert not Governor.needed(caller(ScopeLimits("key", "k1"), ScopeLimits("tenant", "t1")))
    assert Governor.needed(caller(ScopeLimits("key", "k1"), ScopeLimits("tenant", "t1", rpm=1)))
    assert Governor.needed(caller(ScopeLimits("team", "tm", tpm=10)))
    assert Governor.needed(caller(ScopeLimits("key", "k1", budgets=(rule,))))
    assert Governor.needed(principal_of(KeyRecord("k1", "k1", "h", rpm=3)))
    assert not Governor.needed(principal_of(KeyRecord("k1", "k1", "h")))


async def test_no_limits_admits_without_counting() -> None:
    gov, counters, clock = make()
    ticket = await gov.admit(caller(ScopeLimits("key", "k1")), 100, 100)
    assert ticket.token_keys == [] and ticket.micro_keys == [] and ticket.headers == []
    assert (ticket.reserved_tokens, ticket.reserved_micro) == (100, 100)
    await gov.settle(ticket, 500, 500)
    assert await counters.get([tpm_key("key:k1", clock.t)]) == [0]


# --- RPM -----------------------------------------------------------------------


async def test_rpm_tightest_scope_in_headers_and_remaining_counts_down() -> None:
    gov, counters, clock = make()
    p = caller(
        ScopeLimits("key", "k1", rpm=5),
        ScopeLimits("team", "tm1", rpm=3),
        ScopeLimits("tenant", "t1", rpm=10),
    )
    reset = f"{60 - int(T0 % 60)}s"
    for n in range(1, 4):
        h = headers(await gov.admit(p, 10, 0))
        assert h["x-ratelimit-limit-requests"] == "3"
        assert h["x-ratelimit-remaining-requests"] == str(3 - n)
        assert h["x-ratelimit-reset-requests"] == reset
        assert "x-ratelimit-limit-tokens" not in h
    tags = ["key:k1", "team:tm1", "tenant:t1"]
    assert await counters.get([rpm_key(t, clock.t) for t in tags]) == [3, 3, 3]
    with pytest.raises(RateLimited):
        await gov.admit(p, 10, 0)


async def test_tightest_is_the_smallest_remaining_not_the_smallest_limit() -> None:
    gov, _, _ = make()
    tenant = ScopeLimits("tenant", "t1", rpm=10)
    other = caller(ScopeLimits("key", "k2", rpm=100), tenant, key_id="k2")
    for _ in range(7):
        await gov.admit(other, 1, 0)
    h = headers(await gov.admit(caller(ScopeLimits("key", "k1", rpm=5), tenant), 1, 0))
    # key: 5 - 1 = 4 left; tenant: 10 - 8 = 2 left -> the tenant is reported
    assert h["x-ratelimit-limit-requests"] == "10"
    assert h["x-ratelimit-remaining-requests"] == "2"


async def test_tpm_headers_report_tokens() -> None:
    gov, _, _ = make()
    p = caller(ScopeLimits("key", "k1", tpm=1000), ScopeLimits("tenant", "t1", tpm=600))
    h = headers(await gov.admit(p, 250, 0))
    assert h["x-ratelimit-limit-tokens"] == "600"
    assert h["x-ratelimit-remaining-tokens"] == str(600 - 250)
    assert "x-ratelimit-limit-requests" not in h


@pytest.mark.parametrize(
    ("offset", "retry", "reset"),
    [(0.0, 60, "1m0s"), (0.25, 60, "1m0s"), (20.0, 40, "40s"), (59.5, 1, "1s"), (59.75, 1, "1s")],
)
async def test_refusal_retry_after_and_reset_follow_the_minute(
    offset: float, retry: int, reset: str
) -> None:
    now = 20000 * DAY + 7 * 60 + offset
    gov, _, _ = make(Clock(now))
    p = caller(ScopeLimits("key", "k1", rpm=1))
    ok = headers(await gov.admit(p, 1, 0))
    assert ok["x-ratelimit-reset-requests"] == reset
    with pytest.raises(RateLimited) as info:
        await gov.admit(p, 1, 0)
    err = info.value
    assert err.code == "rate_limited" and err.status == 429
    assert err.retry_after is not None and 1 <= err.retry_after <= 60
    assert err.retry_after == retry
    assert err.headers["x-ratelimit-limit-requests"] == "1"
    assert err.headers["x-ratelimit-remaining-requests"] == "0"
    assert err.headers["x-ratelimit-reset-requests"] == reset
    assert "requests per minute" in err.message


async def test_refusal_counts_nothing_on_any_counter() -> None:
    gov, counters, clock = make()
    rule = BudgetRule("b1", "day", 10**9, 10**9, True)
    p = caller(
        ScopeLimits("key", "k1", rpm=10, tpm=10_000),
        ScopeLimits("team", "tm1", rpm=2),
        ScopeLimits("tenant", "t1", tpm=50_000, budgets=(rule,)),
    )
    ticket = await gov.admit(p, 100, 7)
    await gov.admit(p, 100, 7)
    keys = (
        [rpm_key(t, clock.t) for t in ("key:k1", "team:tm1")]
        + [k for k, _ in ticket.token_keys]
        + [k for k, _ in ticket.micro_keys]
    )
    before = await counters.get(keys)
    assert before == [2, 2, 200, 200, 200, 14]
    with pytest.raises(RateLimited) as info:
        await gov.admit(p, 100, 7)  # the team's RPM is spent
    assert "team rate limit of 2 requests" in info.value.message
    assert await counters.get(keys) == before


async def test_tpm_refusal_counts_no_request() -> None:
    gov, counters, clock = make()
    p = caller(ScopeLimits("key", "k1", rpm=10, tpm=1000))
    await gov.admit(p, 900, 0)
    with pytest.raises(RateLimited) as info:
        await gov.admit(p, 101, 0)
    assert "tokens per minute" in info.value.message
    assert info.value.headers["x-ratelimit-remaining-tokens"] == "100"
    assert await counters.get([rpm_key("key:k1", clock.t), tpm_key("key:k1", clock.t)]) == [
        1,
        900,
    ]
    await gov.admit(p, 100, 0)  # exactly the rest fits


async def test_next_minute_starts_fresh() -> None:
    gov, _, clock = make()
    p = caller(ScopeLimits("key", "k1", rpm=1))
    await gov.admit(p, 1, 0)
    with pytest.raises(RateLimited):
        await gov.admit(p, 1, 0)
    clock.t += 60 - clock.t % 60  # the next minute's first second
    h = headers(await gov.admit(p, 1, 0))
    assert h["x-ratelimit-remaining-requests"] == "0"
    assert h["x-ratelimit-reset-requests"] == "1m0s"


# --- settle --------------------------------------------------------------------


def settling_caller() -> Principal:
    rule = BudgetRule("b1", "day", 10**9, 10**6, True)
    return caller(ScopeLimits("key", "k1", tpm=10_000, budgets=(rule,)))


@pytest.mark.parametrize(("tokens", "micro"), [(160, 800), (30, 200), (100, 500), (0, 0)])
async def test_settle_corrects_by_the_delta(tokens: int, micro: int) -> None:
    gov, counters, _ = make()
    ticket = await gov.admit(settling_caller(), 100, 500)
    tok_keys = [k for k, _ in ticket.token_keys]
    usd_keys = [k for k, _ in ticket.micro_keys]
    assert len(tok_keys) == 2 and len(usd_keys) == 1
    assert await counters.get(tok_keys + usd_keys) == [100, 100, 500]
    await gov.settle(ticket, tokens, micro)
    assert ticket.settled
    assert await counters.get(tok_keys + usd_keys) == [tokens, tokens, micro]
    await gov.settle(ticket, tokens + 1000, micro + 1000)  # a second settle is a no-op
    assert await counters.get(tok_keys + usd_keys) == [tokens, tokens, micro]


async def test_release_gives_back_only_that_reservation() -> None:
    gov, counters, _ = make()
    p = settling_caller()
    first = await gov.admit(p, 100, 500)
    second = await gov.admit(p, 40, 60)
    await gov.settle(first, 0, 0)
    keys = [k for k, _ in second.token_keys + second.micro_keys]
    assert await counters.get(keys) == [40, 40, 60]


def test_reconcile_lists_deltas_once() -> None:
    gov, _, _ = make()
    ticket = Ticket(100, 500, token_keys=[("a", 120), ("b", 9)], micro_keys=[("c", 9)])
    assert gov.reconcile(ticket, 90, 500) == [("a", -10, 120), ("b", -10, 9)]
    assert gov.reconcile(ticket, 0, 0) == []


# --- budgets -------------------------------------------------------------------


async def test_hard_usd_budget_admits_while_the_reservation_fits() -> None:
    gov, counters, _ = make()
    rule = BudgetRule("b1", "day", 1000, None, True)
    p = caller(ScopeLimits("key", "k1"), ScopeLimits("team", "tm1", budgets=(rule,)))
    t1 = await gov.admit(p, 10, 400)
    await gov.admit(p, 10, 400)
    with pytest.raises(BudgetExceeded) as info:
        await gov.admit(p, 10, 201)
    err = info.value
    assert err.code == "budget_exceeded" and err.status == 429
    assert err.headers == {"x-should-retry": "false"}
    assert "USD budget of this team" in err.message
    ((key, _),) = t1.micro_keys
    assert await counters.get([key]) == [800]
    await gov.admit(p, 10, 200)  # exactly at the cap is allowed
    assert await counters.get([key]) == [1000]


async def test_daily_budget_message_says_daily() -> None:
    gov, _, _ = make()
    p = caller(ScopeLimits("key", "k1", budgets=(BudgetRule("b1", "day", 1, None, True),)))
    with pytest.raises(BudgetExceeded) as info:
        await gov.admit(p, 1, 2)
    assert "daily" in info.value.message


async def test_monthly_budget_message() -> None:
    gov, _, _ = make()
    p = caller(ScopeLimits("key", "k1", budgets=(BudgetRule("b1", "month", None, 5, True),)))
    with pytest.raises(BudgetExceeded) as info:
        await gov.admit(p, 6, 0)
    assert info.value.message == "the monthly tokens budget of this key is spent"


async def test_soft_budget_never_refuses_and_alerts_once_per_period() -> None:
    clock = Clock()
    counters = MemoryCounters(clock=clock)
    alerts: list[tuple[ScopeLimits, BudgetRule, int, int]] = []
    gov = Governor(
        counters, clock=clock, on_soft_budget=lambda s, r, v, c: alerts.append((s, r, v, c))
    )
    rule = BudgetRule("b1", "day", 1000, None, False)
    scope = ScopeLimits("tenant", "t1", budgets=(rule,))
    p = caller(ScopeLimits("key", "k1"), scope)
    await gov.admit(p, 1, 600)
    assert alerts == []
    await gov.admit(p, 1, 600)
    assert alerts == [(scope, rule, 1200, 1000)]
    for _ in range(3):
        await gov.admit(p, 1, 600)
    assert len(alerts) == 1
    clock.t += DAY  # a new day: a new period key, a new alert once passed again
    await gov.admit(p, 1, 1000)
    assert len(alerts) == 1  # at the cap is not past it
    await gov.admit(p, 1, 1)
    assert alerts[1] == (scope, rule, 1001, 1000)


async def test_soft_budget_without_hook_only_counts() -> None:
    gov, counters, _ = make()
    rule = BudgetRule("b1", "day", 10, None, False)
    p = caller(ScopeLimits("key", "k1", budgets=(rule,)))
    ticket = await gov.admit(p, 1, 50)
    await gov.admit(p, 1, 50)
    assert await counters.get([ticket.micro_keys[0][0]]) == [100]


async def test_token_budget() -> None:
    gov, counters, _ = make()
    rule = BudgetRule("bt", "month", None, 500, True)
    p = caller(ScopeLimits("key", "k1", budgets=(rule,)))
    ticket = await gov.admit(p, 200, 999_999)
    assert ticket.micro_keys == []  # no USD cap: cost is not counted
    await gov.admit(p, 200, 0)
    with pytest.raises(BudgetExceeded):
        await gov.admit(p, 101, 0)
    ((key, _),) = ticket.token_keys
    assert key == f"bg:key:k1:bt:{month_window(T0)}:tok"
    assert await counters.get([key]) == [400]
    await gov.admit(p, 100, 0)


async def test_day_and_month_windows_use_different_keys_and_a_new_day_is_fresh() -> None:
    gov, counters, clock = make()
    day = BudgetRule("bd", "day", 1000, None, True)
    month = BudgetRule("bm", "month", 10_000, None, True)
    p = caller(ScopeLimits("key", "k1", budgets=(day, month)))
    ticket = await gov.admit(p, 1, 600)
    day_key = f"bg:key:k1:bd:{day_window(T0)}:usd"
    month_key = f"bg:key:k1:bm:{month_window(T0)}:usd"
    assert [k for k, _ in ticket.micro_keys] == [day_key, month_key]
    with pytest.raises(BudgetExceeded):
        await gov.admit(p, 1, 600)
    clock.t += DAY
    assert month_window(clock.t) == month_window(T0)  # same month, next day
    nxt = await gov.admit(p, 1, 600)
    next_day_key = f"bg:key:k1:bd:{day_window(clock.t)}:usd"
    assert [k for k, _ in nxt.micro_keys] == [next_day_key, month_key]
    assert await counters.get([day_key, next_day_key, month_key]) == [600, 600, 1200]


async def test_budget_counter_ttls() -> None:
    gov, _, _ = make()
    day = BudgetRule("bd", "day", 10, None, True)
    month = BudgetRule("bm", "month", 10, None, True)
    ticket = await gov.admit(caller(ScopeLimits("key", "k1", budgets=(day, month))), 0, 1)
    (_, day_ttl), (_, month_ttl) = ticket.micro_keys
    end_of_day = (T0 // DAY + 1) * DAY
    assert day_ttl == int(end_of_day - T0) + DAY
    assert month_ttl == 33 * DAY


# --- deployments, periods, seeding ---------------------------------------------


async def test_deployment_quota_admits_exactly_rpm_per_minute() -> None:
    gov, counters, clock = make()
    results = [await gov.deployment("d1", 3, None, 10) for _ in range(5)]
    assert results == [True, True, True, False, False]
    assert await counters.get([f"rl:dep:d1:rpm:{int(clock.t // 60)}"]) == [3]
    clock.t += 60
    assert await gov.deployment("d1", 3, None, 10)
    assert await gov.deployment("d2", None, None, 10**9)


async def test_deployment_tpm_refusal_counts_no_request() -> None:
    gov, counters, clock = make()
    assert await gov.deployment("d1", 10, 100, 60)
    assert not await gov.deployment("d1", 10, 100, 60)
    minute = int(clock.t // 60)
    assert await counters.get([f"rl:dep:d1:rpm:{minute}", f"rl:dep:d1:tpm:{minute}"]) == [1, 60]
    assert await gov.deployment("d1", 10, 100, 40)


def test_period_start() -> None:
    gov, _, _ = make()
    assert gov.period_start("day") == T0 - T0 % DAY
    first = datetime.fromtimestamp(T0, UTC).replace(day=1, hour=0, minute=0, second=0)
    assert gov.period_start("month") == first.timestamp()
    assert time.gmtime(gov.period_start("month")).tm_mday == 1


async def test_seed_sets_budget_counters_that_admit_then_sees() -> None:
    gov, counters, _ = make()
    budget = Budget("b1", "team", "tm1", "t1", "day", usd=1.0, tokens=1000)
    await gov.seed(budget, 0.75, 900)
    rule = BudgetRule("b1", "day", 1_000_000, 1000, True)
    p = caller(ScopeLimits("key", "k1"), ScopeLimits("team", "tm1", budgets=(rule,)))
    ticket = await gov.admit(p, 50, 200_000)
    usd_key = f"bg:team:tm1:b1:{day_window(T0)}:usd"
    tok_key = f"bg:team:tm1:b1:{day_window(T0)}:tok"
    assert [k for k, _ in ticket.micro_keys] == [usd_key]
    assert await counters.get([usd_key, tok_key]) == [950_000, 950]
    with pytest.raises(BudgetExceeded):
        await gov.admit(p, 51, 0)
    # a second seed never overwrites live counters
    await gov.seed(budget, 0.0, 0)
    assert await counters.get([usd_key, tok_key]) == [950_000, 950]


async def test_seed_skips_absent_caps_and_existing_counters() -> None:
    gov, counters, _ = make()
    rule = BudgetRule("b2", "month", None, 100, True)
    p = caller(ScopeLimits("key", "k1", budgets=(rule,)))
    await gov.admit(p, 30, 0)
    budget = Budget("b2", "key", "k1", "t1", "month", tokens=100)
    await gov.seed(budget, 5.0, 90)
    base = f"bg:key:k1:b2:{month_window(T0)}"
    assert await counters.get([f"{base}:tok", f"{base}:usd"]) == [30, 0]
    # the USD counter was not created: seeding it directly still finds it absent
    assert await counters.seed(f"{base}:usd", 1, 60)
