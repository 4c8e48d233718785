"""The prompt registry against a real server: API, chat by reference, roles, tenants, CLI.

A ``bastion serve`` process in front of the fake upstream; the official
openai SDK sends chat requests that reference registry prompts, and the fake
upstream shows what the model really received.
"""

from __future__ import annotations

import importlib.util
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from typer.testing import CliRunner

from bastion.testing.fake_upstream import FakeUpstream
from bastion.testing.server import BastionServer
from tests.integration.governance_helpers import admin, make_key, make_tenant, wait_keys, wait_usage

GREET = {
    "name": "greet",
    "messages": [
        {"role": "system", "content": "You are {{ persona }}."},
        {"role": "user", "content": "Greet {{ who }} warmly."},
    ],
    "model": "gpt",
    "params": {"temperature": 0.3, "max_tokens": 50},
}
VARS = {"persona": "a concierge", "who": "Ada"}
RENDERED = [
    {"role": "system", "content": "You are a concierge."},
    {"role": "user", "content": "Greet Ada warmly."},
]


@pytest.fixture(scope="module")
def keys(server: BastionServer) -> dict[str, str]:
    """Keys of tenant acme (admin, developer, viewer, app without a role) and of globex."""
    make_tenant(server, "acme")
    make_tenant(server, "globex")
    out = {}
    for name, tenant, role in [
        ("admin", "acme", "admin"),
        ("dev", "acme", "developer"),
        ("viewer", "acme", "viewer"),
        ("app", "acme", None),
        ("globex", "globex", "admin"),
    ]:
        fields: dict[str, Any] = {"tenant": tenant} | ({"role": role} if role else {})
        out[name] = str(make_key(server, f"prompts-{name}", **fields)["key"])
    for secret in out.values():
        wait_keys(server, secret)
    return out


@pytest.fixture(scope="module")
def greet(server: BastionServer, keys: dict[str, str]) -> dict[str, Any]:
    """greet v1 in acme, labelled production."""
    r = call(server, keys["dev"], "POST", "/v1/prompts", GREET)
    assert r.status_code == 201, r.text
    r = call(
        server,
        keys["admin"],
        "POST",
        "/v1/prompts/greet/labels",
        {"label": "production", "version": 1, "reason": "first ship"},
    )
    assert r.status_code == 200, r.text
    return dict(r.json())


def call(srv: BastionServer, key: str, method: str, path: str, body: Any = None) -> httpx.Response:
    return (
        admin(srv, method, path, key, json=body)
        if body is not None
        else admin(srv, method, path, key)
    )


def sdk(srv: BastionServer, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=srv.url, api_key=key, max_retries=0)


def audit_events(srv: BastionServer, kind: str, n: int = 1, timeout: float = 5) -> list[Any]:
    """Poll the admin API until ``n`` events of ``kind`` are stored (audit writes are batched)."""
    deadline = time.monotonic() + timeout
    found: list[Any] = []
    while time.monotonic() < deadline:
        r = admin(srv, "GET", "/admin/audit", params={"limit": "1000"})
        found = [e for e in r.json()["data"] if e["kind"] == kind]
        if len(found) >= n:
            return found
        time.sleep(0.1)
    raise AssertionError(f"{n} audit events {kind!r} not seen: {found}")


# ---------------------------------------------------------------------- API
def test_create_is_idempotent_and_versions_are_listed(
    server: BastionServer, keys: dict[str, str], greet: dict[str, Any]
) -> None:
    r = call(server, keys["dev"], "POST", "/v1/prompts", GREET)
    assert r.status_code == 200 and r.json()["created"] is False and r.json()["version"] == 1
    r = call(server, keys["viewer"], "GET", "/v1/prompts")
    assert r.status_code == 200
    [p] = [p for p in r.json()["data"] if p["name"] == "greet"]
    assert p["labels"] == {"production": 1} and p["latest_version"] >= 1
    r = call(server, keys["app"], "GET", "/v1/prompts/greet/versions/1")
    assert r.status_code == 200
    v = r.json()
    assert v["messages"] == GREET["messages"] and v["created_by"]
    assert v["variables"]["required"] == ["persona", "who"]
    r = call(server, keys["viewer"], "GET", "/v1/prompts/greet")
    assert r.json()["label_events"][0]["reason"] == "first ship"
    r = call(server, keys["viewer"], "GET", "/v1/prompts/greet/versions/99")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    [event] = [e for e in audit_events(server, "prompt.label") if e["data"]["prompt"] == "greet"]
    assert event["data"]["to"] == 1 and event["data"]["from"] is None
    assert event["data"]["reason"] == "first ship"


