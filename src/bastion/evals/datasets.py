"""Eval datasets: stream :class:`~bastion.evals.types.Case` rows from a file or the suite.

A suite's ``dataset`` is either a file (``path``, relative to the suite file)
or inline ``cases``. Files are read by extension:

* ``.jsonl``: one JSON object per line (blank lines skipped);
* ``.csv``: a header row, then one case per record (stdlib :mod:`csv`). An
  ``expected`` cell that looks like a JSON object or array (``{...}`` /
  ``[...]``) is parsed as JSON; the ``variables`` cell must be a JSON object;
  the ``relevant`` cell is a JSON object (``{"doc": grade}``), a JSON array of
  doc ids, or doc ids separated by commas, semicolons or spaces; an ``input``
  cell holding a JSON array of chat messages is parsed. Empty cells read as
  absent;
* ``.yaml`` / ``.yml``: a list of rows, or a mapping with a ``cases:`` list
  (loaded whole: YAML datasets are meant to be small and hand-written).

JSONL and CSV are streamed: memory stays flat however long the file. Ids
are checked for duplicates through an 8-byte hash per row, when the stream
ends (the runner validates every row before its first call); a duplicate is
then reported with both lines, found by a second read. Close the iterator
(``contextlib.closing``) when you stop early, so the file is closed at once.

Field names come from the :class:`~bastion.evals.suite.DatasetSpec`
(``id_field``, ``input_field``, ``expected_field``, ``variables_field``,
``relevant_field``); every other column goes into ``metadata`` (a
``metadata`` column holding an object is merged into it). A row without an
id gets ``"{n}"``, its 1-based position in the dataset, so ids are stable
across runs. ``relevant`` may be ``{"doc": grade}`` or a list of doc ids
(grade 1 each).

A malformed row raises :class:`~bastion.core.errors.InvalidRequest` naming
the file, the line and the reason: ``cases.jsonl:17: invalid JSON: ...``,
``cases.csv:4: missing column 'input'``.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import re
from array import array
from collections.abc import Generator, Iterator, Mapping
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import yaml

from bastion.core.errors import InvalidRequest
from bastion.evals.suite import DatasetSpec, Suite
from bastion.evals.types import JSON, Case

__all__ = ["FORMATS", "count_cases", "iter_cases"]

FORMATS = (".jsonl", ".csv", ".yaml", ".yml")
"""The dataset file extensions :func:`iter_cases` reads."""

_ID_SPLIT = re.compile(r"[,;\s]+")

Row = tuple[str, int, dict[str, Any]]
"""``(where, line, row)``: ``where`` prefixes error messages (``file:line``)."""


class _RowError(ValueError):
    """A row is malformed; the caller adds the file and line."""


def iter_cases(suite: Suite) -> Generator[Case, None, None]:
    """The suite's cases in dataset order, streamed, at most ``dataset.limit`` of them.

    Raises :class:`InvalidRequest` (``file:line: reason``) on the first
    malformed row, a duplicate id, a missing file or an unknown format.
    """
    spec = suite.dataset
    hashes = array("q")
    input_optional = suite.target.kind == "prompt"
    csv_mode = False
    rows: Iterator[Row]
    path = suite.dataset_path()
    if path is not None:
        csv_mode = _format(path) == ".csv"
    rows = _rows(suite)
    if spec.limit is not None and spec.limit < 1:  # pragma: no cover - the schema forbids it
        return
    produced = 0
    try:
        for index, (where, _line, row) in enumerate(rows, start=1):
            try:
                case = _to_case(row, index, spec, csv_mode=csv_mode, input_optional=input_optional)
            except _RowError as exc:
                raise InvalidRequest(f"{where}: {exc}") from None
            hashes.append(_id_hash(case.id))
            produced += 1
            yield case
            if spec.limit is not None and produced >= spec.limit:
                break
    finally:
        close = getattr(rows, "close", None)
        if close is not None:
            close()
    _check_unique(suite, hashes)


def _id_hash(case_id: str) -> int:
    return int.from_bytes(
        hashlib.blake2b(case_id.encode(), digest_size=8).digest(), "big", signed=True
    )


def _check_unique(suite: Suite, hashes: array[int]) -> None:
    """Raise for the first repeated id (8 bytes a row; a second read names the lines)."""
    if len(hashes) < 2:
        return
    ordered = np.sort(np.frombuffer(hashes, dtype=np.int64))
    repeated = ordered[1:][ordered[1:] == ordered[:-1]]
    if not len(repeated):
        return
    suspects = {int(h) for h in repeated}
    spec = suite.dataset
    path = suite.dataset_path()
    rows = _rows(suite)
    first: dict[str, int] = {}
    try:
        for index, (where, line, row) in enumerate(rows, start=1):
            if spec.limit is not None and index > spec.limit:
                break
            case = _to_case(
                row,
                index,
                spec,
                csv_mode=path is not None and _format(path) == ".csv",
                input_optional=suite.target.kind == "prompt",
            )
            if _id_hash(case.id) not in suspects:
                continue
            if case.id in first:
                raise InvalidRequest(
                    f"{where}: duplicate id {case.id!r} (first at {_at(path, first[case.id])})"
                )
            first[case.id] = line
    finally:
        close = getattr(rows, "close", None)
        if close is not None:
            close()


def _rows(suite: Suite) -> Iterator[Row]:
    path = suite.dataset_path()
    if path is None:
        return _inline_rows(suite.dataset.cases or [])
    kind = _format(path)
    return {".jsonl": _jsonl_rows, ".csv": _csv_rows}.get(kind, _yaml_rows)(path)


def count_cases(suite: Suite) -> int:
    """How many cases :func:`iter_cases` would yield (``limit`` applied), streamed.

    Rows are counted, not validated (JSONL: non-blank lines; CSV: non-empty
    records after the header): a cheap figure for progress bars and dry runs.
    """
    spec = suite.dataset
    path = suite.dataset_path()
    if path is None:
        total = len(spec.cases or [])
    else:
        kind = _format(path)
        if kind == ".jsonl":
            with _open(path) as handle:
                total = sum(1 for line in handle if line.strip())
        elif kind == ".csv":
            with _open(path, newline="") as handle:
                reader = csv.reader(handle)
                try:
                    next(reader, None)
                    total = sum(1 for record in reader if any(cell.strip() for cell in record))
                except csv.Error as exc:
                    raise InvalidRequest(f"{path}:{reader.line_num}: invalid CSV: {exc}") from None
        else:
            total = sum(1 for _ in _yaml_rows(path))
    return total if spec.limit is None else min(total, spec.limit)


# --- sources -------------------------------------------------------------------------------


def _format(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix not in FORMATS:
        raise InvalidRequest(
            f"{path}: unsupported dataset format {suffix or '(none)'!r}; "
            f"use one of {', '.join(FORMATS)}"
        )
    return suffix


def _open(path: Path, newline: str | None = None) -> TextIO:
    try:
        return path.open(encoding="utf-8-sig", newline=newline)
    except FileNotFoundError:
        raise InvalidRequest(f"dataset file not found: {path}") from None
    except OSError as exc:
        raise InvalidRequest(f"{path}: cannot read dataset: {exc.strerror or exc}") from None


def _at(path: Path | None, line: int) -> str:
    return f"case {line}" if path is None else f"line {line}"


def _inline_rows(cases: list[dict[str, Any]]) -> Iterator[Row]:
    for number, row in enumerate(cases, start=1):
        yield f"dataset case {number}", number, row


def _jsonl_rows(path: Path) -> Iterator[Row]:
    number = 0
    with _open(path) as handle:
        lines = iter(handle)
        while True:
            try:
                line = next(lines)
            except StopIteration:
                return
            except UnicodeDecodeError as exc:
                raise InvalidRequest(f"{path}:{number + 1}: not UTF-8 text: {exc.reason}") from None
            number += 1
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise InvalidRequest(
                    f"{path}:{number}: invalid JSON: {exc.msg} (column {exc.colno})"
                ) from None
            if not isinstance(row, dict):
                raise InvalidRequest(
                    f"{path}:{number}: expected a JSON object, got {type(row).__name__}"
                )
            yield f"{path}:{number}", number, row


def _csv_rows(path: Path) -> Iterator[Row]:
    with _open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        try:
            if not reader.fieldnames:
                raise InvalidRequest(f"{path}:1: empty CSV file (no header row)")
            for record in reader:
                line = reader.line_num
                if None in record:
                    raise InvalidRequest(
                        f"{path}:{line}: {len(record[None])} more cells than the header has columns"
                    )
                row = {k: v for k, v in record.items() if v is not None and v != ""}
                yield f"{path}:{line}", line, row
        except csv.Error as exc:
            raise InvalidRequest(f"{path}:{reader.line_num}: invalid CSV: {exc}") from None
        except UnicodeDecodeError as exc:
            raise InvalidRequest(f"{path}: not UTF-8 text: {exc.reason}") from None


def _yaml_rows(path: Path) -> Iterator[Row]:
    with _open(path) as handle:
        text = handle.read()
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else 1
        reason = getattr(exc, "problem", None) or str(exc)
        raise InvalidRequest(f"{path}:{line}: invalid YAML: {reason}") from None
    finally:
        loader.dispose()
    items: list[Any] | None = None
    item_nodes: list[yaml.Node] = []
    if isinstance(data, list) and isinstance(node, yaml.SequenceNode):
        items, item_nodes = data, list(node.value)
    elif isinstance(data, dict) and isinstance(node, yaml.MappingNode):
        cases = data.get("cases")
        for key, value in node.value:
            if (
                isinstance(key, yaml.ScalarNode)
                and key.value == "cases"
                and isinstance(cases, list)
                and isinstance(value, yaml.SequenceNode)
            ):
                items, item_nodes = cases, list(value.value)
    if items is None:
        raise InvalidRequest(f"{path}:1: expected a list of cases or a mapping with a 'cases' list")
    for item, item_node in zip(items, item_nodes, strict=True):
        line = item_node.start_mark.line + 1
        if not isinstance(item, dict):
            raise InvalidRequest(f"{path}:{line}: a case must be a mapping, got {_kind(item)}")
        yield f"{path}:{line}", line, item


# --- rows to cases ---------------------------------------------------------------------------


def _kind(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _looks_json(text: str) -> bool:
    t = text.strip()
    return (t.startswith("{") and t.endswith("}")) or (t.startswith("[") and t.endswith("]"))


def _json_cell(name: str, text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise _RowError(f"column {name!r}: invalid JSON: {exc.msg}") from None


def _to_case(
    row: Mapping[str, Any],
    index: int,
    spec: DatasetSpec,
    *,
    csv_mode: bool,
    input_optional: bool = False,
) -> Case:
    """One row as a case; ``input_optional`` (prompt targets, whose template holds the
    messages): a row without an input sends no messages of its own."""
    word = "column" if csv_mode else "field"
    fields = {
        spec.id_field,
        spec.input_field,
        spec.expected_field,
        spec.variables_field,
        spec.relevant_field,
    }
    raw_id = row.get(spec.id_field)
    if raw_id is None or raw_id == "":
        case_id = str(index)
    elif isinstance(raw_id, bool) or not isinstance(raw_id, str | int):
        raise _RowError(f"{word} {spec.id_field!r} must be a string or an integer")
    else:
        case_id = str(raw_id).strip()
        if not case_id:
            case_id = str(index)

    raw_input = row.get(spec.input_field)
    text_or_messages: str | list[JSON]
    if input_optional and raw_input in (None, ""):
        text_or_messages = []
    elif spec.input_field not in row:
        raise _RowError(f"missing {word} {spec.input_field!r}")
    else:
        text_or_messages = _input(raw_input, csv_mode=csv_mode)

    expected = row.get(spec.expected_field)
    if csv_mode and isinstance(expected, str) and _looks_json(expected):
        # a string that merely looks like JSON ("[draft]") stays a string
        with contextlib.suppress(json.JSONDecodeError):
            expected = json.loads(expected)

    variables = row.get(spec.variables_field)
    if csv_mode and isinstance(variables, str):
        variables = _json_cell(spec.variables_field, variables)
    if variables is None:
        variables = {}
    if not isinstance(variables, dict):
        raise _RowError(f"{word} {spec.variables_field!r} must be an object")

    relevant = _relevant(row.get(spec.relevant_field), spec.relevant_field, csv_mode=csv_mode)

    metadata: dict[str, Any] = {}
    for key, value in row.items():
        if key in fields:
            continue
        if key == "metadata" and isinstance(value, dict):
            metadata.update(value)
        else:
            metadata[key] = value
    return Case(
        id=case_id,
        input=text_or_messages,
        expected=expected,
        variables=variables,
        relevant=relevant,
        metadata=metadata,
    )


def _input(value: Any, *, csv_mode: bool) -> str | list[JSON]:
    if csv_mode and isinstance(value, str) and value.lstrip().startswith("["):
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError:
            parsed = None
        if isinstance(parsed, list) and parsed and all(isinstance(m, dict) for m in parsed):
            value = parsed
    if isinstance(value, str):
        if not value.strip():
            raise _RowError("empty input")
        return value
    if isinstance(value, list) and value:
        for number, message in enumerate(value, start=1):
            if not isinstance(message, dict) or not isinstance(message.get("role"), str):
                raise _RowError(f"input message {number} must be an object with a 'role'")
            if "content" not in message and "tool_calls" not in message:
                raise _RowError(f"input message {number} has no 'content'")
        return [dict(m) for m in value]
    raise _RowError(
        f"input must be a string or a non-empty list of chat messages, got {_kind(value)}"
    )


def _relevant(value: Any, name: str, *, csv_mode: bool) -> dict[str, int]:
    if value is None:
        return {}
    if csv_mode and isinstance(value, str):
        value = (
            _json_cell(name, value)
            if _looks_json(value)
            else [v for v in _ID_SPLIT.split(value) if v]
        )
    if isinstance(value, list):
        out: dict[str, int] = {}
        for doc in value:
            if isinstance(doc, bool) or not isinstance(doc, str | int) or str(doc) == "":
                raise _RowError(f"{name!r}: a doc id must be a non-empty string")
            out[str(doc)] = 1
        return out
    if isinstance(value, dict):
        graded: dict[str, int] = {}
        for doc, grade in value.items():
            if isinstance(grade, bool) or not isinstance(grade, int | float):
                raise _RowError(f"{name!r}: the grade of {doc!r} must be an integer")
            if isinstance(grade, float) and not grade.is_integer():
                raise _RowError(f"{name!r}: the grade of {doc!r} must be an integer")
            graded[str(doc)] = int(grade)
        return graded
    raise _RowError(f"{name!r} must be an object of doc id to grade or a list of doc ids")
