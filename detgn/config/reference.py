"""The config reference: every key of :func:`detgn.config.get_cfg` with its default and meaning.

The meaning of a key is the comment written above it in ``detgn/config/defaults.py``
(keys listed one under another share the comment above the first). The documentation's
configs page is generated from here, and a test fails for a key that has no comment,
so a key added with a comment above it is documented without further work.
"""
from __future__ import annotations

import ast
from pathlib import Path
from typing import Dict, List, NamedTuple, Optional

from yacs.config import CfgNode as CN

from .defaults import get_cfg

__all__ = ["KeyDoc", "config_reference_markdown", "defaults_comments", "key_docs", "leaf_keys"]

DEFAULTS_FILE = Path(__file__).resolve().with_name("defaults.py")


class KeyDoc(NamedTuple):
    """One config key: its dotted name, default value and meaning ("" when undocumented)."""

    key: str
    default: object
    meaning: str


def _dotted(node: ast.expr) -> Optional[str]:
    """``_C.MODEL.RESNETS.NORM`` -> ``MODEL.RESNETS.NORM``; None for anything else."""
    parts: List[str] = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name) and node.id == "_C" and parts:
        return ".".join(reversed(parts))
    return None


def _comment_above(lines: List[str], lineno: int) -> List[str]:
    """The ``#`` lines right above line ``lineno`` (1-based), without banners, in order."""
    out: List[str] = []
    i = lineno - 2
    while i >= 0 and lines[i].lstrip().startswith("#"):
        text = lines[i].strip().lstrip("#").strip()
        if set(text) <= {"-", "#", " "}:  # a banner rule ends the comment
            break
        out.append(text)
        i -= 1
    return list(reversed(out))


def defaults_comments(source: Optional[str] = None) -> Dict[str, str]:
    """``{dotted key or node: comment}`` for every ``_C.X = ...`` assignment of defaults.py.

    A key with no comment right above it takes the comment of the key assigned on the line
    before it (a group documented once); a blank line or a banner ends such a group.

    Args:
        source: the text of a defaults file (default: ``detgn/config/defaults.py``).

    Returns:
        The comments joined into one line each; keys without any are absent.
    """
    text = DEFAULTS_FILE.read_text(encoding="utf-8") if source is None else source
    lines = text.splitlines()
    docs: Dict[str, str] = {}
    previous: Optional[ast.Assign] = None
    for stmt in ast.parse(text).body:
        key = _dotted(stmt.targets[0]) if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 else None
        if key is None:
            previous = None
            continue
        comment = " ".join(_comment_above(lines, stmt.lineno))
        if not comment and previous is not None and previous.end_lineno == stmt.lineno - 1:
            comment = docs.get(_dotted(previous.targets[0]), "")
        if comment:
            docs[key] = comment
        previous = stmt
    return docs


def leaf_keys(node: Optional[CN] = None, prefix: str = "") -> List[str]:
    """Every leaf key of a config (default: :func:`get_cfg`), dotted, in definition order."""
    node = get_cfg() if node is None else node
    keys: List[str] = []
    for k, v in node.items():
        if isinstance(v, CN):
            keys += leaf_keys(v, f"{prefix}{k}.")
        else:
            keys.append(prefix + k)
    return keys


def key_docs() -> List[KeyDoc]:
    """Every leaf key of :func:`get_cfg` with its default and its comment in defaults.py."""
    cfg, docs = get_cfg(), defaults_comments()
    out = []
    for key in leaf_keys(cfg):
        value = cfg
        for part in key.split("."):
            value = value[part]
        out.append(KeyDoc(key, value, docs.get(key, "")))
    return out


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def config_reference_markdown() -> str:
    """The reference as Markdown: one table per top-level section, key | default | meaning.

    A sub-section's own comment in defaults.py (above ``_C.X.Y = CN()``) is printed above its
    table. Sections come in the order defaults.py defines them.
    """
    docs = defaults_comments()
    sections: Dict[str, List[KeyDoc]] = {}
    for d in key_docs():
        section = d.key.rsplit(".", 1)[0] if "." in d.key else "(top level)"
        sections.setdefault(section, []).append(d)
    out = ["# Config reference", "",
           "Every key of `detgn.config.get_cfg()`, with its default and what it means, generated from "
           "the comments of `detgn/config/defaults.py`. A YAML file or a `KEY VALUE` pair on the "
           "command line sets a key; an unknown key or a value of the wrong type is an error naming "
           "the key and the closest valid ones.", ""]
    for section, rows in sections.items():
        out += [f"## `{section}`" if section != "(top level)" else "## Top-level keys", ""]
        if docs.get(section):
            out += [docs[section], ""]
        out += ["| key | default | meaning |", "|---|---|---|"]
        out += [f"| `{d.key}` | `{_cell(repr(d.default))}` | {_cell(d.meaning)} |" for d in rows]
        out.append("")
    return "\n".join(out)
