"""RAG in scale-out mode: two replicas on PostgreSQL + pgvector (pgserver).

``bastion db upgrade`` creates every table (core and RAG) in a fresh
database; one replica ingests, the other answers, with ACLs applied in SQL.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import psycopg
import pytest

from bastion.testing.server import BastionServer, run_bastion
from tests.integration.governance_helpers import make_key, make_tenant, wait_keys


@pytest.fixture(scope="module")
def replicas(
    pg_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[BastionServer, BastionServer, dict[str, str]]]:
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("DROP DATABASE IF EXISTS rag_scaleout WITH (FORCE)")
        conn.execute("CREATE DATABASE rag_scaleout")
    url = urlsplit(pg_url)._replace(path="/rag_scaleout").geturl()
    env = {"BASTION_DATABASE_URL": url}
    out = subprocess.run(
        [sys.executable, "-m", "bastion", "db", "upgrade"],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert "RAG schema (pgvector) up to date" in out.stdout
    tmp = tmp_path_factory.mktemp("ragpg")
    with (
        run_bastion(None, Path(tmp / "a"), env=env) as a,
        run_bastion(None, Path(tmp / "b"), env=env) as b,
    ):
        make_tenant(a, "acme")
        r = httpx.post(
            a.url.removesuffix("/v1") + "/admin/teams",
            headers={"authorization": f"Bearer {a.admin_key}"},
            json={"name": "red", "tenant": "acme"},
        )
        assert r.status_code == 201, r.text
        keys = {
            "dev": make_key(a, "acme-dev", tenant="acme", role="developer")["key"],
            "red": make_key(a, "acme-red", tenant="acme", team="red")["key"],
            "app": make_key(a, "acme-app", tenant="acme")["key"],
        }
        for k in keys.values():
            wait_keys(a, k)
            wait_keys(b, k)
        yield a, b, keys


def call(srv: BastionServer, key: str, path: str, body: dict[str, object]) -> httpx.Response:
    return httpx.post(
        srv.url + path, headers={"authorization": f"Bearer {key}"}, json=body, timeout=60
    )


def test_one_replica_ingests_the_other_answers_with_acls(
    replicas: tuple[BastionServer, BastionServer, dict[str, str]],
) -> None:
    a, b, keys = replicas
    docs = [
        {"id": "open", "text": "The cafeteria opens at eight in the morning."},
        {"id": "secret", "text": "The red team's launch code word is tangerine."},
    ]
    r = call(a, keys["dev"], "/collections/ops/documents", {"documents": docs[:1]})
    assert r.status_code == 200, r.text
    r = call(
        a,
        keys["dev"],
        "/collections/ops/documents",
        {"documents": docs[1:], "acl": {"teams": ["red"]}},
    )
    assert r.json()["documents"]["added"] == 1
    q = {"collection": "ops", "query": "launch code word", "top_k": 5}
    red = call(b, keys["red"], "/rag/query", q).json()["results"]
    assert red[0]["document_id"] == "secret"
    app = call(b, keys["app"], "/rag/query", q).json()["results"]
    assert [x["document_id"] for x in app] == ["open"]
    assert "tangerine" not in str(app)
    # re-ingesting through the other replica changes nothing
    r = call(b, keys["dev"], "/collections/ops/documents", {"documents": docs[:1]})
    assert r.json()["documents"]["unchanged"] == 1 and r.json()["tokens"] == 0
