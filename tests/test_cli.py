"""The ``detgn`` command: its subcommands run the functions the tools in a clone run, with the
same arguments; ``--help`` at both levels; ``eval`` is ``train --eval-only``."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

from detgn.cli import main as cli_main
from detgn.cli.main import SUBCOMMANDS, entry_point, main

REPO = Path(__file__).resolve().parents[1]


def _imported_names(tool: Path):
    """``(module, name)`` of every ``from module import name`` in a tool."""
    tree = ast.parse(tool.read_text())
    return {(n.module, a.name) for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) for a in n.names}


@pytest.mark.parametrize("name", sorted(SUBCOMMANDS))
def test_subcommand_runs_what_its_tool_runs(name):
    sub = SUBCOMMANDS[name]
    assert callable(entry_point(name))
    tool = REPO / sub.tool
    assert tool.is_file(), tool
    assert (sub.module, sub.function) in _imported_names(tool), f"{sub.tool} should call {sub.module}.{sub.function}"


def test_help_lists_the_subcommands(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: detgn SUBCOMMAND") and all(f"  {n} " in out for n in SUBCOMMANDS)
    assert main([]) == 2
    assert main(["trian"]) == 2 and "unknown subcommand 'trian'" in capsys.readouterr().err


def test_subcommand_help_is_the_tools_own(capsys):
    with pytest.raises(SystemExit) as e:
        main(["validate", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: detgn validate") and "--json" in out and "--images" in out


def test_eval_is_train_with_eval_only(monkeypatch):
    calls = []
    monkeypatch.setattr(cli_main, "entry_point", lambda name: lambda argv: calls.append((name, argv)) or 0)
    assert main(["eval", "--config", "fpn_gn_long.yaml", "MODEL.WEIGHTS", "w.pth"]) == 0
    assert main(["train", "--config", "fpn_gn_long.yaml"]) == 0
    assert calls == [("eval", ["--eval-only", "--config", "fpn_gn_long.yaml", "MODEL.WEIGHTS", "w.pth"]),
                     ("train", ["--config", "fpn_gn_long.yaml"])]