def test_render_api(server: BastionServer, keys: dict[str, str], greet: dict[str, Any]) -> None:
    r = call(
        server,
        keys["dev"],
        "POST",
        "/v1/prompts/greet/render",
        {"ref": "production", "variables": VARS},
    )
    assert r.status_code == 200, r.text
    assert r.json()["messages"] == RENDERED
    assert (r.json()["model"], r.json()["version"]) == ("gpt", 1)
    r = call(server, keys["dev"], "POST", "/v1/prompts/greet/render", {"variables": {"who": "x"}})
    assert r.status_code == 400
    assert r.json()["error"] == {**r.json()["error"], "code": "invalid_request"}
    assert "missing variables: persona" in r.json()["error"]["message"]
    r = call(server, keys["dev"], "POST", "/v1/prompts", {**GREET, "name": "Bad Name"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "name"


def test_roles(server: BastionServer, keys: dict[str, str], greet: dict[str, Any]) -> None:
    label = {"label": "production", "version": 1}
    for who in ("viewer", "dev", "app"):
        r = call(server, keys[who], "POST", "/v1/prompts/greet/labels", label)
        assert r.status_code == 403, who
        assert r.json()["error"]["code"] == "permission_denied"
    for who in ("viewer", "app"):
        r = call(server, keys[who], "POST", "/v1/prompts", {**GREET, "name": "nope"})
        assert r.status_code == 403
        r = call(server, keys[who], "POST", "/v1/prompts/greet/render", {"variables": VARS})
        assert r.status_code == 403
    assert call(server, keys["viewer"], "GET", "/v1/prompts/greet").status_code == 200


def test_another_tenant_cannot_see_or_use_the_prompt(
    server: BastionServer, keys: dict[str, str], greet: dict[str, Any]
) -> None:
    g = keys["globex"]
    assert [p["name"] for p in call(server, g, "GET", "/v1/prompts").json()["data"]] == []
    for method, path, body in [
        ("GET", "/v1/prompts/greet", None),
        ("GET", "/v1/prompts/greet/versions/1", None),
        ("POST", "/v1/prompts/greet/render", {"variables": VARS}),
        ("POST", "/v1/prompts/greet/labels", {"label": "production", "version": 1}),
    ]:
        r = call(server, g, method, path, body)
        assert r.status_code == 404, (path, r.text)
        assert r.json()["error"]["code"] == "not_found"
    with pytest.raises(openai.NotFoundError):
        sdk(server, g).chat.completions.create(
            model="prompt",
            messages=[],
            extra_body={"bastion": {"prompt": "greet@production", "variables": VARS}},
        )
    # the same name in globex is a prompt of its own
    r = call(server, g, "POST", "/v1/prompts", {**GREET, "text": "Hi", "messages": None})
    assert r.status_code == 201 and r.json()["version"] == 1


# ---------------------------------------------------------------------- chat
def test_chat_by_reference_sends_the_rendered_messages(
    server: BastionServer, keys: dict[str, str], greet: dict[str, Any], fake: FakeUpstream
) -> None:
    raw = sdk(server, keys["app"]).chat.completions.with_raw_response.create(
        model="prompt",
        messages=[],
        extra_body={"bastion": {"prompt": "greet@production", "variables": VARS}},
    )
    assert raw.headers["x-bastion-prompt"] == "greet@1"
    assert raw.parse().choices[0].message.content == "echo: Greet Ada warmly."
    [sent] = fake.requests()
    body = sent["body"]
    assert body["messages"] == RENDERED
    assert body["model"] == "gpt-4o-mini"  # the alias gpt's upstream model
    assert (body["temperature"], body["max_tokens"]) == (0.3, 50)
    assert "bastion" not in body
    wait_usage(server, 1, tag="prompt:greet@1", tenant="acme")


def test_the_request_adds_turns_and_overrides_model_and_params(
    server: BastionServer, keys: dict[str, str], greet: dict[str, Any], fake: FakeUpstream
) -> None:
    reply = sdk(server, keys["app"]).chat.completions.create(
        model="gpt",
        temperature=0.9,
        messages=[{"role": "user", "content": "And say goodbye."}],
        extra_body={"bastion": {"prompt": "greet@1", "variables": VARS}},
    )
    assert reply.choices[0].message.content == "echo: And say goodbye."
    body = fake.requests()[-1]["body"]
    assert body["messages"] == [*RENDERED, {"role": "user", "content": "And say goodbye."}]
    assert (body["temperature"], body["max_tokens"]) == (0.9, 50)


def test_streamed_chat_by_reference(
    server: BastionServer, keys: dict[str, str], greet: dict[str, Any], fake: FakeUpstream
) -> None:
    stream = sdk(server, keys["app"]).chat.completions.with_raw_response.create(
        model="prompt",
        messages=[],
        stream=True,
        extra_body={"bastion": {"prompt": "greet", "variables": VARS}},  # bare: production
    )
    assert stream.headers["x-bastion-prompt"] == "greet@1"
    text = "".join(c.choices[0].delta.content or "" for c in stream.parse() if c.choices)
    assert text == "echo: Greet Ada warmly."


def test_chat_reference_errors(
    server: BastionServer, keys: dict[str, str], greet: dict[str, Any], fake: FakeUpstream
) -> None:
    c = sdk(server, keys["app"])
    cases: list[tuple[dict[str, Any], type[Exception], str]] = [
        (
            {"prompt": "greet@production", "variables": {"who": "Ada"}},
            openai.BadRequestError,
            "missing variables: persona",
        ),
        ({"prompt": "greet@staging", "variables": VARS}, openai.NotFoundError, "no label"),
        ({"prompt": "missing@production"}, openai.NotFoundError, "no prompt 'missing'"),
        ({"prompt": "greet@Bad!"}, openai.BadRequestError, "invalid label"),
        ({"variables": VARS}, openai.BadRequestError, "bastion.prompt must be"),
        # what is left of bastion goes on to RAG: an unknown collection is its 404
        (
            {"prompt": "greet@1", "variables": VARS, "collections": ["nope"]},
            openai.NotFoundError,
            "nope",
        ),
    ]
    for ext, error, message in cases:
        with pytest.raises(error) as exc:
            c.chat.completions.create(model="prompt", messages=[], extra_body={"bastion": ext})
        assert message in str(exc.value), (ext, str(exc.value))
    assert fake.requests() == []  # nothing reached the model


# ---------------------------------------------------------------------- CLI
@dataclass(frozen=True)
class Ran:
    returncode: int
    stdout: str
    stderr: str


def bastion(srv: BastionServer, *args: str) -> Ran:
    """The real ``bastion`` CLI, run in this process (no interpreter start-up per call)."""
    from bastion.cli.main import app

    r = CliRunner().invoke(app, [*args, "--data-dir", str(srv.data_dir)])
    if r.exception is not None and not isinstance(r.exception, SystemExit):
        raise r.exception
    return Ran(r.exit_code, r.stdout, r.stderr)


def audit_export(srv: BastionServer) -> list[dict[str, Any]]:
    """Every audit event, read through the admin API (the CLI wrote them to the database)."""
    r = admin(srv, "GET", "/admin/audit", params={"limit": "1000"})
    assert r.status_code == 200, r.text
    return list(r.json()["data"])


def test_cli_promote_refuses_ungated_and_audits_the_override(
    server: BastionServer, tmp_path: Path
) -> None:
    (tmp_path / "suites").mkdir()
    (tmp_path / "suites" / "quality.yaml").write_text("name: q\n")
    t = tmp_path / "hello.yaml"
    t.write_text("text: 'Say hello to {{ who }}.'\nmodel: gpt\nparams: {temperature: 0}\n")
    r = bastion(server, "prompts", "create", "hello", "--file", str(t))
    assert r.returncode == 0 and "created hello@1" in r.stdout, r.stderr
    r = bastion(server, "prompts", "promote", "hello", "1", "--to", "production")
    assert r.returncode == 1 and "refused" in r.stderr and "no eval or red-team" in r.stderr
    r = bastion(server, "prompts", "promote", "hello", "1", "--to", "production", "--force")
    assert r.returncode == 2 and "--reason" in r.stderr
    r = bastion(server, "prompts", "promote", "hello", "9", "--to", "production")
    assert r.returncode == 2 and "no version 9" in r.stderr, r.stdout + r.stderr
    r = bastion(
        server,
        "prompts",
        "promote",
        "hello",
        "1",
        "--to",
        "production",
        "--force",
        "--reason",
        "first ship",
        "--actor",
        "alice",
    )
    assert r.returncode == 0 and "OVERRIDE" in r.stderr, r.stdout + r.stderr
    events = audit_export(server)
    refused = [e for e in events if e["kind"] == "prompt.promote.refused"]
    override = [e for e in events if e["kind"] == "prompt.promote.override"]
    assert refused[-1]["data"]["prompt"] == "hello" and refused[-1]["actor"] == "cli"
    assert override[-1]["actor"] == "alice" and override[-1]["data"]["reason"] == "first ship"
    assert override[-1]["data"]["failures"] == [
        "no eval or red-team suite is attached to this version"
    ]
    # the running server uses the label the CLI moved
    reply = sdk(server, server.admin_key).chat.completions.create(
        model="prompt",
        messages=[],
        extra_body={"bastion": {"prompt": "hello", "variables": {"who": "Bo"}}},
    )
    assert reply.choices[0].message.content == "echo: Say hello to Bo."

    # a second version with a relative suite path, a plain label move, then rollback
    t.write_text("text: 'Hi {{ who }}!'\nmodel: gpt\neval_suites: [suites/quality.yaml]\n")
    assert bastion(server, "prompts", "create", "hello", "--file", str(t)).returncode == 0
    shown = admin(server, "GET", "/v1/prompts/hello/versions/2").json()
    assert shown["eval_suites"] == [str((tmp_path / "suites" / "quality.yaml").resolve())]
    r = bastion(server, "prompts", "label", "hello", "2", "--to", "production")
    assert r.returncode == 0, r.stderr
    r = bastion(server, "prompts", "render", "hello", "--ref", "production", "--var", "who=Cy")
    assert json.loads(r.stdout)["messages"] == [{"role": "user", "content": "Hi Cy!"}]
    r = bastion(server, "prompts", "rollback", "hello", "--label", "production", "--reason", "oops")
    assert r.returncode == 0 and "2 -> 1" in r.stdout, r.stderr
    r = admin(server, "GET", "/v1/prompts/hello")
    assert r.json()["labels"] == {"production": 1}
    rollback = [e for e in audit_export(server) if e["kind"] == "prompt.rollback"]
    data = rollback[-1]["data"]
    assert [data[k] for k in ("prompt", "from", "to", "reason")] == ["hello", 2, 1, "oops"]
    t.write_text("text: x\nmodel: gpt\nredteam_suites: [missing.yaml]\n")
    r = bastion(server, "prompts", "create", "hello", "--file", str(t))
    assert r.returncode == 1 and "missing.yaml" in r.stderr


@pytest.mark.skipif(
    importlib.util.find_spec("bastion.evals.runner") is None,
    reason="bastion.evals.runner (the eval gate) is not built yet",
)
def test_cli_promote_runs_the_attached_suites_as_gates(
    server: BastionServer, tmp_path: Path
) -> None:
    for name, expected in (("pass", "Ada"), ("fail", "Zed")):
        (tmp_path / f"{name}.yaml").write_text(
            f"name: gate-{name}\n"
            "target: {prompt: 'gated@production'}\n"
            "dataset:\n  cases: [{input: 'Greet Ada.', variables: {who: Ada}, "
            f"expected: '{expected}'}}]\n"
            "scorers: [{type: contains, threshold: 1.0}]\n"
        )
    t = tmp_path / "gated.yaml"
    t.write_text("text: 'Greet {{ who }}.'\nmodel: gpt\neval_suites: [pass.yaml]\n")
    assert bastion(server, "prompts", "create", "gated", "--file", str(t)).returncode == 0
    t.write_text("text: 'Greet {{ who }}!'\nmodel: gpt\neval_suites: [fail.yaml]\n")
    assert bastion(server, "prompts", "create", "gated", "--file", str(t)).returncode == 0
    remote = ["--url", server.base, "--api-key", server.admin_key]
    r = bastion(server, "prompts", "promote", "gated", "1", "--to", "production", *remote)
    assert r.returncode == 0, r.stdout + r.stderr
    r = bastion(server, "prompts", "promote", "gated", "2", "--to", "production", *remote)
    assert r.returncode == 1 and "refused" in r.stderr, r.stdout + r.stderr
    assert admin(server, "GET", "/v1/prompts/gated").json()["labels"] == {"production": 1}
    kinds = [e["kind"] for e in audit_export(server) if e["data"].get("prompt") == "gated"]
    assert kinds[-2:] == ["prompt.promote", "prompt.promote.refused"]


def test_a_version_must_name_a_chat_model_the_key_may_use(
    server: BastionServer, keys: dict[str, str]
) -> None:
    body = {**GREET, "name": "m", "model": "no-such-model"}
    r = call(server, keys["dev"], "POST", "/v1/prompts", body)
    assert r.status_code == 404, r.text
    assert r.json()["error"]["code"] == "model_not_found"
    r = call(server, keys["dev"], "GET", "/v1/prompts/m")
    assert r.status_code == 404  # nothing was stored
