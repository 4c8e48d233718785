"""Format parsers behind :mod:`bastion.rag.extract`.

Each parser takes a file's bytes and returns a :class:`Parsed`: a title and a
list of :class:`Part` (text under a heading path, or on a PDF page). Parsers
raise :class:`~bastion.core.errors.UnparseableDocument` naming the file and the
reason; they never quote the content.

* text: UTF-8 (a byte-order mark is stripped; UTF-16 with a BOM is read too),
  falling back to Latin-1 for txt, Markdown, HTML and CSV; JSON and JSONL must
  be UTF-8. Newlines become ``\\n``; NUL characters are removed.
* Markdown: ATX headings (``#`` .. ``######``) open sections; fenced code
  blocks never hold headings; YAML front matter is dropped (its ``title`` is
  used), and so are HTML comment blocks (lines from one starting with
  ``<!--`` to one holding ``-->``). Setext (underlined) headings are plain text.
* HTML: ``script``, ``style``, ``noscript``, ``template``, ``svg``, ``nav``,
  ``footer`` and page-level ``header`` elements (not those inside ``article``
  or ``main``) are dropped, as are permalink anchors (``#``, ``¶``) in headings;
  ``h1``..``h6`` open sections; block elements become paragraphs; ``pre``
  keeps its line breaks.
* PDF (pypdf): one part per page with text; encrypted (with a non-empty
  password) or corrupt files are unparseable.
* docx (python-docx): ``Title`` and ``Heading N`` paragraphs open sections;
  each table row becomes a paragraph of its cells' texts joined by `` | ``.
"""

from __future__ import annotations

import codecs
import contextlib
import io
import logging
import re
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from bastion.core.errors import UnparseableDocument


@dataclass(slots=True)
class Part:
    """Text under one heading path or on one page (``text`` is stripped)."""

    text: str
    heading_path: tuple[str, ...] = ()
    page: int | None = None


@dataclass(slots=True)
class Parsed:
    """What a format parser found in a file."""

    format: str
    title: str
    sections: list[Part]
    metadata: dict[str, Any] = field(default_factory=dict)


def clean_text(text: str) -> str:
    """Newlines normalised to ``\\n`` (also form and line feeds), NUL characters removed."""
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    if "\x00" in text:
        text = text.replace("\x00", "")
    if "\f" in text or "\v" in text:
        text = text.replace("\f", "\n").replace("\v", "\n")
    return text


def decode(data: bytes, name: str, *, strict: bool = False) -> str:
    """Bytes to text: UTF-8 (BOM stripped) or BOM-marked UTF-16, else Latin-1.

    With ``strict`` invalid UTF-8 is an error instead of falling back.
    """
    try:
        if data.startswith(codecs.BOM_UTF8):
            text = data[len(codecs.BOM_UTF8) :].decode("utf-8")
        elif data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
            text = data.decode("utf-16")
        else:
            text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        if strict:
            raise UnparseableDocument(f"{name}: not valid UTF-8 (at byte {exc.start})") from exc
        text = data.decode("latin-1")
    return clean_text(text)


class _Outline:
    """Collects blocks under a stack of headings into parts.

    A heading whose section has no body (another heading follows at once) is
    carried into the next section's text instead of becoming a part of its own.
    """

    def __init__(self) -> None:
        self._stack: list[tuple[int, str]] = []
        self._heading: str | None = None
        self._blocks: list[str] = []
        self._pending: list[str] = []
        self._pending_path: tuple[str, ...] = ()
        self.parts: list[Part] = []

    def heading(self, level: int, title: str, line: str | None = None) -> None:
        """Open a section under ``title`` at ``level``; ``line`` is its text (default: title)."""
        self._flush()
        while self._stack and self._stack[-1][0] >= level:
            self._stack.pop()
        self._stack.append((level, title))
        self._heading = line if line is not None else title

    def block(self, text: str) -> None:
        """Add a paragraph (or any block) of body text to the current section."""
        text = text.strip()
        if text:
            self._blocks.append(text)

    def _flush(self) -> None:
        path = tuple(t for _, t in self._stack)
        if not self._blocks:
            if self._heading is not None:
                self._pending.append(self._heading)
                self._pending_path = path
            self._heading = None
            return
        head = [self._heading] if self._heading is not None else []
        self.parts.append(Part("\n\n".join(self._pending + head + self._blocks), path))
        self._pending, self._heading, self._blocks = [], None, []

    def finish(self) -> list[Part]:
        """The parts, with a trailing run of bare headings as a last part."""
        self._flush()
        if self._pending:
            self.parts.append(Part("\n\n".join(self._pending), self._pending_path))
            self._pending = []
        return self.parts


