"""The prompt registry's domain: rendering, versions, labels, rollback and gated promotion.

The service runs on the real SQL store over a temporary SQLite file; gates
are small fakes with the shape of ``bastion.evals.ports.Gate``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from bastion.core.errors import Conflict, InvalidRequest, NotFound, PermissionDenied
from bastion.prompts.model import LabelEvent, PromptTemplate, split_ref
from bastion.prompts.promotion import NO_SUITES, Gate, gates_for, promote
from bastion.prompts.render import render_messages, substitute
from bastion.prompts.service import PromptService, rollback_target
from bastion.store.sql.audit import SqlAuditStore
from bastion.store.sql.database import SqliteDatabase
from bastion.store.sql.prompts import SqlPromptStore
from bastion.store.sqlite.db import upgrade

T = "tnt_default"


@pytest.fixture
def db(tmp_path: Path) -> Iterator[SqliteDatabase]:
    upgrade(tmp_path / "bastion.db")
    d = SqliteDatabase(tmp_path / "bastion.db")
    yield d
    d.close()


@pytest.fixture
def svc(db: SqliteDatabase) -> PromptService:
    return PromptService(SqlPromptStore(db))


@pytest.fixture
def audit(db: SqliteDatabase) -> SqlAuditStore:
    return SqlAuditStore(db)


def tpl(**fields: Any) -> PromptTemplate:
    base: dict[str, Any] = {
        "messages": [
            {"role": "system", "content": "You help {{ company }} customers."},
            {"role": "user", "content": "Hi, I am {{name}}. {{ question }}"},
        ],
        "model": "gpt",
    }
    return PromptTemplate.model_validate({**base, **fields})


# ---------------------------------------------------------------------- rendering
def test_render_substitutes_every_slot_and_returns_model_and_params(svc: PromptService) -> None:
    v, created = svc.create_version(T, "support", tpl(params={"temperature": 0.2}), actor="k1")
    assert created and v.version == 1 and v.created_by == "k1"
    r = svc.render(T, "support", "latest", {"company": "ACME", "name": "Ada", "question": "Why?"})
    assert r.messages == [
        {"role": "system", "content": "You help ACME customers."},
        {"role": "user", "content": "Hi, I am Ada. Why?"},
    ]
    assert (r.model, r.params, r.version.version) == ("gpt", {"temperature": 0.2}, 1)


def test_text_template_is_one_user_message(svc: PromptService) -> None:
    svc.create_version(T, "t", PromptTemplate(text="Translate: {{ s }}", model="gpt"), actor=None)
    assert svc.render(T, "t", 1, {"s": "hola"}).messages == [
        {"role": "user", "content": "Translate: hola"}
    ]


def test_missing_variables_are_listed_together(svc: PromptService) -> None:
    svc.create_version(T, "support", tpl(), actor=None)
    with pytest.raises(InvalidRequest, match=r"missing variables: company, question") as e:
        svc.render(T, "support", "latest", {"name": "Ada"})
    assert e.value.param == "variables"


def test_unknown_variables_are_refused(svc: PromptService) -> None:
    svc.create_version(T, "support", tpl(), actor=None)
    full = {"company": "A", "name": "B", "question": "C"}
    with pytest.raises(InvalidRequest, match=r"unknown variables: mood \(known: company"):
        svc.render(T, "support", "latest", {**full, "mood": "x"})


def test_a_schema_checks_types_and_fills_defaults(svc: PromptService) -> None:
    schema = {
        "type": "object",
        "properties": {
            "n": {"type": "integer", "minimum": 1},
            "tone": {"type": "string", "enum": ["formal", "casual"], "default": "formal"},
            "tags": {"type": "array", "items": {"type": "string"}},
        },
        "required": ["n"],
    }
    template = PromptTemplate(
        text="List {{ n }} ideas in a {{ tone }} tone. {{ tags }}", variables=schema, model="gpt"
    )
    svc.create_version(T, "ideas", template, actor=None)
    out = svc.render(T, "ideas", "latest", {"n": 3, "tags": ["a", "b"]}).messages
    assert out[0]["content"] == 'List 3 ideas in a formal tone. ["a","b"]'
    with pytest.raises(InvalidRequest, match="n: 0 is less than the minimum of 1"):
        svc.render(T, "ideas", "latest", {"n": 0})
    with pytest.raises(InvalidRequest, match=r"tone: 'rude' is not one of"):
        svc.render(T, "ideas", "latest", {"n": 2, "tone": "rude"})
    with pytest.raises(InvalidRequest, match="unknown variables: extra"):
        svc.render(T, "ideas", "latest", {"n": 2, "extra": 1})


def test_variable_values_are_data_never_templates(svc: PromptService) -> None:
    svc.create_version(T, "support", tpl(), actor=None)
    evil = "{{ company }} {{ __import__('os') }} {% for x in y %}"
    r = svc.render(T, "support", "latest", {"company": "ACME", "name": evil, "question": "?"})
    assert r.messages[1]["content"] == f"Hi, I am {evil}. ?"
    assert substitute("{{a}}{{b}}", {"a": "{{b}}", "b": "B"}) == "{{b}}B"


@pytest.mark.parametrize(
    "content",
    ["{{ user.name }}", "{{ x | upper }}", "{{ 7*7 }}", "{{ x[0] }}", "{{ }}", "{{ f() }}"],
)
def test_only_plain_slots_are_allowed(svc: PromptService, content: str) -> None:
    with pytest.raises(InvalidRequest, match="unsupported template expression"):
        svc.create_version(T, "bad", PromptTemplate(text=f"a {content} b", model="gpt"), actor=None)


def test_a_schema_must_declare_every_slot_and_be_valid(svc: PromptService) -> None:
    declared = {"type": "object", "properties": {"a": {"type": "string"}}}
    with pytest.raises(InvalidRequest, match="uses b, which the schema does not declare"):
        svc.create_version(
            T, "p", PromptTemplate(text="{{a}} {{b}}", variables=declared, model="m"), actor=None
        )
    with pytest.raises(InvalidRequest, match="not a valid JSON Schema"):
        svc.create_version(
            T, "p", PromptTemplate(text="x", variables={"type": 12}, model="m"), actor=None
        )
    with pytest.raises(InvalidRequest, match='"type": "object"'):
        svc.create_version(
            T, "p", PromptTemplate(text="x", variables={"type": "string"}, model="m"), actor=None
        )


def test_template_and_params_are_validated() -> None:
    with pytest.raises(ValueError, match="exactly one of messages or text"):
        PromptTemplate(model="m")
    with pytest.raises(ValueError, match="exactly one of messages or text"):
        PromptTemplate.model_validate(
            {"model": "m", "text": "a", "messages": [{"role": "user", "content": "b"}]}
        )
    with pytest.raises(ValueError, match="params may not set messages, model"):
        PromptTemplate(text="a", model="m", params={"model": "x", "messages": []})


def test_bad_params_and_names_are_refused(svc: PromptService) -> None:
    with pytest.raises(InvalidRequest, match=r"params\.temperature"):
        svc.create_version(
            T, "p", PromptTemplate(text="x", model="m", params={"temperature": 5}), actor=None
        )
    with pytest.raises(InvalidRequest, match="invalid prompt name"):
        svc.create_version(T, "Bad Name", PromptTemplate(text="x", model="m"), actor=None)


def test_render_messages_without_variables() -> None:
    schema = {"type": "object", "properties": {}, "required": [], "additionalProperties": False}
    msgs = [{"role": "user", "content": "plain"}]
    assert render_messages(msgs, schema, {}) == msgs
    with pytest.raises(InvalidRequest, match="this prompt takes no variables"):
        render_messages(msgs, schema, {"x": 1})


# ---------------------------------------------------------------------- versions
def test_versions_are_immutable_and_creating_the_same_content_is_idempotent(
    svc: PromptService,
) -> None:
    v1, c1 = svc.create_version(T, "p", tpl(), actor="a")
    again, c2 = svc.create_version(T, "p", tpl(), actor="b")
    assert (c1, c2) == (True, False)
    assert again == v1 and again.created_by == "a"
    v2, c3 = svc.create_version(T, "p", tpl(params={"temperature": 0}), actor="b")
    assert c3 and v2.version == 2 and v2.content_hash != v1.content_hash
    # the same content as v1 again is a new version: only the latest is compared
    v3, c4 = svc.create_version(T, "p", tpl(), actor="c")
    assert c4 and v3.version == 3 and v3.content_hash == v1.content_hash
    assert svc.get(T, "p", 1) == v1  # older versions never change
    assert [v.version for v in svc.versions(T, "p")] == [1, 2, 3]
    assert [(p.name, p.latest) for p in svc.list(T)] == [("p", 3)]


def test_refs_resolve_numbers_labels_and_latest(svc: PromptService) -> None:
    svc.create_version(T, "p", tpl(), actor=None)
    svc.create_version(T, "p", tpl(model="other"), actor=None)
    svc.set_label(T, "p", "production", 1, actor="ops")
    assert svc.get(T, "p", "production").version == 1
    assert svc.get(T, "p", "2").version == 2
    assert svc.get(T, "p", 2).model == "other"
    assert svc.get(T, "p").version == 2
    with pytest.raises(NotFound, match="has no version 9"):
        svc.get(T, "p", 9)
    with pytest.raises(NotFound, match="has no label 'staging'"):
        svc.get(T, "p", "staging")
    with pytest.raises(NotFound, match="no prompt 'nope'"):
        svc.get(T, "nope", "production")


def test_another_tenant_sees_nothing(svc: PromptService) -> None:
    svc.create_version(T, "p", tpl(), actor=None)
    svc.set_label(T, "p", "production", 1, actor=None)
    with pytest.raises(NotFound):
        svc.get("tnt_other", "p", "latest")
    with pytest.raises(NotFound):
        svc.render("tnt_other", "p", "production", {})
    with pytest.raises(NotFound):
        svc.set_label("tnt_other", "p", "production", 1, actor=None)
    assert svc.list("tnt_other") == []
    v, created = svc.create_version("tnt_other", "p", tpl(), actor=None)
    assert created and v.version == 1  # the same name, a separate prompt


def test_split_ref() -> None:
    assert split_ref("support@production") == ("support", "production")
    assert split_ref("support@3") == ("support", "3")
    assert split_ref("support") == ("support", "production")
    assert split_ref("support", "latest") == ("support", "latest")


# ---------------------------------------------------------------------- labels
def test_labels_keep_history_and_rollback_walks_back(svc: PromptService) -> None:
    for model in ("a", "b", "c"):
        svc.create_version(T, "p", tpl(model=model), actor=None)
    for n in (1, 2, 3):
        svc.set_label(T, "p", "production", n, actor="ops", reason=f"ship {n}")
    svc.set_label(T, "p", "staging", 3, actor="ops")
    assert svc.labels(T, "p") == {"production": 3, "staging": 3}
    hist = svc.history(T, "p", "production")
    assert [(e.from_version, e.to_version, e.action) for e in hist] == [
        (None, 1, "set"),
        (1, 2, "set"),
        (2, 3, "set"),
    ]
    assert hist[1].reason == "ship 2" and hist[1].actor == "ops"
    back = svc.rollback(T, "p", "production", actor="oncall", reason="bad answers")
    assert (back.from_version, back.to_version, back.action) == (3, 2, "rollback")
    assert svc.rollback(T, "p", "production", actor="oncall").to_version == 1
    assert svc.get(T, "p", "production").version == 1
    with pytest.raises(InvalidRequest, match="no earlier version"):
        svc.rollback(T, "p", "production", actor="oncall")
    assert svc.labels(T, "p") == {"production": 1, "staging": 3}  # staging untouched
    with pytest.raises(NotFound, match="has no label 'canary'"):
        svc.rollback(T, "p", "canary", actor=None)


def test_labels_are_validated(svc: PromptService) -> None:
    svc.create_version(T, "p", tpl(), actor=None)
    for bad in ("latest", "3", "Prod", "a b"):
        with pytest.raises(InvalidRequest, match="invalid label"):
            svc.set_label(T, "p", bad, 1, actor=None)
    with pytest.raises(NotFound, match="has no version 2"):
        svc.set_label(T, "p", "production", 2, actor=None)


def ev(seq: int, frm: int | None, to: int, action: Any = "set") -> LabelEvent:
    return LabelEvent(T, "p", "production", seq, frm, to, action, None, None, float(seq))


def test_rollback_target_is_a_stack_of_real_moves() -> None:
    assert rollback_target([]) is None
    assert rollback_target([ev(1, None, 1)]) is None
    assert rollback_target([ev(1, None, 1), ev(2, 1, 2)]) == 1
    # a move to where the label already was is not something to undo
    assert rollback_target([ev(1, None, 1), ev(2, 1, 2), ev(3, 2, 2)]) == 1
    moves = [ev(1, None, 1), ev(2, 1, 2), ev(3, 2, 3), ev(4, 3, 2, "rollback")]
    assert rollback_target(moves) == 1
    assert rollback_target([*moves, ev(5, 2, 4, "promote")]) == 2


def test_a_rollback_racing_another_move_conflicts(db: SqliteDatabase) -> None:
    store = SqlPromptStore(db)
    svc = PromptService(store)
    for model in ("a", "b"):
        svc.create_version(T, "p", tpl(model=model), actor=None)
    svc.set_label(T, "p", "production", 1, actor=None)
    svc.set_label(T, "p", "production", 2, actor=None)
    with pytest.raises(Conflict, match="moved meanwhile"):
        store.move_label(
            T, "p", "production", 1, action="rollback", actor=None, reason=None, expect_from=1
        )
    assert svc.labels(T, "p") == {"production": 2}


# ---------------------------------------------------------------------- promotion
@dataclass(frozen=True)
class Outcome:
    suite: str
    kind: str
    passed: bool
    run_id: str | None
    reasons: tuple[str, ...] = ()


class FakeGate:
    """Passes or fails every suite; remembers what it was asked to run."""

    def __init__(self, passed: bool, kind: str = "eval", reasons: tuple[str, ...] = ()) -> None:
        self.passed, self.kind, self.reasons = passed, kind, reasons
        self.calls: list[tuple[str, str | None]] = []

    async def __call__(self, suite_path: str, *, prompt: str | None = None) -> Outcome:
        self.calls.append((suite_path, prompt))
        n = len(self.calls)
        return Outcome(suite_path, self.kind, self.passed, f"run_{self.kind}_{n}", self.reasons)


class BrokenGate:
    async def __call__(self, suite_path: str, *, prompt: str | None = None) -> Outcome:
        raise RuntimeError("judge model unreachable")


@pytest.fixture
def gated(svc: PromptService) -> PromptService:
    svc.create_version(T, "p", tpl(eval_suites=["/s/quality.yaml"]), actor=None)
    svc.create_version(
        T,
        "p",
        tpl(model="new", eval_suites=["/s/quality.yaml"], redteam_suites=["/s/rt.yaml"]),
        actor=None,
    )
    svc.set_label(T, "p", "production", 1, actor="ops")
    return svc


def kinds(audit: SqlAuditStore) -> list[str]:
    return [e.kind for e in audit.events()]


async def test_promotion_is_refused_when_a_gate_fails(
    gated: PromptService, audit: SqlAuditStore
) -> None:
    ev_gate, rt_gate = FakeGate(True), FakeGate(False, "redteam", ("attack success 0.3 > 0.05",))
    v = gated.get(T, "p", 2)
    gates = gates_for(v, ev_gate, rt_gate)
    r = await promote(gated, audit, T, "p", 2, "production", gates, actor="ci")
    assert r.refused and not r.overridden and r.event is None
    assert ev_gate.calls == [("/s/quality.yaml", "p@2")]
    assert rt_gate.calls == [("/s/rt.yaml", "p@2")]
    assert r.failures == ("/s/rt.yaml: attack success 0.3 > 0.05",)
    assert gated.labels(T, "p") == {"production": 1}  # unchanged
    [event] = list(audit.events())
    assert (event.kind, event.actor, event.tenant) == ("prompt.promote.refused", "ci", T)
    assert event.data["failures"] == list(r.failures)
    assert event.data["run_ids"] == ["run_eval_1", "run_redteam_1"]


async def test_promotion_moves_the_label_when_every_gate_passes(
    gated: PromptService, audit: SqlAuditStore
) -> None:
    v = gated.get(T, "p", 2)
    gates = gates_for(v, FakeGate(True), FakeGate(True, "redteam"))
    r = await promote(gated, audit, T, "p", 2, "production", gates, actor="ci")
    assert r.moved and not r.overridden and r.event is not None
    assert (r.event.from_version, r.event.to_version, r.event.action) == (1, 2, "promote")
    assert gated.get(T, "p", "production").version == 2
    [event] = list(audit.events())
    assert event.kind == "prompt.promote"
    assert event.data["run_ids"] == ["run_eval_1", "run_redteam_1"]
    assert (event.data["from"], event.data["to"]) == (1, 2)
    # and rollback undoes it
    assert gated.rollback(T, "p", "production", actor="ci").to_version == 1


async def test_an_override_needs_a_reason_and_an_admin(
    gated: PromptService, audit: SqlAuditStore
) -> None:
    gate = FakeGate(False, reasons=("exact 0.4 < 0.9",))
    gates: list[tuple[str, Gate]] = [("/s/quality.yaml", gate)]
    with pytest.raises(InvalidRequest, match="needs --reason"):
        await promote(gated, audit, T, "p", 2, "production", gates, force=True, actor="ci")
    with pytest.raises(PermissionDenied, match="needs an admin"):
        await promote(
            gated,
            audit,
            T,
            "p",
            2,
            "production",
            gates,
            force=True,
            reason="hotfix",
            actor="dev",
            may_override=False,
        )
    assert gate.calls == [] and kinds(audit) == []  # refused before any gate ran
    assert gated.labels(T, "p") == {"production": 1}


async def test_an_override_moves_the_label_and_is_audited_with_reason_and_failures(
    gated: PromptService, audit: SqlAuditStore
) -> None:
    gates: list[tuple[str, Gate]] = [
        ("/s/quality.yaml", FakeGate(False, reasons=("exact 0.4 < 0.9",))),
        ("/s/rt.yaml", BrokenGate()),
    ]
    r = await promote(
        gated,
        audit,
        T,
        "p",
        2,
        "production",
        gates,
        force=True,
        reason=" incident 42 ",
        actor="alice",
    )
    assert r.moved and r.overridden
    assert gated.get(T, "p", "production").version == 2
    [event] = list(audit.events())
    assert (event.kind, event.actor) == ("prompt.promote.override", "alice")
    assert event.data["reason"] == "incident 42"
    assert event.data["failures"] == [
        "/s/quality.yaml: exact 0.4 < 0.9",
        "/s/rt.yaml: the gate could not run: judge model unreachable",
    ]
    [history] = gated.history(T, "p", "production")[-1:]
    assert (history.action, history.reason, history.actor) == ("override", "incident 42", "alice")


async def test_an_ungated_version_is_refused_unless_overridden(
    svc: PromptService, audit: SqlAuditStore
) -> None:
    svc.create_version(T, "plain", tpl(), actor=None)
    r = await promote(svc, audit, T, "plain", 1, "production", [], actor="ci")
    assert r.refused and r.failures == (NO_SUITES,)
    assert svc.labels(T, "plain") == {}
    r = await promote(
        svc, audit, T, "plain", 1, "production", [], force=True, reason="demo", actor="ci"
    )
    assert r.moved and r.overridden
    assert kinds(audit) == ["prompt.promote.refused", "prompt.promote.override"]


def test_gates_for_needs_a_gate_for_each_kind_used(gated: PromptService) -> None:
    v = gated.get(T, "p", 2)
    with pytest.raises(InvalidRequest, match="no red-team gate"):
        gates_for(v, FakeGate(True), None)
    assert [p for p, _ in gates_for(gated.get(T, "p", 1), FakeGate(True), None)] == [
        "/s/quality.yaml"
    ]
