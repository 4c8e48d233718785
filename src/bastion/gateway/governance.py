"""Rate limits and budgets on the request path: reserve before, reconcile after.

Before a model call, :meth:`Governor.admit` takes one atomic
:meth:`~bastion.gateway.quota.Counters.acquire` over every counter the request
counts against, for each scope of its principal (key, team, tenant):

* requests this minute (RPM) and tokens this minute (TPM);
* each budget's micro-dollars and tokens this day or month.

The token amount is an *estimate*: the prompt's size (about four characters a
token) plus the output cap (``max_tokens``, else the policy's
``governance.default_max_tokens``); the cost amount prices that estimate at
the dearest deployment of the model. If any hard limit would be passed, the
request is refused (``rate_limited`` or ``budget_exceeded``) and nothing is
counted. After the call, :meth:`Governor.settle` replaces the estimate with
the real usage (one :meth:`~bastion.gateway.quota.Counters.adjust`), and
``settle(ticket, 0, 0)`` gives back the estimate of a call that failed.

Worst-case overshoot of a hard budget: a request is admitted only if its
reservation fits, so the only way past a cap is a request whose real usage
exceeds its reservation: a prompt the estimate under-counted, or output longer
than the reserved cap (an upstream ignoring ``max_tokens``, or a request that
set none and ran past ``default_max_tokens``). The overshoot is at most the sum
of those excesses over the requests in flight when the cap is reached; with
``max_tokens`` set on every request it is bounded by the prompt estimate's
error of those requests.
"""

from __future__ import annotations

import calendar
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from bastion.core.errors import BudgetExceeded, RateLimited
from bastion.gateway.auth import BudgetRule, Principal, ScopeLimits
from bastion.gateway.quota import Check, Counters
from bastion.gateway.tenancy import Budget

MINUTE_TTL = 120
_ADVERB = {"day": "daily", "month": "monthly"}
DAY = 86400

AlertHook = Callable[[ScopeLimits, BudgetRule, int, int], None]
"""Called with (scope, budget, value, limit) the first time a soft budget is passed."""


def estimate_tokens(text_chars: int) -> int:
    """Tokens in ``text_chars`` characters of ordinary text (about four a token)."""
    return (text_chars + 3) // 4


def message_chars(messages: Sequence[object]) -> int:
    """Characters of text in chat messages (content strings and text parts)."""
    total = 0
    for m in messages:
        content = getattr(m, "content", None)
        if isinstance(content, str):
            total += len(content) + 16  # role and framing tokens
        elif isinstance(content, list):
            for part in content:
                text = part.get("text") if isinstance(part, dict) else None
                total += len(text) if isinstance(text, str) else 64
        tool_calls = getattr(m, "tool_calls", None)
        if tool_calls:
            total += sum(len(str(c)) for c in tool_calls)
    return total


