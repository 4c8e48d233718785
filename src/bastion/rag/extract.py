"""Turn files and uploads into :class:`SourceDocument` objects for ingestion.

Supported formats (by file extension, case-insensitive): plain text
(``.txt``), Markdown (``.md``, ``.markdown``), HTML (``.html``, ``.htm``),
PDF (``.pdf``), Word (``.docx``) and row files (``.json``, ``.jsonl``,
``.csv``). The format parsers live in :mod:`bastion.rag.formats`.

A document is a list of :class:`Section` objects: text under one heading path
(Markdown, HTML, docx) or on one PDF page. A heading with no body of its own
(directly followed by another heading) is merged into the next section, so a
bare heading never becomes a section by itself. ``SourceDocument.text`` joins
the sections with a blank line; chunk offsets refer to that text.

Row files (``.json``, ``.jsonl``, ``.csv``) give one document per row:

* id: the row's ``id`` or ``_id`` field (as a string) when present and not
  empty, else ``"<file id>#<row number>"`` (1-based, counting rows, not lines);
* title: the row's ``title`` field, else the document id;
* text: the ``text_field`` field (default ``"text"``). A row without that field
  (or a CSV without that column) makes the whole file unparseable: this is
  almost always a wrong ``text_field``, and a silent skip would ingest nothing.
  A row whose text is null or empty is skipped like any empty document;
* metadata: every other field, plus ``format`` and ``file_name`` (a row field
  of the same name wins); the row number is in ``source`` (``#row=N``).

**Empty documents** (no text after extraction, e.g. a scanned PDF without a
text layer) are skipped: :func:`extract_file` returns no document for them and
does not fail. Files that cannot be parsed raise
:class:`~bastion.core.errors.UnparseableDocument` naming the file and the
reason, never quoting its content.
"""

from __future__ import annotations

import csv
import glob
import hashlib
import io
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bastion.core.errors import UnparseableDocument
from bastion.rag import formats

SUPPORTED = frozenset(
    {".txt", ".md", ".markdown", ".html", ".htm", ".pdf", ".docx", ".json", ".jsonl", ".csv"}
)

_GLOB_CHARS = frozenset("*?[")
_CSV_FIELD_LIMIT = 64 * 1024 * 1024


@dataclass(slots=True)
class Section:
    """A run of text under one heading path (or on one PDF page)."""

    text: str
    heading_path: tuple[str, ...] = ()
    page: int | None = None


@dataclass(slots=True)
class SourceDocument:
    """One extracted document, ready for chunking.

    ``source`` is a URI: ``file:///abs/path`` (``#row=N`` for a row of a JSON,
    JSONL or CSV file) or ``upload:NAME``. ``metadata`` is JSON-serialisable.
    """

    id: str
    title: str
    source: str
    sections: list[Section]
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def text(self) -> str:
        """The sections' texts joined by a blank line (what chunk offsets refer to)."""
        return "\n\n".join(s.text for s in self.sections)

    def content_hash(self) -> str:
        """SHA-256 (hex) over the title, the text and the canonical JSON of the metadata."""
        h = hashlib.sha256()
        h.update(self.title.encode("utf-8"))
        h.update(b"\x00")
        h.update(self.text.encode("utf-8"))
        h.update(b"\x00")
        canonical = json.dumps(
            self.metadata, sort_keys=True, ensure_ascii=False, separators=(",", ":")
        )
        h.update(canonical.encode("utf-8"))
        return h.hexdigest()


@dataclass(slots=True)
class ExtractFailure:
    """A file or upload that could not be extracted, and why."""

    source: str
    reason: str


def _is_hidden(parts: Sequence[str]) -> bool:
    return any(p.startswith(".") and p not in (".", "..") for p in parts)


def _abs(path: Path) -> Path:
    """An absolute, normalised path that keeps symlinks (ids stay relative to the root)."""
    return Path(os.path.normpath(path.absolute()))


def _walk(root: Path) -> list[Path]:
    """Supported, non-hidden files under ``root`` (symlinked folders are not followed)."""
    found: list[Path] = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for name in files:
            if not name.startswith(".") and Path(name).suffix.lower() in SUPPORTED:
                found.append(Path(folder) / name)
    return found


def _glob_root(pattern: str) -> Path:
    """The leading folders of ``pattern`` that hold no glob characters."""
    parts = Path(pattern).parts
    fixed: list[str] = []
    for part in parts[:-1]:
        if _GLOB_CHARS & set(part):
            break
        fixed.append(part)
    return _abs(Path(*fixed)) if fixed else _abs(Path("."))


