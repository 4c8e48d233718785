"""``bastion ingest`` / ``collections`` / ``rag query`` on a real folder, with a server running.

Every supported format plus a corrupt file in one folder; re-ingesting is
incremental; a server on the same data directory sees what the CLI wrote.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from bastion.testing.server import BastionServer, run_bastion


def bastion(*args: str, data_dir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bastion", *args, "--data-dir", str(data_dir)],
        capture_output=True,
        text=True,
        timeout=180,
        env={"COLUMNS": "200", "PATH": "/usr/bin:/bin"},
    )


def make_folder(root: Path) -> None:
    import docx

    (root / "guides").mkdir(parents=True)
    (root / "guides" / "install.md").write_text(
        "# Install\n\n## On Linux\n\nRun the installer with the --prefix flag to choose "
        "the target directory.\n"
    )
    (root / "faq.html").write_text(
        "<html><head><title>FAQ</title><script>var x = 'noise';</script></head><body>"
        "<h1>FAQ</h1><p>Refunds are processed within fourteen days of the request.</p>"
        "</body></html>"
    )
    (root / "people.csv").write_text(
        "id,title,text,team\n"
        "p1,Ada,Ada maintains the billing service and the invoice exporter.,billing\n"
        "p2,Linus,Linus runs the kernel build farm.,infra\n"
    )
    d = docx.Document()
    d.add_heading("Security policy", level=1)
    d.add_paragraph("Laptops must use full-disk encryption at all times.")
    d.save(str(root / "policy.docx"))
    (root / "notes.txt").write_text("The office plants are watered every Tuesday morning.")
    (root / "events.jsonl").write_text(
        json.dumps({"_id": "e1", "title": "Offsite", "text": "The offsite is in Lisbon in May."})
        + "\n"
    )
    (root / "broken.pdf").write_bytes(b"%PDF-1.7 garbage that no parser can read")


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path]]:
    base = tmp_path_factory.mktemp("ragcli")
    folder = base / "kb"
    make_folder(folder)
    yield folder, base / "data"


def test_ingest_reports_the_corrupt_file_and_keeps_the_rest(data: tuple[Path, Path]) -> None:
    folder, data_dir = data
    r = bastion("ingest", str(folder), "-c", "kb", data_dir=data_dir)
    assert r.returncode == 2, r.stdout + r.stderr  # one file failed
    assert "kb: 7 added, 0 updated, 0 unchanged, 0 deleted, 1 failed" in r.stdout
    assert "broken.pdf" in r.stderr and "Traceback" not in r.stderr
    r = bastion("collections", data_dir=data_dir)
    assert r.returncode == 0, r.stderr
    row = next(line for line in r.stdout.splitlines() if " kb " in f" {line} ")
    assert " 7 " in row


@pytest.mark.parametrize(
    ("question", "document"),
    [
        ("how do I choose the install target directory", "guides/install.md"),
        ("how long do refunds take", "faq.html"),
        ("who maintains the invoice exporter", "p1"),
        ("is disk encryption required on laptops", "policy.docx"),
        ("when are the plants watered", "notes.txt"),
        ("where is the offsite", "e1"),
    ],
)
def test_each_format_is_searchable(data: tuple[Path, Path], question: str, document: str) -> None:
    _, data_dir = data
    r = bastion("rag", "query", "kb", question, "--top-k", "1", data_dir=data_dir)
    assert r.returncode == 0, r.stderr
    assert f" {document} " in r.stdout, r.stdout


def test_reingest_is_incremental_and_a_running_server_sees_it(data: tuple[Path, Path]) -> None:
    folder, data_dir = data
    (folder / "broken.pdf").unlink()
    r = bastion("ingest", str(folder), "-c", "kb", data_dir=data_dir)
    assert r.returncode == 0, r.stderr
    assert "0 added, 0 updated, 7 unchanged, 0 deleted, 0 failed" in r.stdout
    assert "chunks +0 -0" in r.stdout
    with run_bastion(None, data_dir) as srv:
        before = ask(srv, "what day are the plants watered")
        assert before[0]["document_id"] == "notes.txt"
        (folder / "notes.txt").write_text("The office plants are watered on Friday evenings.")
        (folder / "faq.html").unlink()
        r = bastion("ingest", str(folder), "-c", "kb", data_dir=data_dir)
        assert r.returncode == 0, r.stderr
        assert "0 added, 1 updated, 5 unchanged, 1 deleted, 0 failed" in r.stdout
        after = ask(srv, "what day are the plants watered")
        assert after[0]["document_id"] == "notes.txt"
        assert "Friday" in after[0]["text"] and after[0]["metadata"]["version"] == 2
        assert all(x["document_id"] != "faq.html" for x in ask(srv, "refunds fourteen days"))
        grounded_chat_on_the_bundled_model(srv)


def grounded_chat_on_the_bundled_model(srv: BastionServer) -> None:
    """The bundled SmolLM2 answers from the collection; citations come back checked."""
    client = openai.OpenAI(base_url=srv.url, api_key=srv.admin_key, max_retries=0)
    resp = client.chat.completions.create(
        model="local-chat",
        messages=[{"role": "user", "content": "When are the office plants watered?"}],
        extra_body={"bastion": {"collections": ["kb"], "top_k": 3}},
        max_tokens=48,
        temperature=0,
    )
    answer = resp.choices[0].message.content or ""
    assert answer.strip()
    extra = resp.model_extra or {}
    assert extra["bastion"]["retrieval"]["sources"] >= 1
    sentences = extra["bastion"]["grounding"]["sentences"]
    assert all(s["text"] in answer for s in sentences)
    for c in extra["citations"]:
        assert c["collection"] == "kb" and c["uri"].startswith("file://")
        if c["supported"]:
            assert c["quote"] and c["document_id"] in {
                "notes.txt",
                "guides/install.md",
                "p1",
                "p2",
                "policy.docx",
                "e1",
            }
    assert resp.usage is not None and resp.usage.prompt_tokens > 40  # the sources went in


def ask(srv: BastionServer, q: str) -> list[dict[str, object]]:
    r = httpx.post(
        srv.url + "/rag/query",
        headers={"authorization": f"Bearer {srv.admin_key}"},
        json={"collection": "kb", "query": q, "top_k": 5},
        timeout=60,
    )
    assert r.status_code == 200, r.text
    return list(r.json()["results"])
