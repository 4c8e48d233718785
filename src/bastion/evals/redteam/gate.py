"""The red-team gate: zero tolerance for critical entries, thresholds for the rest.

A run fails when

* a critical entry (a category, or ``category:technique`` such as
  ``output_handling:exfiltration``) has any successful attack, or none of its
  probes could be scored;
* a category's attack success rate exceeds its threshold (``thresholds``,
  else ``default_threshold``; no bar: reported only);
* a category of the suite has probes but none could be scored;
* more probes errored than ``max_error_rate`` allows (skipped ones aside).

:func:`make_redteam_gate` wraps a whole run as a :class:`~bastion.evals.ports.Gate`
(``kind="redteam"``) for ``bastion prompts promote``: the prompt about to be
promoted replaces the suite's target prompt.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from bastion.core.errors import InvalidRequest
from bastion.evals.ports import Gate, GateOutcome
from bastion.evals.redteam.fixtures import ClientsForKey, clients_for_key_of
from bastion.evals.redteam.report import Summary, pct, summarize, write_reports
from bastion.evals.redteam.runner import RedteamResult, run_redteam
from bastion.evals.redteam.suite import RedteamSuite, load_redteam_suite
from bastion.evals.types import ModelClient


@dataclass(frozen=True, slots=True)
class Verdict:
    passed: bool
    reasons: tuple[str, ...] = ()


def evaluate(summary: Summary, suite: RedteamSuite) -> Verdict:
    """The gate's decision on a run's summary."""
    reasons: list[str] = []
    for entry, b in summary.critical.items():
        if b.hits:
            reasons.append(
                f"critical {entry}: {b.hits} of {b.scored} attacks succeeded (zero tolerance)"
            )
        elif b.probes and not b.scored:
            reasons.append(f"critical {entry}: none of its {b.probes} probes could be scored")
    for cat, b in summary.by_category.items():
        if b.probes and not b.scored:
            reasons.append(f"{cat}: none of its {b.probes} probes could be scored")
            continue
        bar = suite.threshold(cat)
        if bar is not None and b.asr is not None and b.asr > bar:
            reasons.append(f"{cat}: attack success rate {pct(b.asr)} > {pct(bar)}")
    o = summary.overall
    attempted = o.probes - o.skipped
    if attempted and o.errors / attempted > suite.max_error_rate:
        reasons.append(
            f"{o.errors} of {attempted} probes failed with errors "
            f"(max_error_rate {pct(suite.max_error_rate)})"
        )
    return Verdict(not reasons, tuple(dict.fromkeys(reasons)))


def with_prompt(suite: RedteamSuite, prompt: str | None) -> RedteamSuite:
    """``suite`` attacking the prompt version ``prompt`` (``NAME@REF``) instead."""
    if prompt is None:
        return suite
    if "@" not in prompt:
        raise InvalidRequest("prompt must be NAME@LABEL or NAME@VERSION", param="prompt")
    target = suite.target.model_copy(update={"prompt": prompt})
    return suite.model_copy(update={"target": target})


class RedteamGate:
    """A :class:`~bastion.evals.ports.Gate` running red-team suites through ``client``."""

    def __init__(
        self,
        client: ModelClient,
        *,
        clients_for_key: ClientsForKey | None = None,
        out_dir: str | Path | None = None,
    ) -> None:
        self.client = client
        self.clients_for_key = clients_for_key or clients_for_key_of(client)
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.last: RedteamResult | None = None

    async def __call__(self, suite_path: str, *, prompt: str | None = None) -> GateOutcome:
        suite = with_prompt(load_redteam_suite(suite_path), prompt)
        result = await run_redteam(suite, self.client, clients_for_key=self.clients_for_key)
        self.last = result
        summary = summarize(result.records, suite)
        verdict = evaluate(summary, suite)
        report = None
        if self.out_dir is not None:
            paths = write_reports(
                self.out_dir / result.run_id,
                result,
                summary,
                suite,
                verdict.passed,
                verdict.reasons,
            )
            report = str(paths["html"])
        return GateOutcome(
            suite=suite.name,
            kind="redteam",
            passed=verdict.passed,
            run_id=result.run_id,
            reasons=verdict.reasons,
            report=report,
        )


def make_redteam_gate(
    client: ModelClient,
    *,
    clients_for_key: ClientsForKey | None = None,
    out_dir: str | Path | None = None,
) -> Gate:
    """The red-team :class:`~bastion.evals.ports.Gate` (reports under ``out_dir/<run id>``)."""
    return RedteamGate(client, clients_for_key=clients_for_key, out_dir=out_dir)