# --- text and Markdown -----------------------------------------------------------------

_ATX = re.compile(r"^ {0,3}(#{1,6})(?:[ \t]+(.*?))?[ \t]*$")
_CLOSING_HASHES = re.compile(r"(?:^|[ \t]+)#+$")
_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})(.*)$")
_COMMENT_START = re.compile(r"^ {0,3}<!--")
_FRONT_MATTER_END = re.compile(r"^(?:---|\.\.\.)[ \t]*$", re.M)


def _front_matter(text: str) -> tuple[str, str | None]:
    """``text`` without a leading YAML front matter block, and the block's title."""
    if not text.startswith("---\n"):
        return text, None
    end = _FRONT_MATTER_END.search(text, 4)
    if end is None:
        return text, None
    import yaml

    try:
        meta = yaml.safe_load(text[4 : end.start()])
    except yaml.YAMLError:
        return text, None
    if not isinstance(meta, dict):
        return text, None
    title = meta.get("title")
    return text[end.end() :], title.strip() if isinstance(title, str) and title.strip() else None


def parse_markdown(text: str, stem: str) -> Parsed:
    """Sections at ATX headings (outside code fences); title: front matter, first H1, stem."""
    text, title = _front_matter(text)
    outline = _Outline()
    body: list[str] = []
    fence: str | None = None
    first_h1: str | None = None
    in_comment = False
    for raw in text.split("\n"):
        line = raw.rstrip()
        if fence is not None:
            body.append(line)
            stripped = line.strip()
            if stripped.startswith(fence) and not stripped.strip(fence[0]):
                fence = None
            continue
        if in_comment or _COMMENT_START.match(line):  # an HTML comment block: never shown
            in_comment = "-->" not in line
            line = "" if in_comment else line.rsplit("-->", 1)[1].strip()
            if not line:
                continue
        opening = _FENCE.match(line)
        if opening and not (opening.group(1)[0] == "`" and "`" in opening.group(2)):
            fence = opening.group(1)
            body.append(line)
            continue
        m = _ATX.match(line)
        heading = _CLOSING_HASHES.sub("", m.group(2) or "").strip() if m else ""
        if m and heading:
            outline.block("\n".join(body))
            body = []
            level = len(m.group(1))
            if level == 1 and first_h1 is None:
                first_h1 = heading
            outline.heading(level, heading, line.strip())
        else:
            body.append(line)
    outline.block("\n".join(body))
    return Parsed("markdown", title or first_h1 or stem, outline.finish())


# --- HTML ------------------------------------------------------------------------------

_DROP = ("script", "style", "noscript", "template", "svg", "nav", "footer", "iframe", "head")
_PERMALINKS = frozenset({"#", "¶", "§", "🔗", "\uf0c1"})  # a heading's link to itself
_HEADINGS = {"h1": 1, "h2": 2, "h3": 3, "h4": 4, "h5": 5, "h6": 6}
_BLOCK_TAGS = """
p div section article main aside blockquote ul ol li dl dt dd table thead tbody tfoot tr
caption figure figcaption address form fieldset details summary hr body html center dialog
legend menu
"""
_BLOCKS = frozenset(_BLOCK_TAGS.split())
_SPACES = re.compile(r"\s+")


