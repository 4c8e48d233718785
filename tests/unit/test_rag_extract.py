"""Extraction of RAG source documents: every format, ids, errors, discovery."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from bastion.core.errors import UnparseableDocument
from bastion.rag.extract import (
    SourceDocument,
    discover,
    extract_bytes,
    extract_file,
    extract_paths,
)


def _pdf(pages: list[list[str]], title: str | None = None) -> bytes:
    """A minimal valid PDF: one page per entry, each line drawn in Helvetica."""
    n = len(pages)
    page_ids = [4 + 2 * i for i in range(n)]
    kids = " ".join(f"{p} 0 R" for p in page_ids)
    objects: dict[int, bytes] = {
        1: b"<< /Type /Catalog /Pages 2 0 R >>",
        2: f"<< /Type /Pages /Kids [{kids}] /Count {n} >>".encode(),
        3: b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    }
    for i, lines in enumerate(pages):
        shown = " T* ".join(f"({line}) Tj" for line in lines)
        stream = f"BT /F1 12 Tf 14 TL 72 720 Td {shown} ET".encode() if lines else b""
        objects[page_ids[i]] = (
            f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] "
            f"/Resources << /Font << /F1 3 0 R >> >> /Contents {page_ids[i] + 1} 0 R >>"
        ).encode()
        objects[page_ids[i] + 1] = (
            f"<< /Length {len(stream)} >>\nstream\n".encode() + stream + b"\nendstream"
        )
    info = None
    if title is not None:
        info = 4 + 2 * n
        objects[info] = f"<< /Title ({title}) >>".encode()
    out = b"%PDF-1.4\n"
    offsets: dict[int, int] = {}
    for number in sorted(objects):
        offsets[number] = len(out)
        out += f"{number} 0 obj\n".encode() + objects[number] + b"\nendobj\n"
    xref = len(out)
    size = max(objects) + 1
    out += f"xref\n0 {size}\n0000000000 65535 f \n".encode()
    out += b"".join(f"{offsets[k]:010d} 00000 n \n".encode() for k in range(1, size))
    trailer = f"/Size {size} /Root 1 0 R" + (f" /Info {info} 0 R" if info else "")
    out += f"trailer\n<< {trailer} >>\nstartxref\n{xref}\n%%EOF\n".encode()
    return out


def _write(root: Path, rel: str, content: str | bytes) -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path


def _one(docs: list[SourceDocument]) -> SourceDocument:
    assert len(docs) == 1
    return docs[0]


# --- text formats ----------------------------------------------------------------------


def test_txt_one_section_stem_title_file_uri(tmp_path: Path) -> None:
    path = _write(tmp_path, "notes/hello world.txt", b"\xef\xbb\xbfFirst line\r\nSecond line\r\n")
    doc = _one(extract_file(path, tmp_path))
    assert doc.id == "notes/hello world.txt"
    assert doc.title == "hello world"
    assert doc.source == path.as_uri() and doc.source.startswith("file:///")
    assert [s.text for s in doc.sections] == ["First line\nSecond line"]
    assert doc.metadata == {"format": "text", "file_name": "hello world.txt"}


def test_txt_latin1_fallback_and_empty_file_skipped(tmp_path: Path) -> None:
    latin = _write(tmp_path, "a.txt", "Caf\xe9 cr\xe8me".encode("latin-1"))
    assert _one(extract_file(latin, tmp_path)).text == "Café crème"
    assert extract_file(_write(tmp_path, "empty.txt", "  \n\n "), tmp_path) == []


def test_markdown_heading_paths_and_code_fences(tmp_path: Path) -> None:
    md = (
        "Intro before any heading.\n\n"
        "# Guide\n\nWelcome.\n\n"
        "## Install\n\n"
        "### On Linux ###\n\nRun this:\n\n```sh\n# not a heading\napt install x\n```\n\n"
        "~~~\n## also not a heading\n~~~\n\n"
        "## Usage\n\nUse it.\n"
        "#hashtag is text\n"
    )
    doc = _one(extract_file(_write(tmp_path, "guide.md", md), tmp_path))
    assert doc.title == "Guide"
    assert doc.metadata["format"] == "markdown"
    paths = [s.heading_path for s in doc.sections]
    assert paths == [(), ("Guide",), ("Guide", "Install", "On Linux"), ("Guide", "Usage")]
    linux = doc.sections[2]
    # The bare "## Install" heading is carried into the next section, not a section alone.
    assert linux.text.startswith("## Install\n\n### On Linux ###\n\nRun this:")
    assert "# not a heading" in linux.text and "## also not a heading" in linux.text
    assert doc.sections[3].text == "## Usage\n\nUse it.\n#hashtag is text"
    assert doc.text == "\n\n".join(s.text for s in doc.sections)


def test_markdown_drops_comment_blocks_outside_fences(tmp_path: Path) -> None:
    md = (
        "# Doc\n\n<!-- introduced_in=v1 -->\nVisible.\n\n<!--\n# hidden heading\nsecret\n"
        "--> after\n\n```html\n<!-- kept in code -->\n```\nInline <!-- stays --> here.\n"
    )
    doc = _one(extract_bytes(md.encode(), "c.md"))
    assert [s.heading_path for s in doc.sections] == [("Doc",)]
    assert doc.text == (
        "# Doc\n\nVisible.\n\nafter\n\n```html\n<!-- kept in code -->\n```\n"
        "Inline <!-- stays --> here."
    )


def test_markdown_front_matter_title_and_stem_fallback(tmp_path: Path) -> None:
    with_fm = "---\ntitle: From Front Matter\ntags: [a]\n---\n# Heading One\n\nBody.\n"
    doc = _one(extract_file(_write(tmp_path, "fm.md", with_fm), tmp_path))
    assert doc.title == "From Front Matter"
    assert "tags" not in doc.text and doc.text.startswith("# Heading One")
    plain = _one(extract_file(_write(tmp_path, "plain.markdown", "## Only H2\n\ntext"), tmp_path))
    assert plain.title == "plain"
    assert plain.sections[0].heading_path == ("Only H2",)


def test_html_sections_drop_boilerplate_and_title(tmp_path: Path) -> None:
    html = """<!doctype html><html><head><title> The  Page </title>
    <style>body { color: red }</style><script>var secret = "SCRIPT";</script></head>
    <body><header>Site banner</header><nav><a href="/">Home nav</a></nav>
    <noscript>enable js</noscript>
    <p>Lead   paragraph
    text.</p>
    <h1>Main<a href="#main">#</a></h1><div>First <b>bold</b> block.</div><p>Second block.</p>
    <h2>Sub <a class="headerlink" href="#sub">¶</a></h2><ul><li>one</li><li>two</li></ul>
    <table><tr><th>Name</th><th>Price</th></tr><tr><td>Tea</td><td>3</td></tr></table>
    <pre>line 1
      indented</pre>
    <h3></h3><svg><text>SVG TEXT</text></svg>
    <footer>Copyright FOOTER</footer></body></html>"""
    doc = _one(extract_file(_write(tmp_path, "page.html", html), tmp_path))
    assert doc.title == "The Page"
    for dropped in ("SCRIPT", "color", "Site banner", "Home nav", "enable js", "SVG", "FOOTER"):
        assert dropped not in doc.text
    assert [s.heading_path for s in doc.sections] == [(), ("Main",), ("Main", "Sub")]
    assert doc.sections[0].text == "Lead paragraph text."
    assert doc.sections[1].text == "Main\n\nFirst bold block.\n\nSecond block."
    sub = doc.sections[2].text
    assert sub.startswith("Sub\n\none\n\ntwo\n\n")
    assert "Name | Price\n\nTea | 3" in sub
    assert "line 1\n      indented" in sub


def test_html_title_falls_back_to_h1_then_stem_and_keeps_article_header(tmp_path: Path) -> None:
    html = "<article><header><h1>Article Title</h1></header><p>Body.</p></article>"
    doc = _one(extract_file(_write(tmp_path, "a.htm", html), tmp_path))
    assert doc.title == "Article Title"
    assert doc.sections[0].heading_path == ("Article Title",)
    bare = _one(
        extract_file(_write(tmp_path, "bare.html", "<p>Just &amp; text<br>next</p>"), tmp_path)
    )
    assert bare.title == "bare" and bare.text == "Just & text\nnext"


# --- PDF and docx ------------------------------------------------------------------------


def test_pdf_pages_title_and_empty_pages_skipped(tmp_path: Path) -> None:
    data = _pdf([["Page one text.", "Second line."], [], ["Third page here."]], title="Manual")
    doc = _one(extract_file(_write(tmp_path, "m.pdf", data), tmp_path))
    assert doc.title == "Manual"
    assert [s.page for s in doc.sections] == [1, 3]
    assert "Page one text." in doc.sections[0].text and "Second line." in doc.sections[0].text
    assert "Third page here." in doc.sections[1].text
    assert doc.metadata == {"format": "pdf", "file_name": "m.pdf", "pages": 3}
    untitled = _one(extract_bytes(_pdf([["Hello."]]), "scan.pdf"))
    assert untitled.title == "scan" and untitled.source == "upload:scan.pdf"


def test_corrupt_and_encrypted_pdf_are_unparseable(tmp_path: Path) -> None:
    bad = _write(tmp_path, "broken.pdf", b"%PDF-1.4\n this is not really a pdf \x00\x01")
    with pytest.raises(UnparseableDocument, match=r"broken\.pdf") as err:
        extract_file(bad, tmp_path)
    assert err.value.code == "unparseable_document" and err.value.status == 400
    with pytest.raises(UnparseableDocument, match=r"garbage\.pdf"):
        extract_bytes(b"\x89garbage" * 50, "garbage.pdf")

    from pypdf import PdfReader, PdfWriter

    writer = PdfWriter(clone_from=PdfReader(io.BytesIO(_pdf([["Secret text."]]))))
    writer.encrypt("hunter2", algorithm="RC4-128")
    buffer = io.BytesIO()
    writer.write(buffer)
    with pytest.raises(UnparseableDocument, match=r"locked\.pdf: the PDF is encrypted"):
        extract_bytes(buffer.getvalue(), "locked.pdf")


def _docx_bytes(core_title: str | None) -> bytes:
    import docx

    document = docx.Document()
    if core_title is not None:
        document.core_properties.title = core_title
    document.add_heading("Handbook", 0)
    document.add_paragraph("Preface text.")
    document.add_heading("Install", 1)
    document.add_heading("On Linux", 2)
    document.add_paragraph("Use the package manager.")
    table = document.add_table(rows=2, cols=2)
    table.cell(0, 0).text, table.cell(0, 1).text = "OS", "Command"
    table.cell(1, 0).text, table.cell(1, 1).text = "Debian", "apt"
    document.add_heading("Usage", 1)
    document.add_paragraph("Run it.")
    buffer = io.BytesIO()
    document.save(buffer)
    return buffer.getvalue()


def test_docx_headings_tables_and_title(tmp_path: Path) -> None:
    path = _write(tmp_path, "hb.docx", _docx_bytes(core_title="Core Title"))
    doc = _one(extract_file(path, tmp_path))
    assert doc.title == "Core Title"
    assert doc.metadata["format"] == "docx"
    assert [s.heading_path for s in doc.sections] == [
        ("Handbook",),
        ("Handbook", "Install", "On Linux"),
        ("Handbook", "Usage"),
    ]
    assert doc.sections[0].text == "Handbook\n\nPreface text."
    linux = doc.sections[1].text
    assert (
        linux == "Install\n\nOn Linux\n\nUse the package manager.\n\nOS | Command\n\nDebian | apt"
    )
    no_core = _one(extract_bytes(_docx_bytes(core_title=None), "hb.docx"))
    assert no_core.title == "Handbook"


def test_corrupt_docx_is_unparseable(tmp_path: Path) -> None:
    bad = _write(tmp_path, "report.docx", b"PK\x03\x04 definitely not a zip archive")
    with pytest.raises(UnparseableDocument, match=r"report\.docx: not a readable docx"):
        extract_file(bad, tmp_path)


# --- rows ------------------------------------------------------------------------------


def test_jsonl_ids_titles_metadata(tmp_path: Path) -> None:
    lines = [
        {"id": 7, "title": "Seven", "text": "Row seven.", "lang": "en", "tags": ["a"]},
        {"_id": "abc", "text": "Row abc."},
        {"text": "No id here.", "format": "blog"},
        {"id": "empty", "text": ""},
    ]
    body = (
        "\n".join(json.dumps(x) for x in lines[:2])
        + "\n\n"
        + "\n".join(json.dumps(x) for x in lines[2:])
    )
    path = _write(tmp_path, "data/rows.jsonl", body)
    docs = extract_file(path, tmp_path)
    assert [d.id for d in docs] == ["7", "abc", "data/rows.jsonl#3"]
    assert [d.title for d in docs] == ["Seven", "abc", "data/rows.jsonl#3"]
    assert docs[0].metadata == {
        "format": "jsonl",
        "file_name": "rows.jsonl",
        "lang": "en",
        "tags": ["a"],
    }
    assert docs[0].source == path.as_uri() + "#row=1"
    assert docs[2].metadata["format"] == "blog"  # a row field wins over the extractor's key
    assert docs[1].text == "Row abc."


def test_jsonl_bad_line_and_missing_text_field(tmp_path: Path) -> None:
    path = _write(tmp_path, "bad.jsonl", '{"text": "ok"}\n{"text": broken}\n')
    with pytest.raises(UnparseableDocument, match=r"bad\.jsonl: invalid JSON at line 2"):
        extract_file(path, tmp_path)
    with pytest.raises(UnparseableDocument, match=r"rows\.jsonl: row 2 has no 'body' field"):
        extract_bytes(b'{"body": "a"}\n{"text": "b"}\n', "rows.jsonl", text_field="body")
    with pytest.raises(UnparseableDocument, match=r"line 1 is not a JSON object"):
        extract_bytes(b"[1, 2]\n", "x.jsonl")
    with pytest.raises(UnparseableDocument, match=r"repeats id '1'"):
        extract_bytes(b'{"id": 1, "text": "a"}\n{"id": "1", "text": "b"}\n', "dup.jsonl")


def test_json_list_and_single_object(tmp_path: Path) -> None:
    rows = [{"id": "a", "text": "Alpha."}, {"text": "Beta.", "n": 2}]
    docs = extract_file(_write(tmp_path, "list.json", json.dumps(rows)), tmp_path)
    assert [(d.id, d.text) for d in docs] == [("a", "Alpha."), ("list.json#2", "Beta.")]
    assert docs[1].metadata["n"] == 2
    single = extract_bytes(json.dumps({"title": "One", "text": "Solo."}).encode(), "one.json")
    assert [(d.id, d.title, d.source) for d in single] == [
        ("one.json#1", "One", "upload:one.json#row=1")
    ]
    custom = extract_bytes(b'{"text": "x"}', "up.json", doc_id="docs/up")
    assert custom[0].id == "docs/up#1"
    with pytest.raises(UnparseableDocument, match=r"list\.json: item 2 is not a JSON object"):
        extract_bytes(b'[{"text": "a"}, 3]', "list.json")
    with pytest.raises(UnparseableDocument, match=r"j\.json: invalid JSON at line 1 column"):
        extract_bytes(b'{"text": ', "j.json")


def test_csv_bom_id_column_and_custom_text_field(tmp_path: Path) -> None:
    data = '\ufeffid,name,body,lang\r\n1,First,Hello there.,en\r\n,Second,"Multi\r\nline",de\r\n'
    path = _write(tmp_path, "t.csv", data.encode("utf-8"))
    docs = extract_file(path, tmp_path, text_field="body")
    assert [d.id for d in docs] == ["1", "t.csv#2"]
    assert docs[1].text == "Multi\nline"
    assert docs[0].metadata == {
        "format": "csv",
        "file_name": "t.csv",
        "name": "First",
        "lang": "en",
    }
    with pytest.raises(UnparseableDocument, match=r"t\.csv: no 'text' column"):
        extract_file(path, tmp_path)
    with pytest.raises(UnparseableDocument, match=r"row 1 has more cells than the header"):
        extract_bytes(b"text\na,b\n", "wide.csv")


def test_content_hash_covers_title_text_and_metadata() -> None:
    base = _one(extract_bytes(b'{"id": "x", "text": "Body.", "k": 1}', "h.json"))
    same = _one(extract_bytes(b'{"k": 1, "text": "Body.", "id": "x"}', "h.json"))
    assert base.content_hash() == same.content_hash()
    assert len(base.content_hash()) == 64
    for changed in (
        b'{"id": "x", "text": "Body!", "k": 1}',
        b'{"id": "x", "text": "Body.", "k": 2}',
        b'{"id": "x", "title": "T", "text": "Body.", "k": 1}',
    ):
        assert _one(extract_bytes(changed, "h.json")).content_hash() != base.content_hash()


def test_row_hash_survives_moving_the_row() -> None:
    first = extract_bytes(b'{"id": "a", "text": "A."}\n{"id": "b", "text": "B."}', "r.jsonl")
    moved = extract_bytes(b'{"id": "new", "text": "N."}\n{"id": "a", "text": "A."}', "r.jsonl")
    assert first[0].id == moved[1].id == "a"
    assert first[0].source != moved[1].source
    assert first[0].content_hash() == moved[1].content_hash()


def test_upload_errors() -> None:
    with pytest.raises(UnparseableDocument, match=r"notes\.rtf: unsupported file type '\.rtf'"):
        extract_bytes(b"{\\rtf1}", "notes.rtf")
    with pytest.raises(UnparseableDocument, match="file name is required"):
        extract_bytes(b"x", "  ")
    up = _one(extract_bytes(b"# T\n\nx", "dir/readme.md"))
    assert up.id == "dir/readme.md" and up.metadata["file_name"] == "readme.md"


# --- discovery ---------------------------------------------------------------------------


def test_discover_folders_globs_hidden_and_missing(tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    for rel in ("a.md", "guides/install.md", "guides/img.png", ".hidden.md", ".git/x.md"):
        _write(docs, rel, "x")
    _write(tmp_path, "api/install.md", "x")
    _write(tmp_path, "single.txt", "x")

    found = discover([docs])
    assert [(f.relative_to(r).as_posix(), r) for f, r in found] == [
        ("a.md", docs),
        ("guides/install.md", docs),
    ]
    # A named file (even hidden) is taken as is; duplicates collapse; order is by path.
    found = discover([tmp_path / "single.txt", docs / ".hidden.md", docs, docs / "a.md"])
    assert [f.name for f, _ in found] == [".hidden.md", "a.md", "install.md", "single.txt"]
    assert dict(found)[docs / "a.md"] == docs
    assert dict(found)[tmp_path / "single.txt"] == tmp_path

    found = discover([str(tmp_path / "*" / "install.md")])
    assert [(f.relative_to(r).as_posix(), r) for f, r in found] == [("api/install.md", tmp_path)]
    found = discover([str(tmp_path / "**" / "*.md")])
    ids = [f.relative_to(r).as_posix() for f, r in found]
    assert ids == ["api/install.md", "docs/a.md", "docs/guides/install.md"]
    assert all(r == tmp_path for _, r in found)
    found = discover([str(docs / "*.md")])
    assert [(f.name, r) for f, r in found] == [("a.md", docs)]
    found = discover([str(tmp_path / "d*")])  # a folder matched by a pattern is searched
    assert [(f.relative_to(r).as_posix(), r) for f, r in found] == [
        ("docs/a.md", tmp_path),
        ("docs/guides/install.md", tmp_path),
    ]

    with pytest.raises(UnparseableDocument, match="nothing-here: no such file or folder"):
        discover([tmp_path / "nothing-here"])
    with pytest.raises(UnparseableDocument, match="matched nothing"):
        discover([str(tmp_path / "*.pdf")])
    with pytest.raises(UnparseableDocument, match=r"img\.png: unsupported file type"):
        discover([docs / "guides" / "img.png"])


def test_extract_paths_collects_failures(tmp_path: Path) -> None:
    _write(tmp_path, "ok.md", "# Fine\n\nText.")
    _write(tmp_path, "bad.pdf", b"not a pdf")
    docs, failures = extract_paths([tmp_path])
    assert [d.id for d in docs] == ["ok.md"]
    assert len(failures) == 1
    assert failures[0].source == str(tmp_path / "bad.pdf")
    assert "bad.pdf" in failures[0].reason
