"""Load and validate a policy file, reporting every problem as ``file:line: reason``.

Validation runs in three passes: YAML syntax, the pydantic schema
(:mod:`bastion.config.schema`), then cross references (routes name known
providers, fallbacks name known models or providers and form no cycle, keys
name known models). All problems of a pass are reported together.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from bastion.config.schema import Policy, RouteConfig
from bastion.core.errors import PolicyError

Loc = tuple[str | int, ...]
M = TypeVar("M", bound=BaseModel)


Where = tuple[str, int]
SECTIONS = ("providers", "models", "keys")


def _walk(node: yaml.Node, path: Loc, out: dict[Loc, Where], filename: str) -> None:
    out[path] = (filename, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            k = key.value if isinstance(key, yaml.ScalarNode) else str(key)
            out[(*path, k)] = (filename, key.start_mark.line + 1)
            _walk(value, (*path, k), out, filename)
            # keep the key's own line for errors on the key (extra fields)
            out[(*path, k, "__key__")] = (filename, key.start_mark.line + 1)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _walk(item, (*path, i), out, filename)


def _where(lines: dict[Loc, Where], loc: Loc, default: str) -> Where:
    """File and line of the deepest prefix of ``loc`` present in the files."""
    for end in range(len(loc), -1, -1):
        if (key := (*loc[:end], "__key__")) in lines and end == len(loc):
            return lines[key]
        if loc[:end] in lines:
            return lines[loc[:end]]
    return default, 1


def _read_yaml(text: str, filename: str) -> tuple[dict[str, Any], dict[Loc, Where]]:
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else 1
        reason = getattr(exc, "problem", None) or str(exc)
        raise PolicyError([(filename, line, f"YAML syntax: {reason}")]) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise PolicyError([(filename, 1, "the policy must be a mapping at the top level")])
    lines: dict[Loc, Where] = {}
    if node is not None:
        _walk(node, (), lines, filename)
    return data, lines


def _merge_includes(
    data: dict[str, Any], lines: dict[Loc, Where], filename: str, base_dir: Path
) -> None:
    """Merge ``include:`` files (providers, models and keys only) into ``data``."""
    includes = data.pop("include", [])
    where = lines.get(("include",), (filename, 1))
    if isinstance(includes, str):
        includes = [includes]
    if not isinstance(includes, list) or not all(isinstance(i, str) for i in includes):
        raise PolicyError([(*where, "include: expected a file name or a list of them")])
    problems: list[tuple[str, int, str]] = []
    for i, name in enumerate(includes):
        path = base_dir / name
        try:
            text = path.read_text()
        except OSError as exc:
            line = lines.get(("include", i), where)[1]
            problems.append((filename, line, f"include.{i}: cannot read {path}: {exc.strerror}"))
            continue
        inc, inc_lines = _read_yaml(text, str(path))
        for key in inc:
            if key not in SECTIONS:
                line = inc_lines[(key, "__key__")][1]
                problems.append(
                    (
                        str(path),
                        line,
                        f"{key}: an included file may only hold providers, models and keys",
                    )
                )
        for section in SECTIONS:
            entries = inc.get(section) or {}
            if not isinstance(entries, dict):
                problems.append(
                    (str(path), inc_lines[(section,)][1], f"{section}: expected a mapping")
                )
                continue
            target = data.setdefault(section, {})
            if not isinstance(target, dict):
                continue  # the schema pass reports the main file's shape
            for entry, value in entries.items():
                if entry in target:
                    first = _where(lines, (section, entry), filename)
                    line = inc_lines[(section, entry, "__key__")][1]
                    problems.append(
                        (
                            str(path),
                            line,
                            f"{section}.{entry}: already defined at {first[0]}:{first[1]}",
                        )
                    )
                    continue
                target[entry] = value
                for loc, w in inc_lines.items():
                    if loc[:2] == (section, entry):
                        lines[loc] = w
    if problems:
        raise PolicyError(_ordered(problems, filename))


def _clean_loc(loc: tuple[Any, ...]) -> Loc:
    # pydantic adds union-member and validator tags such as "RouteConfig" or
    # "function-after[...]" to a location; drop them so paths match the YAML.
    return tuple(
        p
        for p in loc
        if isinstance(p, int)
        or ("[" not in p and p[:1].islower() and p not in {"constrained-str", "str"})
    )


def _loc_text(loc: Loc) -> str:
    return ".".join(str(p) for p in loc) or "(top level)"


def validate_yaml(model: type[M], text: str, filename: str) -> M:
    """Validate YAML text against any pydantic model, problems as ``file:line: reason``.

    The same reporting as policy files, for the other YAML documents Bastion
    reads (eval suites, red-team suites); raises :class:`PolicyError`.
    """
    data, lines = _read_yaml(text, filename)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise PolicyError(_ordered(set(_problems(exc, lines, filename)), filename)) from None


def load_yaml_model(model: type[M], path: str | Path) -> M:
    """Read a YAML file and validate it with :func:`validate_yaml`."""
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as exc:
        raise PolicyError([(str(p), 1, f"cannot read file: {exc.strerror}")]) from None
    return validate_yaml(model, text, str(p))


def _problems(
    exc: ValidationError, lines: dict[Loc, Where], filename: str
) -> Iterator[tuple[str, int, str]]:
    for err in exc.errors():
        loc = _clean_loc(err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = f"unknown field {loc[-1]!r}" if loc else msg
        yield (*_where(lines, loc, filename), f"{_loc_text(loc)}: {msg}")


def parse_policy(text: str, filename: str = "<policy>", base_dir: Path | None = None) -> Policy:
    """Validate policy text; raise :class:`PolicyError` listing every problem.

    ``include:`` (a file or a list, relative to ``base_dir``) merges the
    providers, models and keys of other files; a name defined twice is an error.
    """
    data, lines = _read_yaml(text, filename)
    if "include" in data:
        _merge_includes(data, lines, filename, base_dir or Path.cwd())
    try:
        policy = Policy.model_validate(data)
    except ValidationError as exc:
        raise PolicyError(_ordered(set(_problems(exc, lines, filename)), filename)) from None
    problems = [
        (*_where(lines, loc, filename), f"{_loc_text(loc)}: {reason}")
        for loc, reason in cross_check(policy)
    ]
    if problems:
        raise PolicyError(_ordered(problems, filename))
    return policy


def _ordered(problems: Iterable[tuple[str, int, str]], main: str) -> list[tuple[str, int, str]]:
    return sorted(problems, key=lambda p: (p[0] != main, p[0], p[1]))


def load_policy(path: str | Path) -> Policy:
    """Read and validate a policy file."""
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as exc:
        raise PolicyError([(str(p), 1, f"cannot read file: {exc.strerror}")]) from None
    return parse_policy(text, str(p), p.parent)


def cross_check(policy: Policy) -> Iterator[tuple[Loc, str]]:
    """References between sections: yields ``(location, reason)`` for each problem."""
    for name, model in policy.models.items():
        for i, route in enumerate(model.routes):
            if route.provider not in policy.providers:
                yield (
                    ("models", name, "routes", i, "provider"),
                    (f"unknown provider {route.provider!r}"),
                )
            elif route.model is None and not _has_default(policy, route.provider):
                yield (
                    ("models", name, "routes", i),
                    (f"give a model: provider {route.provider!r} has no default_model"),
                )
        for i, fb in enumerate(model.fallbacks):
            loc = ("models", name, "fallbacks", i)
            if isinstance(fb, RouteConfig):
                if fb.provider not in policy.providers:
                    yield loc, f"unknown provider {fb.provider!r}"
            elif fb in policy.models:
                kind = policy.models[fb].type
                if kind != model.type:
                    yield loc, f"fallback {fb!r} is a model of type {kind}, not {model.type}"
            elif fb not in policy.providers:
                yield loc, f"{fb!r} is neither a model nor a provider"
            elif not _has_default(policy, fb):
                yield loc, f"provider {fb!r} has no default_model to fall back to"
        cache = model.cache
        if cache is not None:
            if model.type != "chat":
                yield ("models", name, "cache"), "only chat models can be cached"
            sem = cache.semantic
            if sem is not None:
                target = policy.models.get(sem.embedding_model)
                if target is None or target.type != "embedding":
                    yield (
                        ("models", name, "cache", "semantic", "embedding_model"),
                        f"{sem.embedding_model!r} is not an embedding model of this policy",
                    )
        pipelines = policy.guardrails.pipelines
        if model.guard not in (None, "none") and model.guard not in pipelines:
            yield ("models", name, "guard"), f"unknown guardrails pipeline {model.guard!r}"
    default = policy.guardrails.default
    if default is not None and default not in policy.guardrails.pipelines:
        yield ("guardrails", "default"), f"unknown guardrails pipeline {default!r}"
    rag = policy.rag
    if "rag" in policy.model_fields_set:
        target = policy.models.get(rag.embedding_model)
        if target is None or target.type != "embedding":
            yield (
                ("rag", "embedding_model"),
                f"{rag.embedding_model!r} is not an embedding model of this policy",
            )
    rerank = rag.retrieval.rerank_model
    if rerank is not None:
        target = policy.models.get(rerank)
        if target is None or target.type != "rerank":
            yield (
                ("rag", "retrieval", "rerank_model"),
                f"{rerank!r} is not a rerank model of this policy",
            )
    for name in policy.models:
        if _has_cycle(policy, name):
            yield ("models", name, "fallbacks"), "fallback chain loops back to this model"
    for name, key in policy.keys.items():
        for i, m in enumerate(key.models):
            if not any(c in m for c in "*?[") and m not in policy.models:
                yield ("keys", name, "models", i), f"unknown model {m!r}"


def _has_default(policy: Policy, provider: str) -> bool:
    cfg = policy.providers[provider]
    return cfg.default_model is not None or cfg.type == "local"


def _has_cycle(policy: Policy, start: str) -> bool:
    stack = [fb for fb in policy.models[start].fallbacks if isinstance(fb, str)]
    seen: set[str] = set()
    while stack:
        cur = stack.pop()
        if cur == start:
            return True
        if cur in seen or cur not in policy.models:
            continue
        seen.add(cur)
        stack.extend(fb for fb in policy.models[cur].fallbacks if isinstance(fb, str))
    return False