def discover(paths: Sequence[str | Path]) -> list[tuple[Path, Path]]:
    """Expand files, folders and glob patterns into ``(file, root)`` pairs.

    * A folder is searched recursively; ``root`` is the folder, so document ids
      are paths relative to it. Hidden files and folders (names starting with
      ``.``) are skipped, symlinked folders are not followed, and files of
      unsupported types are ignored.
    * A file names itself (also a hidden one); ``root`` is its parent. Naming a
      file of an unsupported type raises.
    * A glob pattern (``*``, ``?``, ``[``; ``**`` matches folders recursively)
      matches files and folders (searched as above). Their root is the
      pattern's leading folders without glob characters: the file's parent for
      a pattern like ``docs/*.md``, but ``docs`` for ``docs/**/*.md``, which
      keeps ids of same-named files in different folders distinct. Glob
      wildcards skip hidden names.

    Files come back absolute, sorted and deduplicated (the first argument that
    finds a file sets its root). A path that does not exist and matches
    nothing raises :class:`~bastion.core.errors.UnparseableDocument` naming it.
    """
    found: dict[Path, Path] = {}

    def add(file: Path, root: Path) -> None:
        found.setdefault(_abs(file), _abs(root))

    for arg in paths:
        p = Path(arg).expanduser()
        if p.is_dir():
            for f in _walk(p):
                add(f, p)
        elif p.is_file():
            if p.suffix.lower() not in SUPPORTED:
                raise UnparseableDocument(
                    f"{p.name}: unsupported file type {p.suffix or '(none)'!r}; "
                    f"supported: {', '.join(sorted(SUPPORTED))}"
                )
            add(p, p.parent)
        elif _GLOB_CHARS & set(str(arg)):
            root = _glob_root(str(p))
            matches = sorted(glob.glob(str(p), recursive=True))
            if not matches:
                raise UnparseableDocument(
                    f"{arg}: no such file or folder (the pattern matched nothing)"
                )
            for m in matches:
                mp = Path(m)
                under = _is_under(mp, root)
                if mp.is_dir():
                    for f in _walk(mp):
                        add(f, root if under else mp)
                elif mp.is_file() and mp.suffix.lower() in SUPPORTED:
                    rel = _abs(mp).relative_to(root).parts if under else ()
                    if not _is_hidden(rel):
                        add(mp, root if under else mp.parent)
        else:
            raise UnparseableDocument(f"{arg}: no such file or folder")
    return sorted(found.items())


def _is_under(path: Path, root: Path) -> bool:
    try:
        _abs(path).relative_to(root)
    except ValueError:
        return False
    return True


def extract_file(path: Path, root: Path, *, text_field: str = "text") -> list[SourceDocument]:
    """Parse one file into documents (none when it holds no text).

    The document id is ``path`` relative to ``root`` in POSIX form (e.g.
    ``guides/install.md``; the file name when ``path`` is not under ``root``);
    rows of JSON, JSONL and CSV files get ids as described in the module
    docstring. ``source`` is the file's ``file://`` URI. Raises
    :class:`~bastion.core.errors.UnparseableDocument` when the file cannot be
    read or parsed.
    """
    path = _abs(Path(path))
    try:
        file_id = path.relative_to(_abs(Path(root))).as_posix()
    except ValueError:
        file_id = path.name
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UnparseableDocument(f"{path.name}: cannot be read ({exc.strerror or exc})") from exc
    return _extract(data, path.name, file_id, path.as_uri(), text_field)


def extract_bytes(
    data: bytes, filename: str, *, text_field: str = "text", doc_id: str | None = None
) -> list[SourceDocument]:
    """Parse an upload; the format comes from ``filename``'s extension.

    ``source`` is ``upload:<filename>``; the document id (of the file, or the
    base of its rows' ids) is ``doc_id`` or the filename.
    """
    filename = filename.strip()
    if not filename:
        raise UnparseableDocument("upload: a file name is required to tell its format")
    name = filename.replace("\\", "/").rsplit("/", 1)[-1]
    return _extract(data, name, doc_id or filename, f"upload:{filename}", text_field)


def extract_paths(
    paths: Sequence[str | Path], *, text_field: str = "text"
) -> tuple[list[SourceDocument], list[ExtractFailure]]:
    """:func:`discover` then :func:`extract_file` each file, collecting failures.

    A file that cannot be parsed becomes an :class:`ExtractFailure` (its path
    and the reason) instead of stopping the run; :func:`discover` errors (a
    missing path) still raise.
    """
    docs: list[SourceDocument] = []
    failures: list[ExtractFailure] = []
    for file, root in discover(paths):
        try:
            docs.extend(extract_file(file, root, text_field=text_field))
        except UnparseableDocument as exc:
            failures.append(ExtractFailure(source=str(file), reason=exc.message))
    return docs, failures


