"""Load and validate a policy file, reporting every problem as ``file:line: reason``.

Validation runs in three passes: YAML syntax, the pydantic schema
(:mod:`bastion.config.schema`), then cross references (routes name known
providers, fallbacks name known models or providers and form no cycle, keys
name known models). All problems of a pass are reported together.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from bastion.config.schema import Policy, RouteConfig
from bastion.core.errors import PolicyError

Loc = tuple[str | int, ...]


def _walk(node: yaml.Node, path: Loc, out: dict[Loc, int]) -> None:
    out[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            k = key.value if isinstance(key, yaml.ScalarNode) else str(key)
            out[(*path, k)] = key.start_mark.line + 1
            _walk(value, (*path, k), out)
            # keep the key's own line for errors on the key (extra fields)
            out[(*path, k, "__key__")] = key.start_mark.line + 1
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _walk(item, (*path, i), out)


def _line(lines: dict[Loc, int], loc: Loc) -> int:
    """The line of the deepest prefix of ``loc`` present in the file."""
    for end in range(len(loc), -1, -1):
        if (key := (*loc[:end], "__key__")) in lines and end == len(loc):
            return lines[key]
        if loc[:end] in lines:
            return lines[loc[:end]]
    return 1


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


def parse_policy(text: str, filename: str = "<policy>") -> Policy:
    """Validate policy text; raise :class:`PolicyError` listing every problem."""
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
    lines: dict[Loc, int] = {}
    if node is not None:
        _walk(node, (), lines)
    try:
        policy = Policy.model_validate(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            loc = _clean_loc(err["loc"])
            msg = err["msg"].removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                msg = f"unknown field {loc[-1]!r}" if loc else msg
            problems.append((filename, _line(lines, loc), f"{_loc_text(loc)}: {msg}"))
        raise PolicyError(sorted(set(problems), key=lambda p: p[1])) from None
    problems = [
        (filename, _line(lines, loc), f"{_loc_text(loc)}: {reason}")
        for loc, reason in cross_check(policy)
    ]
    if problems:
        raise PolicyError(sorted(problems, key=lambda p: p[1]))
    return policy


def load_policy(path: str | Path) -> Policy:
    """Read and validate a policy file."""
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as exc:
        raise PolicyError([(str(p), 1, f"cannot read file: {exc.strerror}")]) from None
    return parse_policy(text, str(p))


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
