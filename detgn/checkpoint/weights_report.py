"""What loading weights did, key by key: :class:`WeightsReport` and the key grouping it prints.

A load touches hundreds of tensors; the report counts loaded, missing, unused, ignored
and class-count-dropped keys and prints each list compactly, collapsing keys that
differ only in numbers or in their last name (:func:`group_keys`).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Tuple

__all__ = ["WeightsReport", "format_key_groups", "group_keys"]

# Groups listed per line of the report before "... (N more groups)".
_MAX_GROUPS = 30


def _token(part: str):
    """``"res2"`` -> ``("res", {2})``; text without a trailing number stays a string."""
    m = re.fullmatch(r"(\D*?)(\d+)", part)
    return (m.group(1), frozenset([int(m.group(2))])) if m else part


def _render_ints(nums: Iterable[int]) -> str:
    nums = sorted(nums)
    if len(nums) == 1:
        return str(nums[0])
    runs, start = [], nums[0]
    for prev, cur in zip(nums, nums[1:] + [None]):
        if cur != prev + 1:
            runs.append(f"{start}..{prev}" if prev - start >= 2 else ",".join(map(str, range(start, prev + 1))))
            start = cur
    return "{" + ",".join(runs) + "}"


def group_keys(keys: Iterable[str]) -> List[str]:
    """Collapse keys that differ only in numbers or in their last name into patterns.

    ``res2.0.conv1.weight``, ``res2.1.conv1.weight``, ``res2.2.conv1.weight`` ->
    ``res2.{0..2}.conv1.weight``; ``fpn_lateral2.bias``, ``fpn_lateral2.weight`` ->
    ``fpn_lateral2.{bias,weight}``. Works on ``.`` (detgn) and ``_`` (Detectron) names.
    A pattern stands for exactly the keys it replaces (a product of its sets), in the
    order of first appearance.
    """
    leaves: Dict[tuple, set] = {}
    first: Dict[tuple, int] = {}
    for i, key in enumerate(keys):
        # detgn names split on ".", Detectron blob names (no ".") on "_".
        parts = re.split(r"(\.)" if "." in key else r"(_)", key)
        path = tuple(_token(p) for p in parts[:-1])
        leaves.setdefault(path, set()).add(parts[-1])
        first.setdefault(path, i)
    items = [(path, frozenset(ls), first[path]) for path, ls in leaves.items()]
    changed = True
    while changed:
        changed = False
        for pos in range(max((len(p) for p, _, _ in items), default=0) - 1, -1, -1):
            merged: Dict[tuple, list] = {}
            rest = []
            for path, ls, order in items:
                if pos < len(path) and isinstance(path[pos], tuple):
                    k = (path[:pos], path[pos][0], path[pos + 1:], ls)
                    slot = merged.setdefault(k, [set(), order])
                    slot[0].update(path[pos][1])
                    slot[1] = min(slot[1], order)
                else:
                    rest.append((path, ls, order))
            new = rest + [(pre + ((stem, frozenset(nums)),) + post, ls, order)
                          for (pre, stem, post, ls), (nums, order) in merged.items()]
            changed |= len(new) < len(items)
            items = new
    out = []
    for path, ls, order in sorted(items, key=lambda t: t[2]):
        text = "".join(p if isinstance(p, str) else p[0] + _render_ints(p[1]) for p in path)
        out.append((order, text + (next(iter(ls)) if len(ls) == 1 else "{" + ",".join(sorted(ls)) + "}")))
    return [t for _, t in out]


def format_key_groups(keys: List[str], limit: int = _MAX_GROUPS) -> str:
    """:func:`group_keys` joined by commas, at most ``limit`` groups."""
    groups = group_keys(keys)
    shown = ", ".join(groups[:limit])
    return shown + (f", ... ({len(groups) - limit} more groups)" if len(groups) > limit else "")


@dataclass
class WeightsReport:
    """What :func:`load_weights` did with each key (``str()`` gives the logged summary)."""

    source: str
    loaded: List[str]
    missing: List[str]  # in the model, not in the file: keep their initialisation
    unused: List[str]  # in the file, not in the model (file names where renamed)
    ignored: List[str] = field(default_factory=list)  # in the file, hold no model weights
    dropped: List[Tuple[str, Tuple[int, ...], Tuple[int, ...]]] = field(default_factory=list)  # class count
    notes: List[str] = field(default_factory=list)
    format: str = ""

    def __str__(self) -> str:
        fmt = f" ({self.format})" if self.format else ""
        head = (f"Weights from {self.source}{fmt}: {len(self.loaded)} tensors loaded, {len(self.missing)} "
                f"missing in the file, {len(self.unused)} unused")
        head += f", {len(self.ignored)} ignored" if self.ignored else ""
        head += f", {len(self.dropped)} not loaded (class count)" if self.dropped else ""
        lines = [head]
        if self.loaded:
            lines.append("  loaded: " + format_key_groups(self.loaded))
        if self.missing:
            lines.append("  missing (keep their initialisation): " + format_key_groups(self.missing))
        if self.unused:
            lines.append("  unused (in the file, not in the model): " + format_key_groups(self.unused))
        if self.ignored:
            lines.append("  ignored (no model weights: classifier, solver state, non-array entries): "
                         + format_key_groups(self.ignored))
        if self.dropped:
            lines.append("  not loaded (class count): " + ", ".join(
                f"{k} file {tuple(a)} vs model {tuple(b)}" for k, a, b in self.dropped))
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)