def _period(rule: BudgetRule, now: float) -> tuple[str, int]:
    """The window id of a budget and the seconds its counter must live."""
    if rule.period == "day":
        day = int(now // DAY)
        return f"d{day}", int((day + 1) * DAY - now) + DAY
    t = time.gmtime(now)
    return f"m{t.tm_year}{t.tm_mon:02d}", 33 * DAY


def _reset(seconds: float) -> str:
    """OpenAI's reset format: ``1s``, ``6m0s``."""
    s = max(0, int(seconds + 0.999))
    return f"{s // 60}m{s % 60}s" if s >= 60 else f"{s}s"


@dataclass(slots=True)
class Ticket:
    """What one admitted request reserved, to be settled or released."""

    reserved_tokens: int
    reserved_micro: int
    token_keys: list[tuple[str, int]] = field(default_factory=list)  # (key, ttl)
    micro_keys: list[tuple[str, int]] = field(default_factory=list)
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    settled: bool = False


class Governor:
    """Admits, settles and releases requests against their principal's limits."""

    def __init__(
        self,
        counters: Counters,
        *,
        clock: Callable[[], float] = time.time,
        on_soft_budget: AlertHook | None = None,
    ) -> None:
        self.counters = counters
        self.clock = clock
        self.on_soft_budget = on_soft_budget
        self._alerted: set[str] = set()

    @staticmethod
    def needed(principal: Principal) -> bool:
        """Whether ``principal`` has any limit or budget at all (else skip the counters)."""
        return any(s.rpm is not None or s.tpm is not None or s.budgets for s in principal.scopes)

    async def admit(self, principal: Principal, tokens: int, micro: int) -> Ticket:
        """Reserve ``tokens`` and ``micro`` dollars for one request, or raise."""
        now = self.clock()
        minute = int(now // 60)
        checks: list[Check] = []
        kinds: list[tuple[str, ScopeLimits, BudgetRule | None]] = []
        ticket = Ticket(tokens, micro)
        for scope in principal.scopes:
            tag = scope.tag
            if scope.rpm is not None:
                checks.append(Check(f"rl:{tag}:rpm:{minute}", 1, scope.rpm, MINUTE_TTL))
                kinds.append(("rpm", scope, None))
            if scope.tpm is not None:
                key = f"rl:{tag}:tpm:{minute}"
                checks.append(Check(key, tokens, scope.tpm, MINUTE_TTL))
                kinds.append(("tpm", scope, None))
                ticket.token_keys.append((key, MINUTE_TTL))
            for rule in scope.budgets:
                window, ttl = _period(rule, now)
                if rule.micro_usd is not None:
                    key = f"bg:{tag}:{rule.id}:{window}:usd"
                    checks.append(Check(key, micro, rule.micro_usd, ttl, rule.hard))
                    kinds.append(("usd", scope, rule))
                    ticket.micro_keys.append((key, ttl))
                if rule.tokens is not None:
                    key = f"bg:{tag}:{rule.id}:{window}:tok"
                    checks.append(Check(key, tokens, rule.tokens, ttl, rule.hard))
                    kinds.append(("tok", scope, rule))
                    ticket.token_keys.append((key, ttl))
        if not checks:
            return ticket
        out = await self.counters.acquire(checks)
        reset_s = 60 - now % 60
        if not out.admitted:
            kind, scope, failed_rule = kinds[out.failed]
            if failed_rule is None:
                limit = checks[out.failed].limit or 0
                raise RateLimited(
                    f"{scope.kind} rate limit of {limit} "
                    f"{'requests' if kind == 'rpm' else 'tokens'} per minute reached",
                    retry_after=max(1.0, float(int(reset_s + 0.999))),
                    headers=self._headers(checks, kinds, out.values, reset_s, denied=True),
                )
            what = "USD" if kind == "usd" else "tokens"
            raise BudgetExceeded(
                f"the {_ADVERB[failed_rule.period]} {what} budget of this {scope.kind} is spent",
                headers={"x-should-retry": "false"},
            )
        ticket.headers = self._header_bytes(checks, kinds, out.values, reset_s)
        if self.on_soft_budget is not None:
            for i, (_, scope, soft_rule) in enumerate(kinds):
                cap = checks[i].limit
                if soft_rule is None or soft_rule.hard or cap is None:
                    continue
                if out.values[i] > cap and checks[i].key not in self._alerted:
                    self._alerted.add(checks[i].key)
                    self.on_soft_budget(scope, soft_rule, out.values[i], cap)
        return ticket

    def _headers(
        self,
        checks: list[Check],
        kinds: list[tuple[str, ScopeLimits, BudgetRule | None]],
        values: tuple[int, ...],
        reset_s: float,
        denied: bool = False,
    ) -> dict[str, str]:
        """OpenAI's ``x-ratelimit-*`` headers for the tightest RPM and TPM limits."""
        out: dict[str, str] = {}
        for kind, unit in (("rpm", "requests"), ("tpm", "tokens")):
            best: tuple[int, int] | None = None
            for i, (k, _, rule) in enumerate(kinds):
                if k != kind or rule is not None:
                    continue
                limit = checks[i].limit or 0
                remaining = max(0, limit - values[i])
                if best is None or remaining < best[1]:
                    best = (limit, remaining)
            if best is not None:
                out[f"x-ratelimit-limit-{unit}"] = str(best[0])
                out[f"x-ratelimit-remaining-{unit}"] = str(best[1])
                out[f"x-ratelimit-reset-{unit}"] = _reset(reset_s)
        return out

    def _header_bytes(
        self,
        checks: list[Check],
        kinds: list[tuple[str, ScopeLimits, BudgetRule | None]],
        values: tuple[int, ...],
        reset_s: float,
    ) -> list[tuple[bytes, bytes]]:
        return [
            (k.encode(), v.encode())
            for k, v in self._headers(checks, kinds, values, reset_s).items()
        ]

    def reconcile(self, ticket: Ticket, tokens: int, micro: int) -> list[tuple[str, int, int]]:
        """The counter corrections that replace a ticket's estimate with real usage."""
        if ticket.settled:
            return []
        ticket.settled = True
        deltas = []
        dt = tokens - ticket.reserved_tokens
        dm = micro - ticket.reserved_micro
        if dt:
            deltas += [(key, dt, ttl) for key, ttl in ticket.token_keys]
        if dm:
            deltas += [(key, dm, ttl) for key, ttl in ticket.micro_keys]
        return deltas

    async def settle(self, ticket: Ticket, tokens: int, micro: int) -> None:
        """Correct the reservation with real usage (``0, 0`` releases it entirely)."""
        deltas = self.reconcile(ticket, tokens, micro)
        if deltas:
            await self.counters.adjust(deltas)

    def period_start(self, period: str) -> float:
        """The start (UTC) of the current day or month."""
        now = self.clock()
        if period == "day":
            return now - now % DAY
        t = time.gmtime(now)
        return float(calendar.timegm((t.tm_year, t.tm_mon, 1, 0, 0, 0)))

    async def seed(self, budget: Budget, spent_usd: float, spent_tokens: int) -> None:
        """Start a budget's counters at what was spent, unless they exist."""
        rule = BudgetRule(budget.id, budget.period, None, None, budget.mode == "hard")
        window, ttl = _period(rule, self.clock())
        base = f"bg:{budget.scope}:{budget.scope_id}:{budget.id}:{window}"
        if budget.usd is not None:
            await self.counters.seed(f"{base}:usd", round(spent_usd * 1_000_000), ttl)
        if budget.tokens is not None:
            await self.counters.seed(f"{base}:tok", spent_tokens, ttl)

    async def deployment(self, dep_id: str, rpm: int | None, tpm: int | None, tokens: int) -> bool:
        """Take one request (and ``tokens``) of a deployment's own quota, if it has room."""
        minute = int(self.clock() // 60)
        checks = []
        if rpm is not None:
            checks.append(Check(f"rl:dep:{dep_id}:rpm:{minute}", 1, rpm, MINUTE_TTL))
        if tpm is not None:
            checks.append(Check(f"rl:dep:{dep_id}:tpm:{minute}", tokens, tpm, MINUTE_TTL))
        if not checks:
            return True
        return (await self.counters.acquire(checks)).admitted