def _extract(
    data: bytes, name: str, file_id: str, source: str, text_field: str
) -> list[SourceDocument]:
    suffix = Path(name).suffix.lower()
    if suffix not in SUPPORTED:
        raise UnparseableDocument(
            f"{name}: unsupported file type {suffix or '(none)'!r}; "
            f"supported: {', '.join(sorted(SUPPORTED))}"
        )
    stem = Path(name).stem or name
    if suffix in (".json", ".jsonl", ".csv"):
        return _rows_to_documents(data, name, file_id, source, text_field, suffix)
    parsed = formats.parse(data, name, suffix, stem)
    sections = [Section(s.text, s.heading_path, s.page) for s in parsed.sections if s.text]
    if not sections:
        return []
    metadata: dict[str, Any] = {"format": parsed.format, "file_name": name, **parsed.metadata}
    return [
        SourceDocument(
            id=file_id, title=parsed.title, source=source, sections=sections, metadata=metadata
        )
    ]


def _row_id(row: dict[str, Any]) -> str | None:
    for key in ("id", "_id"):
        value = row.get(key)
        if value is None or isinstance(value, bool):
            continue
        if isinstance(value, dict) and isinstance(value.get("$oid"), str):
            value = value["$oid"]  # MongoDB extended JSON
        text = (
            value
            if isinstance(value, str)
            else json.dumps(value, sort_keys=True, ensure_ascii=False)
        )
        if text.strip():
            return text.strip()
    return None


def _row_text(value: Any, name: str, row_no: int, text_field: str) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return formats.clean_text(value).strip()
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    raise UnparseableDocument(
        f"{name}: row {row_no}: field {text_field!r} must be a string, not {type(value).__name__}"
    )


def _rows_to_documents(
    data: bytes, name: str, file_id: str, source: str, text_field: str, suffix: str
) -> list[SourceDocument]:
    fmt = suffix.lstrip(".")
    docs: list[SourceDocument] = []
    seen: dict[str, int] = {}
    for row_no, row in enumerate(_parse_rows(data, name, suffix, text_field), start=1):
        if text_field not in row:
            raise UnparseableDocument(f"{name}: row {row_no} has no {text_field!r} field")
        text = _row_text(row[text_field], name, row_no, text_field)
        doc_id = _row_id(row) or f"{file_id}#{row_no}"
        if doc_id in seen:
            raise UnparseableDocument(
                f"{name}: row {row_no} repeats id {doc_id!r} (first used by row {seen[doc_id]})"
            )
        seen[doc_id] = row_no
        if not text:
            continue
        raw_title = row.get("title")
        title = str(raw_title).strip() if raw_title not in (None, "") else doc_id
        # No row number here: it is in ``source``, and keeping it out of the content
        # hash spares re-embedding every row after an insertion above it.
        metadata: dict[str, Any] = {"format": fmt, "file_name": name}
        for key, value in row.items():
            if key not in ("id", "_id", "title", text_field):
                metadata[key] = value
        docs.append(
            SourceDocument(
                id=doc_id,
                title=title,
                source=f"{source}#row={row_no}",
                sections=[Section(text)],
                metadata=metadata,
            )
        )
    return docs


def _json_error(name: str, exc: json.JSONDecodeError, line: int | None = None) -> str:
    where = f"line {line}" if line is not None else f"line {exc.lineno} column {exc.colno}"
    return f"{name}: invalid JSON at {where} ({exc.msg})"


def _parse_rows(data: bytes, name: str, suffix: str, text_field: str) -> Iterator[dict[str, Any]]:
    """The rows of a ``.json`` (a list of objects, or one object), ``.jsonl`` or ``.csv`` file."""
    if suffix == ".csv":
        yield from _csv_rows(formats.decode(data, name), name, text_field)
        return
    text = formats.decode(data, name, strict=True)
    if suffix == ".jsonl":
        for line_no, line in enumerate(text.split("\n"), start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise UnparseableDocument(_json_error(name, exc, line_no)) from exc
            if not isinstance(obj, dict):
                raise UnparseableDocument(f"{name}: line {line_no} is not a JSON object")
            yield obj
        return
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UnparseableDocument(_json_error(name, exc)) from exc
    items = obj if isinstance(obj, list) else [obj]
    for index, item in enumerate(items, start=1):
        if not isinstance(item, dict):
            raise UnparseableDocument(f"{name}: item {index} is not a JSON object")
        yield item


def _csv_rows(text: str, name: str, text_field: str) -> Iterator[dict[str, Any]]:
    csv.field_size_limit(max(csv.field_size_limit(), _CSV_FIELD_LIMIT))
    reader = csv.DictReader(io.StringIO(text, newline=""))
    try:
        header = reader.fieldnames
        if header is None:
            return
        if text_field not in header:
            raise UnparseableDocument(f"{name}: no {text_field!r} column in the header")
        for row_no, row in enumerate(reader, start=1):
            if None in row:
                raise UnparseableDocument(f"{name}: row {row_no} has more cells than the header")
            yield dict(row)
    except csv.Error as exc:
        raise UnparseableDocument(f"{name}: invalid CSV at line {reader.line_num} ({exc})") from exc
