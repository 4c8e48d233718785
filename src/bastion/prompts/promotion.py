"""Gated promotion: move a label only when the version's suites pass.

:func:`promote` runs every suite attached to a version (its ``eval_suites``
and ``redteam_suites``) as a gate against ``NAME@VERSION`` and then:

* every gate passed: the label moves; audit ``prompt.promote`` (with run ids);
* a gate failed (or could not run), or the version has no suites at all:
  the label stays; audit ``prompt.promote.refused`` (with the reasons);
* ``force`` (admins only, with a ``reason``) moves the label despite the
  failures; audit ``prompt.promote.override`` (reason, failures, actor). An
  ungated promotion is an override.

The gates are the evaluation harness's (``bastion.evals``), which sits above
this package; :class:`Gate` and :class:`GateResult` restate the shape of
``bastion.evals.ports.Gate`` / ``GateOutcome`` structurally so the import
runs the right way (``prompts`` never imports ``evals``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from bastion.core.errors import InvalidRequest, PermissionDenied
from bastion.prompts.model import LabelEvent, PromptVersion
from bastion.prompts.service import PromptService, check_label
from bastion.telemetry.audit import AuditDraft, AuditSink

NO_SUITES = "no eval or red-team suite is attached to this version"


class GateResult(Protocol):
    """What a gate reports (``bastion.evals.ports.GateOutcome`` has this shape)."""

    @property
    def suite(self) -> str: ...

    @property
    def kind(self) -> str: ...

    @property
    def passed(self) -> bool: ...

    @property
    def run_id(self) -> str | None: ...

    @property
    def reasons(self) -> tuple[str, ...]: ...


class Gate(Protocol):
    """Runs one suite file against a prompt reference (``bastion.evals.ports.Gate``)."""

    async def __call__(self, suite_path: str, *, prompt: str | None = None) -> GateResult: ...


@dataclass(frozen=True, slots=True)
class GateRecord:
    """One gate's verdict as promotion keeps it (also when the gate itself crashed)."""

    suite: str
    kind: str
    passed: bool
    run_id: str | None
    reasons: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "suite": self.suite,
            "kind": self.kind,
            "passed": self.passed,
            "run_id": self.run_id,
            "reasons": list(self.reasons),
        }


@dataclass(frozen=True, slots=True)
class PromotionResult:
    """What :func:`promote` did: ``moved`` the label or not, and why."""

    name: str
    version: int
    label: str
    moved: bool
    overridden: bool
    gates: tuple[GateRecord, ...] = ()
    failures: tuple[str, ...] = ()
    event: LabelEvent | None = None
    audit_kind: str = ""

    @property
    def refused(self) -> bool:
        return not self.moved

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "label": self.label,
            "moved": self.moved,
            "overridden": self.overridden,
            "from_version": self.event.from_version if self.event else None,
            "gates": [g.to_json() for g in self.gates],
            "failures": list(self.failures),
            "audit": self.audit_kind,
        }


def gates_for(
    version: PromptVersion, eval_gate: Gate | None, redteam_gate: Gate | None
) -> list[tuple[str, Gate]]:
    """``(suite path, gate)`` for every suite attached to ``version``.

    A missing gate for a kind the version uses raises :class:`InvalidRequest`.
    """
    out: list[tuple[str, Gate]] = []
    for paths, gate, kind in (
        (version.eval_suites, eval_gate, "eval"),
        (version.redteam_suites, redteam_gate, "red-team"),
    ):
        if paths and gate is None:
            raise InvalidRequest(f"no {kind} gate is available to run {paths[0]}")
        out.extend((p, gate) for p in paths if gate is not None)
    return out


async def _run(gate: Gate, path: str, ref: str) -> GateRecord:
    try:
        r = await gate(path, prompt=ref)
    except Exception as exc:  # a gate that cannot run does not let anything through
        return GateRecord(path, "error", False, None, (f"the gate could not run: {exc}",))
    return GateRecord(path, r.kind, bool(r.passed), r.run_id, tuple(r.reasons))


async def promote(
    service: PromptService,
    audit: AuditSink,
    tenant_id: str,
    name: str,
    version: int,
    label: str,
    gates: Sequence[tuple[str, Gate]],
    *,
    force: bool = False,
    reason: str | None = None,
    actor: str | None,
    may_override: bool = True,
) -> PromotionResult:
    """Run ``gates`` against ``NAME@VERSION`` and move ``label`` if they pass (or on override).

    ``force`` without a ``reason`` is an :class:`InvalidRequest`, and without
    ``may_override`` (the caller is not an admin) a :class:`PermissionDenied`,
    both before any gate runs. Every outcome is written to ``audit``.
    """
    check_label(label)
    reason = (reason or "").strip() or None
    if force and reason is None:
        raise InvalidRequest("--force needs --reason: an override is audited with its reason")
    if force and not may_override:
        raise PermissionDenied("overriding a failed promotion needs an admin")
    v = service.get(tenant_id, name, version)
    records = [await _run(gate, path, v.ref) for path, gate in gates]
    failures = [f"{r.suite}: {'; '.join(r.reasons) or 'failed'}" for r in records if not r.passed]
    if not gates:
        failures.append(NO_SUITES)
    base: dict[str, Any] = {
        "prompt": name,
        "version": version,
        "label": label,
        "gates": [r.to_json() for r in records],
        "run_ids": [r.run_id for r in records if r.run_id],
    }
    if failures and not force:
        _append(audit, "prompt.promote.refused", actor, tenant_id, {**base, "failures": failures})
        return PromotionResult(
            name,
            version,
            label,
            moved=False,
            overridden=False,
            gates=tuple(records),
            failures=tuple(failures),
            audit_kind="prompt.promote.refused",
        )
    overridden = bool(failures)
    event = service.set_label(
        tenant_id,
        name,
        label,
        version,
        actor=actor,
        reason=reason,
        action="override" if overridden else "promote",
    )
    data = {**base, "from": event.from_version, "to": event.to_version}
    if overridden:
        kind = "prompt.promote.override"
        data.update(reason=reason, failures=failures)
    else:
        kind = "prompt.promote"
        if reason:
            data["reason"] = reason
    _append(audit, kind, actor, tenant_id, data)
    return PromotionResult(
        name,
        version,
        label,
        moved=True,
        overridden=overridden,
        gates=tuple(records),
        failures=tuple(failures),
        event=event,
        audit_kind=kind,
    )


def _append(
    audit: AuditSink, kind: str, actor: str | None, tenant_id: str, data: dict[str, Any]
) -> None:
    audit.append([AuditDraft(kind=kind, actor=actor, tenant=tenant_id, data=data)])
