"""SqlPromptStore conformance: the same behaviour on SQLite and PostgreSQL."""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest

from bastion.core.errors import Conflict, NotFound
from bastion.prompts.model import PromptVersion, content_hash
from bastion.prompts.ports import PromptStore
from bastion.store.sql.database import Database
from bastion.store.sql.prompts import SqlPromptStore

T = "tnt_default"


def draft(name: str = "greet", text: str = "Hello {{ name }}", tenant: str = T) -> PromptVersion:
    messages = (
        {"role": "system", "content": "Be brief. 100% sure? 'quoted' é☃"},
        {"role": "user", "content": text},
    )
    variables = {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}
    params = {"temperature": 0.25, "max_tokens": 64, "stop": ["\n\n"]}
    suites = ("/suites/quality.yaml",)
    return PromptVersion(
        tenant_id=tenant,
        name=name,
        version=0,
        messages=messages,
        variables=variables,
        model="gpt",
        params=params,
        eval_suites=suites,
        redteam_suites=(),
        description="greets",
        content_hash=content_hash(messages, variables, "gpt", params, suites, (), "greets"),
        created_at=1_700_000_000.5,
        created_by="key_1",
    )


@pytest.fixture
def store(db: Database) -> SqlPromptStore:
    return SqlPromptStore(db)


def test_it_is_a_prompt_store(store: SqlPromptStore) -> None:
    port: PromptStore = store
    assert port.list_prompts(T) == []
    assert port.latest_version(T, "greet") is None
    assert port.labels(T, "greet") == {}


def test_versions_are_numbered_and_read_back_exactly(store: SqlPromptStore) -> None:
    d = draft()
    v1, created = store.add_version(d)
    assert created and v1.version == 1
    assert v1 == PromptVersion(**{**_fields(d), "version": 1})
    same, again = store.add_version(d)
    assert (same, again) == (v1, False)
    v2, created = store.add_version(draft(text="Hi {{ name }}"))
    assert created and v2.version == 2
    assert store.get_version(T, "greet", 1) == v1
    assert store.latest_version(T, "greet") == v2
    assert store.list_versions(T, "greet") == [v1, v2]
    assert store.get_version(T, "greet", 3) is None
    [summary] = store.list_prompts(T)
    assert (summary.name, summary.latest, summary.labels) == ("greet", 2, {})


def _fields(v: PromptVersion) -> dict[str, object]:
    return {f: getattr(v, f) for f in PromptVersion.__dataclass_fields__}


def test_tenants_are_separate(store: SqlPromptStore) -> None:
    store.add_version(draft())
    other, created = store.add_version(draft(tenant="tnt_b"))
    assert created and other.version == 1
    store.move_label(T, "greet", "production", 1, action="set", actor=None, reason=None)
    assert store.labels("tnt_b", "greet") == {}
    assert store.label_version("tnt_b", "greet", "production") is None
    assert [p.name for p in store.list_prompts("tnt_c")] == []
    with pytest.raises(NotFound):
        store.move_label("tnt_c", "greet", "production", 1, action="set", actor=None, reason=None)


def test_label_moves_are_recorded_in_order(store: SqlPromptStore) -> None:
    for text in ("a {{ name }}", "b {{ name }}", "c {{ name }}"):
        store.add_version(draft(text=text))
    e1 = store.move_label(T, "greet", "production", 1, action="set", actor="ops", reason=None)
    e2 = store.move_label(T, "greet", "production", 3, action="promote", actor="ci", reason="ok")
    store.move_label(T, "greet", "staging", 2, action="set", actor="ops", reason=None)
    e3 = store.move_label(
        T, "greet", "production", 1, action="rollback", actor="oncall", reason="bad", expect_from=3
    )
    assert [(e.seq, e.from_version, e.to_version) for e in (e1, e2, e3)] == [
        (1, None, 1),
        (2, 1, 3),
        (3, 3, 1),
    ]
    assert store.labels(T, "greet") == {"production": 1, "staging": 2}
    assert store.label_events(T, "greet", "production") == [e1, e2, e3]
    assert e2.reason == "ok" and e2.actor == "ci" and e2.action == "promote"
    assert len(store.label_events(T, "greet")) == 4
    [summary] = store.list_prompts(T)
    assert summary.labels == {"production": 1, "staging": 2}


def test_moves_check_the_version_and_the_expected_state(store: SqlPromptStore) -> None:
    store.add_version(draft())
    with pytest.raises(NotFound):
        store.move_label(T, "greet", "production", 2, action="set", actor=None, reason=None)
    store.move_label(T, "greet", "production", 1, action="set", actor=None, reason=None)
    with pytest.raises(Conflict):
        store.move_label(
            T, "greet", "production", 1, action="rollback", actor=None, reason=None, expect_from=7
        )
    assert len(store.label_events(T, "greet", "production")) == 1  # the failed move left nothing


def test_concurrent_writers_never_share_a_version_number(
    db: Database, open_db: Callable[[], Database]
) -> None:
    stores = [SqlPromptStore(open_db()) for _ in range(4)]
    got: list[int] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def work(i: int, s: SqlPromptStore) -> None:
        try:
            for j in range(5):
                v, created = s.add_version(draft(text=f"{i}-{j} {{{{ name }}}}"))
                assert created
                with lock:
                    got.append(v.version)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i, s)) for i, s in enumerate(stores)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert sorted(got) == list(range(1, 21))
    assert [v.version for v in SqlPromptStore(db).list_versions(T, "greet")] == list(range(1, 21))
