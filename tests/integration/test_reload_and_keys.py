"""Policy hot reload and key management against a running server."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import openai
import pytest

from bastion.testing.fake_upstream import FakeUpstream
from bastion.testing.server import BastionServer, run_bastion
from tests.integration.gateway_policy import ENV, policy

HELLO = [{"role": "user", "content": "hello"}]


def eventually(check: Callable[[], bool], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.1)


def model_ids(srv: BastionServer) -> set[str]:
    client = openai.OpenAI(base_url=srv.url, api_key=srv.admin_key, max_retries=0)
    return {m.id for m in client.models.list()}


def test_hot_reload_applies_good_edits_and_rejects_bad_ones(
    fake: FakeUpstream, tmp_path: Path
) -> None:
    with run_bastion(policy(fake), tmp_path / "d", env=ENV) as srv:
        assert srv.policy_path is not None
        assert "extra" not in model_ids(srv)
        srv.policy_path.write_text(
            policy(fake, "  # added\n").replace(
                "models:\n", "models:\n  extra:\n    routes: [{provider: up, model: x}]\n", 1
            )
        )
        eventually(lambda: "extra" in model_ids(srv))
        # a bad edit is rejected, logged with file:line, and the old policy keeps serving
        srv.policy_path.write_text(policy(fake).replace("provider: up,", "provider: nowhere,", 1))
        eventually(lambda: 'result="rejected"' in srv.metrics())
        assert "extra" in model_ids(srv)
        assert "unknown provider 'nowhere'" in srv.logs()
        assert f"{srv.policy_path}:" in srv.logs()
        client = openai.OpenAI(base_url=srv.url, api_key=srv.admin_key, max_retries=0)
        assert client.chat.completions.create(model="gpt", messages=HELLO).choices


def run_cli(*args: str, data_dir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bastion", *args, "--data-dir", str(data_dir)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_keys_cli_create_list_revoke_seen_by_running_server(
    fake: FakeUpstream, tmp_path: Path
) -> None:
    data = tmp_path / "d"
    with run_bastion(policy(fake), data, env=ENV) as srv:
        made = run_cli("keys", "create", "--name", "ci-bot", "--models", "gpt,emb", data_dir=data)
        assert made.returncode == 0, made.stderr
        secret = made.stdout.strip()
        assert secret.startswith("bst-") and len(secret) > 40
        # only the hash is stored
        db = (data / "bastion.db").read_bytes() + (data / "bastion.db-wal").read_bytes()
        assert secret.encode() not in db
        listed = run_cli("keys", "list", data_dir=data)
        assert "ci-bot" in listed.stdout and secret not in listed.stdout
        client = openai.OpenAI(base_url=srv.url, api_key=secret, max_retries=0)
        eventually(lambda: _works(client))
        assert {m.id for m in client.models.list()} == {"gpt", "emb"}
        revoked = run_cli("keys", "revoke", "ci-bot", data_dir=data)
        assert revoked.returncode == 0, revoked.stderr
        eventually(lambda: not _works(client), timeout=5)
        with pytest.raises(openai.AuthenticationError):
            client.models.list()
        again = run_cli("keys", "revoke", "ci-bot", data_dir=data)
        assert again.returncode == 1 and "no active key" in again.stderr


def _works(client: openai.OpenAI) -> bool:
    try:
        client.models.list()
    except openai.AuthenticationError:
        return False
    return True


def test_admin_api_key_lifecycle(server: BastionServer) -> None:
    auth = {"authorization": f"Bearer {server.admin_key}"}
    r = httpx.post(server.base + "/admin/keys", json={"name": "tmp", "ttl_s": 3600}, headers=auth)
    assert r.status_code == 201
    key_id, secret = r.json()["id"], r.json()["key"]
    listed = httpx.get(server.base + "/admin/keys", headers=auth).json()["data"]
    assert any(k["id"] == key_id and "key" not in k for k in listed)
    assert secret not in httpx.get(server.base + "/admin/keys", headers=auth).text
    r = httpx.post(
        server.base + "/admin/keys", json={"name": "x", "models": ["nope"]}, headers=auth
    )
    assert r.status_code == 400 and r.json()["error"]["param"] == "models"
    assert httpx.delete(f"{server.base}/admin/keys/{key_id}", headers=auth).status_code == 200
    client = openai.OpenAI(base_url=server.url, api_key=secret, max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        client.models.list()


def test_admin_actions_are_audited_and_tampering_is_detected(
    fake: FakeUpstream, tmp_path: Path
) -> None:
    data = tmp_path / "d"
    with run_bastion(policy(fake), data, env=ENV) as srv:
        auth = {"authorization": f"Bearer {srv.admin_key}"}
        made = httpx.post(srv.base + "/admin/keys", json={"name": "audited"}, headers=auth)
        assert made.status_code == 201
        assert httpx.delete(f"{srv.base}/admin/keys/{made.json()['id']}", headers=auth).is_success
        assert httpx.post(srv.base + "/admin/policy/reload", headers=auth).json()["applied"]
        assert run_cli("keys", "create", "--name", "from-cli", data_dir=data).returncode == 0

        def kinds() -> list[str]:
            exported = run_cli("audit", "export", data_dir=data)
            return [json.loads(line)["kind"] for line in exported.stdout.splitlines()]

        eventually(lambda: len(kinds()) == 4)
        assert sorted(kinds()) == sorted(
            ["admin.key.create", "admin.key.revoke", "admin.policy.reload", "admin.key.create"]
        )
    # the drained log verifies; a secret never enters it
    ok = run_cli("audit", "verify", data_dir=data)
    assert ok.returncode == 0 and ok.stdout.startswith("ok: 4 events")
    exported = run_cli("audit", "export", data_dir=data).stdout
    assert made.json()["key"] not in exported and srv.admin_key not in exported
    # edit one event's content behind Bastion's back
    conn = sqlite3.connect(data / "bastion.db")
    conn.execute("UPDATE audit_events SET actor = 'someone-else' WHERE seq = 2")
    conn.commit()
    conn.close()
    bad = run_cli("audit", "verify", data_dir=data)
    assert bad.returncode == 1
    assert "event 2" in bad.stdout and "first bad event: 2" in bad.stdout


def test_editing_an_included_file_reloads(fake: FakeUpstream, tmp_path: Path) -> None:
    data = tmp_path / "d"
    data.mkdir()
    extra = data / "extra-models.yaml"
    extra.write_text("models:\n  inc-a: {routes: [{provider: up, model: a}]}\n")
    with run_bastion(policy(fake, "include: [extra-models.yaml]\n"), data, env=ENV) as srv:
        assert "inc-a" in model_ids(srv)
        extra.write_text("models:\n  inc-b: {routes: [{provider: up, model: b}]}\n")
        eventually(lambda: "inc-b" in model_ids(srv))
        assert "inc-a" not in model_ids(srv)