def _collapse(text: str) -> str:
    return " ".join(text.split())


def _inside(node: Any, tags: frozenset[str]) -> bool:
    parent = node.parent
    while parent is not None:
        if parent.tag in tags:
            return True
        parent = parent.parent
    return False


def parse_html(text: str, stem: str) -> Parsed:
    """Sections at ``h1``..``h6``; title: ``<title>``, first ``h1``, stem."""
    # The lexbor backend: selectolax 1.0 removed the older Modest one (selectolax.parser).
    from selectolax.lexbor import LexborHTMLParser

    tree = LexborHTMLParser(text)
    title_node = tree.css_first("title")
    title = _collapse(title_node.text()) if title_node is not None else ""
    for node in tree.css("header"):
        if not _inside(node, frozenset({"article", "main"})):
            node.decompose()
    tree.strip_tags(list(_DROP))
    for anchor in tree.css("h1 a, h2 a, h3 a, h4 a, h5 a, h6 a"):
        if anchor.text().strip() in _PERMALINKS:
            anchor.decompose()
    if not title:
        h1 = tree.css_first("h1")
        title = _collapse(h1.text()) if h1 is not None else ""
    root = tree.body if tree.body is not None else tree.root
    outline = _Outline()
    lines: list[str] = []  # lines of the current block
    buf: list[str] = []  # inline text of the current line

    def flush() -> None:
        lines.append(_collapse("".join(buf)))
        buf.clear()
        outline.block("\n".join(x for x in lines if x))
        lines.clear()

    # Depth-first walk with an explicit stack: deep documents cannot overflow recursion.
    stack: list[tuple[Any, bool]] = [(root, True)] if root is not None else []
    while stack:
        node, entering = stack.pop()
        tag = node.tag
        if not entering:
            flush()
            continue
        if tag == "-text":
            buf.append(_SPACES.sub(" ", node.text_content or ""))
        elif tag in _HEADINGS:
            flush()
            heading = _collapse(node.text())
            if heading:
                outline.heading(_HEADINGS[tag], heading)
        elif tag == "pre":
            flush()
            outline.block("\n".join(x.rstrip() for x in clean_text(node.text()).split("\n")))
        elif tag == "br":
            lines.append(_collapse("".join(buf)))
            buf.clear()
        elif tag in ("td", "th"):
            if "".join(buf).strip():
                buf.append(" | ")
            stack.extend((child, True) for child in reversed(list(node.iter(include_text=True))))
        elif tag.startswith("-"):  # comments, doctype
            continue
        else:
            if tag in _BLOCKS:
                flush()
                stack.append((node, False))
            stack.extend((child, True) for child in reversed(list(node.iter(include_text=True))))
    flush()
    return Parsed("html", title or stem, outline.finish())


# --- PDF -------------------------------------------------------------------------------


@contextlib.contextmanager
def _quiet_pypdf() -> Iterator[None]:
    """Silence pypdf's warnings and its log records about malformed files.

    The ``pypdf`` logger is set to ERROR for good (a save-and-restore would race
    between threads); Bastion reports unreadable files itself.
    """
    logger = logging.getLogger("pypdf")
    if logger.level < logging.ERROR:
        logger.setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def _reason(exc: BaseException) -> str:
    detail = " ".join(str(exc).split())[:160]
    return f"{type(exc).__name__}: {detail}" if detail else type(exc).__name__


