"""The dependency contract of the design brief, enforced on every import.

core <- config <- telemetry <- providers <- guard <- gateway <- {rag, agents, prompts} <- evals.
store implements ports and imports core and the port modules only. Only the
composition roots (api, cli, testing) wire things together, and nothing imports
api, cli or web.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src" / "bastion"
RANK = {
    "core": 0,
    "config": 1,
    "telemetry": 2,
    "providers": 3,
    "guard": 4,
    "gateway": 5,
    "rag": 6,
    "agents": 6,
    "prompts": 6,
    "evals": 7,
}
ROOTS = {"api", "cli", "testing"}
PORTS = {  # port modules the store may implement
    "bastion.gateway.auth",
    "bastion.gateway.tenancy",
    "bastion.gateway.quota",
    "bastion.gateway.cache_store",
    "bastion.telemetry.audit",
    "bastion.telemetry.usage",
    "bastion.telemetry.payloads",
    "bastion.rag.ports",
    "bastion.evals.ports",
    "bastion.evals.types",
    "bastion.prompts.ports",
}


def imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
    return {m for m in out if m.startswith("bastion.")}


def layer(module: str) -> str:
    return module.split(".")[1]


def violations() -> list[str]:
    bad = []
    for path in SRC.rglob("*.py"):
        rel = path.relative_to(SRC)
        if len(rel.parts) < 2:
            continue
        mine = rel.parts[0]
        for mod in imports(path):
            other = layer(mod)
            if other == mine or (mine in ROOTS and other not in {"cli"}):
                continue
            if other in {"api", "cli", "web"}:
                bad.append(f"{rel}: imports {mod} (nothing imports api/cli/web)")
            elif mine == "store":
                if other != "core" and mod not in PORTS:
                    bad.append(f"{rel}: store may import core and port modules, not {mod}")
            elif other == "store" or other in ROOTS:
                bad.append(f"{rel}: imports {mod} (only composition roots may)")
            elif mine in RANK and RANK.get(other, 99) >= RANK[mine]:
                bad.append(f"{rel}: {mine} may not import {other} ({mod})")
    return bad


def test_layers_import_one_way_only() -> None:
    assert violations() == []


def test_the_checker_sees_imports() -> None:
    # guard against a checker that silently finds nothing
    assert "bastion.core.errors" in imports(SRC / "gateway" / "router.py")
    assert any(m.startswith("bastion.gateway") for m in imports(SRC / "api" / "app.py"))
