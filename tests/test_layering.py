"""The package's module-level imports run one way (text → specs → methods → hf → ops): no module
imports, at import time, a module that imports it back. Imports inside functions (deliberate,
lazy) are not counted."""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "python" / "attnsteer"


def _module(path: Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _resolve(mod: str, is_pkg: bool, node: ast.ImportFrom) -> list:
    if node.level == 0:
        base = node.module or ""
    else:
        parts = mod.split(".")
        parts = parts if is_pkg else parts[:-1]
        parts = parts[: len(parts) - (node.level - 1)]
        base = ".".join(parts + ([node.module] if node.module else []))
    out = [base]
    if node.module is None or node.level > 0:
        out += [f"{base}.{a.name}" for a in node.names]
    return out


def _graph() -> dict:
    mods = {_module(p): p for p in PKG.rglob("*.py")}
    graph = {}
    for mod, path in mods.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        deps = set()
        for node in tree.body:  # module level only
            names = []
            if isinstance(node, ast.ImportFrom):
                names = _resolve(mod, path.name == "__init__.py", node)
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            deps |= {n for n in names if n in mods and n != mod and not mod.startswith(n + ".")}
        graph[mod] = deps
    return graph


def test_module_level_imports_have_no_cycle():
    graph = _graph()
    state: dict = {}

    def visit(m, stack):
        state[m] = 1
        for d in graph[m]:
            if state.get(d) == 1:
                raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(d) :] + [d]))
            if d not in state:
                visit(d, stack + [d])
        state[m] = 2

    for m in graph:
        if m not in state:
            visit(m, [m])


def test_the_spec_grammar_sits_below_config_hf_and_eval():
    graph = _graph()
    assert "attnsteer.specs" in graph
    for low in ("attnsteer.specs", "attnsteer.methods"):
        assert not {d for d in graph[low] if d.startswith(("attnsteer.config", "attnsteer.hf", "attnsteer.eval"))}
