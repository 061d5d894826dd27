"""No import cycle between detgn's modules, so that none can come back unnoticed; no module
imports another's private names; no tool imports or loads another tool; engine/ is the engine.

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
    importing the zoo imports no model code (``get``/``get_config`` are detgn.model_zoo.configs,
    which the package does not import)."""
    graph = import_graph()
    for name, edges in graph.items():
        if name.startswith("detgn.model_zoo.") and name != "detgn.model_zoo.configs":
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


def private_imports(root: Path = ROOT) -> List[str]:
    """``module: from other import _name`` for every import of another detgn module's private name."""
    files = {_module_name(p, root): p for p in root.rglob("*.py")}
    found = []
    for name, path in files.items():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(node, ast.ImportFrom):
                continue
            base = _resolve(name, path.name == "__init__.py", node.level, node.module)
            if base.split(".")[0] != root.name or base == name:
                continue
            for a in node.names:
                if a.name.startswith("_") and not a.name.startswith("__"):
                    found.append(f"{name}: from {base} import {a.name}")
    return found


def test_no_module_imports_another_modules_private_names():
    assert private_imports() == []


def test_finds_a_planted_private_import(tmp_path):
    files = {"__init__.py": "", "a/__init__.py": "", "a/x.py": "def _helper():\n    pass\n",
             "a/y.py": "def f():\n    from .x import _helper, __version__\n"}
    for rel, text in files.items():
        (tmp_path / "detgn" / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "detgn" / rel).write_text(text)
    assert private_imports(tmp_path / "detgn") == ["detgn.a.y: from detgn.a.x import _helper"]


TOOLS = ROOT.parent / "tools"


def tool_imports_of_tools(tools: Path = TOOLS) -> List[str]:
    """``tool: what`` for every tool that imports or loads another tool (tools call the library)."""
    names = {p.stem for p in tools.glob("*.py")}
    found = []
    for path in sorted(tools.glob("*.py")):
        text = path.read_text()
        for marker in ("spec_from_file_location", "import_module", "runpy"):
            if marker in text:
                found.append(f"{path.name}: {marker}")
        for node in ast.walk(ast.parse(text, str(path))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                targets = [node.module or ""]
            else:
                continue
            found += [f"{path.name}: import {t}" for t in targets if t.split(".")[0] in names | {"tools"}]
    return found


def test_no_tool_imports_another_tool():
    assert len(list(TOOLS.glob("*.py"))) > 10  # the walk found the tools
    assert tool_imports_of_tools() == []


def test_finds_a_planted_tool_import(tmp_path):
    (tmp_path / "a.py").write_text("def main():\n    pass\n")
    (tmp_path / "b.py").write_text("import importlib.util\nspec = importlib.util.spec_from_file_location('a', 'a.py')\n")
    (tmp_path / "c.py").write_text("from a import main\n")
    assert tool_imports_of_tools(tmp_path) == ["b.py: spec_from_file_location", "c.py: import a"]


# The engine is the training loop and what runs it: anything else belongs to another package.
ENGINE_FILES = {"__init__", "defaults", "hooks", "launch", "predictor", "preemption", "run", "tasks", "trainer"}


def test_engine_holds_only_the_engine():
    assert {p.stem for p in (ROOT / "engine").glob("*.py")} == ENGINE_FILES