def parse_pdf(data: bytes, name: str, stem: str) -> Parsed:
    """One part per page with text (``page`` 1-based); title from the metadata, else stem."""
    try:
        from pypdf import PdfReader
    except ImportError as exc:  # pragma: no cover - the rag extra is missing
        raise UnparseableDocument(f"{name}: PDF support needs Bastion's `rag` extra") from exc
    with _quiet_pypdf():
        try:
            reader = PdfReader(io.BytesIO(data))
            if reader.is_encrypted:
                try:
                    opened = bool(reader.decrypt(""))
                except Exception:
                    opened = False
                if not opened:
                    raise UnparseableDocument(f"{name}: the PDF is encrypted")
            parts: list[Part] = []
            for number, page in enumerate(reader.pages, start=1):
                text = clean_text(page.extract_text() or "")
                text = "\n".join(line.rstrip() for line in text.split("\n")).strip()
                if text:
                    parts.append(Part(text, (), number))
            meta = reader.metadata
            title = meta.title if meta is not None else None
            pages = len(reader.pages)
        except UnparseableDocument:
            raise
        except Exception as exc:
            raise UnparseableDocument(f"{name}: not a readable PDF ({_reason(exc)})") from exc
    title = _collapse(title) if isinstance(title, str) else ""
    return Parsed("pdf", title or stem, parts, {"pages": pages})


# --- docx ------------------------------------------------------------------------------


def _heading_level(style_name: str) -> int | None:
    if style_name == "Title":
        return 0
    if style_name.startswith("Heading "):
        rest = style_name[len("Heading ") :]
        if rest.isdigit():
            return int(rest)
    return None


def _table_rows(table: Any) -> Iterator[str]:
    """Each row's distinct cells' texts joined by `` | ``; nested tables follow their row."""
    for row in table.rows:
        seen: set[int] = set()
        cells: list[str] = []
        nested: list[Any] = []
        for cell in row.cells:
            if id(cell._tc) in seen:  # a merged cell repeats across the grid
                continue
            seen.add(id(cell._tc))
            text = " ".join(_collapse(p.text) for p in cell.paragraphs if p.text.strip())
            if text:
                cells.append(text)
            nested.extend(cell.tables)
        if cells:
            yield " | ".join(cells)
        for inner in nested:
            yield from _table_rows(inner)


def parse_docx(data: bytes, name: str, stem: str) -> Parsed:
    """Sections at Title / Heading N paragraphs; title: core properties, first Title/H1, stem."""
    try:
        import docx
        from docx.text.paragraph import Paragraph
    except ImportError as exc:  # pragma: no cover - the rag extra is missing
        raise UnparseableDocument(f"{name}: docx support needs Bastion's `rag` extra") from exc
    outline = _Outline()
    first_heading: str | None = None
    try:
        document = docx.Document(io.BytesIO(data))
        core_title = document.core_properties.title or ""
        for item in document.iter_inner_content():
            if not isinstance(item, Paragraph):
                for row in _table_rows(item):
                    outline.block(row)
                continue
            text = clean_text(item.text).strip()
            style = item.style.name if item.style is not None else None
            level = _heading_level(style or "")
            heading = _collapse(text)
            if level is not None and heading:
                if level <= 1 and first_heading is None:
                    first_heading = heading
                outline.heading(level, heading)
            else:
                outline.block(text)
    except Exception as exc:
        raise UnparseableDocument(f"{name}: not a readable docx file ({_reason(exc)})") from exc
    title = _collapse(core_title) or first_heading or stem
    return Parsed("docx", title, outline.finish())


# --- dispatch --------------------------------------------------------------------------


def parse(data: bytes, name: str, suffix: str, stem: str) -> Parsed:
    """Parse a text, Markdown, HTML, PDF or docx file by its (lower-case) ``suffix``."""
    if suffix == ".pdf":
        return parse_pdf(data, name, stem)
    if suffix == ".docx":
        return parse_docx(data, name, stem)
    text = decode(data, name)
    if suffix in (".md", ".markdown"):
        return parse_markdown(text, stem)
    if suffix in (".html", ".htm"):
        return parse_html(text, stem)
    body = "\n".join(line.rstrip() for line in text.split("\n")).strip()
    return Parsed("text", stem, [Part(body)] if body else [])
