"""No import cycle between detgn's modules, so that none can come back unnoticed.

The graph has an edge ``a -> b`` for every ``import``/``from ... import`` in module
``a`` that names module ``b`` of detgn, wherever the statement stands (a function-level
import that works around a cycle is still a cycle of the design). Importing
``detgn.x.y`` also runs ``detgn/x/__init__.py``; those implicit parent edges are left
out, since a package re-exporting its own submodules would otherwise always count.
"""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Optional, Set

ROOT = Path(__file__).resolve().parents[1] / "detgn"


def _module_name(path: Path, root: Path) -> str:
    rel = path.relative_to(root.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _resolve(current: str, is_package: bool, level: int, module: Optional[str]) -> str:
    """The absolute name of ``from <level dots><module> import ...`` in ``current``."""
    if level == 0:
        return module or ""
    base = current.split(".") if is_package else current.split(".")[:-1]
    base = base[: len(base) - (level - 1)]
    return ".".join(base + ([module] if module else []))


def import_graph(root: Path = ROOT) -> Dict[str, Set[str]]:
    """``{module: {detgn modules it imports}}`` for every ``.py`` file under ``root``."""
    files = {_module_name(p, root): p for p in root.rglob("*.py")}
    modules = set(files)
    graph: Dict[str, Set[str]] = {}
    for name, path in files.items():
        is_package = path.name == "__init__.py"
        edges: Set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = _resolve(name, is_package, node.level, node.module)
                # `from pkg import sub` names the submodule when there is one.
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            else:
                continue
            for t in targets:
                while t and t not in modules:  # `import detgn.x.y` of a name inside a module
                    t = t.rpartition(".")[0]
                if t and t != name:
                    edges.add(t)
        graph[name] = edges
    return graph


def find_cycle(graph: Dict[str, Set[str]]) -> Optional[List[str]]:
    """One cycle as ``[a, b, ..., a]``, or None."""
    state: Dict[str, int] = {}  # 1: on the current path, 2: done
    path: List[str] = []

    def visit(node: str) -> Optional[List[str]]:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_no_import_cycle():
    graph = import_graph()
    assert len(graph) > 50  # the walk found the package
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_model_zoo_is_a_leaf():
    """The zoo's catalog, downloads and trust check depend on nothing above detgn.utils, and
    importing the zoo imports no model code (``get``/``get_config`` are aliases of detgn.zoo
    resolved on first use)."""
    graph = import_graph()
    for name, edges in graph.items():
        if name.startswith("detgn.model_zoo."):
            above = {e for e in edges if not e.startswith(("detgn.model_zoo", "detgn.utils"))}
            assert not above, f"{name} imports {sorted(above)}"
    code = "import sys, detgn.model_zoo; print(sorted(m for m in sys.modules if m.startswith(('torch', 'detgn.'))))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=str(ROOT.parent)).stdout
    assert "torch" not in out and "detgn.checkpoint" not in out, out


def test_finds_a_planted_cycle(tmp_path):
    pkg = tmp_path / "detgn"
    (pkg / "a").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "a" / "__init__.py").write_text("from .x import f\n")
    (pkg / "a" / "x.py").write_text("def f():\n    from detgn.a.y import g\n")
    (pkg / "a" / "y.py").write_text("from . import x\n")
    cycle = find_cycle(import_graph(pkg))
    assert cycle is not None and set(cycle) == {"detgn.a.x", "detgn.a.y"}
