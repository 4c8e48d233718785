"""Safe template rendering: ``{{ name }}`` substitution and nothing else.

A template slot is ``{{ name }}`` (spaces optional, ``name`` an identifier).
There are no expressions, filters, attribute access, loops or includes: any
other ``{{ ... }}`` is rejected when a version is created, so a template
cannot run code. Rendering is one pass over the template text, so a variable
value is inserted as data: a value containing ``{{ x }}`` stays literally
``{{ x }}``.

Variables are checked against the version's JSON Schema (``jsonschema``):
unknown names and missing required ones are reported by name first (one
message listing them all), then the schema's own constraints.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

import orjson
from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError

from bastion.core.errors import InvalidRequest
from bastion.prompts.model import JSON

SLOT = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]{0,63})\s*\}\}")
_ANY_BRACES = re.compile(r"\{\{(.*?)\}\}", re.DOTALL)


def slots(text: str) -> list[str]:
    """The variable names in ``text``, in order of first appearance."""
    return list(dict.fromkeys(m.group(1) for m in SLOT.finditer(text)))


def template_variables(messages: Iterable[Mapping[str, Any]]) -> list[str]:
    """Every variable the messages use, in order of first appearance."""
    names: dict[str, None] = {}
    for m in messages:
        for n in slots(str(m.get("content") or "")):
            names[n] = None
    return list(names)


def check_template(messages: Iterable[Mapping[str, Any]]) -> None:
    """Reject any ``{{ ... }}`` that is not a plain ``{{ name }}`` slot."""
    for i, m in enumerate(messages):
        text = str(m.get("content") or "")
        for match in _ANY_BRACES.finditer(text):
            if not SLOT.fullmatch(match.group(0)):
                expr = match.group(0)
                shown = expr if len(expr) <= 40 else expr[:37] + "...}}"
                raise InvalidRequest(
                    f"messages[{i}]: unsupported template expression {shown!r}: "
                    "only {{ name }} substitution is allowed",
                    param=f"messages.{i}.content",
                )


def default_schema(names: Iterable[str]) -> JSON:
    """Every name a required string, and nothing else allowed."""
    names = list(names)
    return {
        "type": "object",
        "properties": {n: {"type": "string"} for n in names},
        "required": names,
        "additionalProperties": False,
    }


def check_schema(schema: JSON, used: list[str]) -> None:
    """``schema`` must be a valid JSON Schema for an object declaring every slot used."""
    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as exc:
        raise InvalidRequest(f"variables: not a valid JSON Schema: {exc.message}") from None
    if schema.get("type") != "object":
        raise InvalidRequest('variables: the schema must have "type": "object"')
    props = schema.get("properties") or {}
    missing = [n for n in used if n not in props]
    if missing:
        raise InvalidRequest(
            "variables: the template uses " + ", ".join(missing) + ", which the schema "
            "does not declare under properties",
            param="variables",
        )


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if value is None:
        return ""
    if isinstance(value, bool | int | float):
        return orjson.dumps(value).decode()
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()


def check_variables(schema: JSON, variables: Mapping[str, Any]) -> dict[str, Any]:
    """The variables with defaults filled in, or :class:`InvalidRequest` naming the problem."""
    props: Mapping[str, Any] = schema.get("properties") or {}
    # unknown names are refused unless the schema opts in with additionalProperties
    extra_ok = schema.get("additionalProperties", False) is not False
    unknown = sorted(n for n in variables if n not in props and not extra_ok)
    if unknown:
        known = f"known: {', '.join(props)}" if props else "this prompt takes no variables"
        raise InvalidRequest(
            "unknown variables: " + ", ".join(unknown) + f" ({known})", param="variables"
        )
    required = list(schema.get("required") or [])
    missing = [n for n in required if n not in variables]
    if missing:
        raise InvalidRequest("missing variables: " + ", ".join(missing), param="variables")
    values = dict(variables)
    for n, spec in props.items():
        if n not in values and isinstance(spec, Mapping) and "default" in spec:
            values[n] = spec["default"]
    errors = sorted(Draft202012Validator(schema).iter_errors(values), key=lambda e: list(e.path))
    if errors:
        first = errors[0]
        where = ".".join(str(p) for p in first.absolute_path) or "variables"
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise InvalidRequest(f"{where}: {first.message}{more}", param="variables")
    return values


def substitute(text: str, values: Mapping[str, Any]) -> str:
    """One pass: each slot replaced by its value's text (absent optional ones: empty)."""
    return SLOT.sub(lambda m: _text(values.get(m.group(1))), text)


def render_messages(
    messages: Iterable[Mapping[str, Any]], schema: JSON, variables: Mapping[str, Any]
) -> list[JSON]:
    """The messages with their slots filled, after the variables pass ``schema``."""
    msgs = list(messages)
    values = check_variables(schema, variables)
    return [{**m, "content": substitute(str(m.get("content") or ""), values)} for m in msgs]
