"""Parameter counts, per-part description and inference GFLOPs of a config; the golden
parameter counts of the shipped configs (``tests/configs/golden_param_counts.json``).

``tools/model_info.py`` is the command line. No weights are loaded; without ``flops`` the
model is built on the ``meta`` device (shapes only, no memory, no initialisation).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import torch

from detgn.config import ConfigError, configs_root, resolve_config_path
from detgn.modeling import build_model_without_weights, count_flops, count_parameters, describe_model
from detgn.utils.file_io import atomic_write_text

from .model import synthetic_batch

__all__ = ["GOLDEN_ABOUT", "golden_key", "model_info", "shipped_configs", "summary_table", "write_golden"]

GOLDEN_ABOUT = (
    "Parameter counts (total and trainable) of every shipped config, checked by "
    "tests/configs/test_shipped_configs.py. Regenerate after a deliberate change with "
    "`python tools/model_info.py --all --write-golden tests/configs/golden_param_counts.json` "
    "and review the diff."
)


def shipped_configs(root: Optional[Path] = None) -> List[str]:
    """Every YAML under the configs folder except ``Base-*`` files, as sorted relative paths."""
    root = Path(root) if root is not None else configs_root()
    if not root.is_dir():
        return []
    files = [p for p in root.rglob("*") if p.is_file() and p.suffix in (".yaml", ".yml")]
    return sorted(p.relative_to(root).as_posix() for p in files if not p.name.startswith("Base-"))


def golden_key(name: str) -> str:
    """The golden-file key of a config: its path relative to the configs folder."""
    path = resolve_config_path(name)
    root = configs_root().resolve()
    try:
        return path.resolve().relative_to(root).as_posix()
    except ValueError:
        raise ConfigError(
            f"{path} is not under the configs folder {root}; only shipped configs have golden "
            "parameter counts (move the file under configs/ or set DETGN_CONFIGS)"
        ) from None


def model_info(name: str, opts: Sequence[str] = (), *, flops: bool = False,
               height: int = 800, width: int = 1216) -> Dict[str, object]:
    """Counts, description and (with ``flops``) inference GFLOPs of one config.

    Returns:
        a dict with ``config`` (as given), ``path``, ``weights_ignored``, ``params``,
        ``trainable``, ``description`` (``describe_model``) and, with ``flops``,
        ``gflops`` and ``flops_input`` ("HxW").
    """
    opts = list(opts)
    if flops:
        # Threshold first so a user's own override still wins.
        opts = ["MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0"] + opts
        torch.manual_seed(0)
    cfg, model, weights = build_model_without_weights(name, opts, device=None if flops else "meta")
    total, trainable = count_parameters(model)
    info: Dict[str, object] = {
        "config": name,
        "path": str(resolve_config_path(name)),
        "weights_ignored": weights,
        "params": total,
        "trainable": trainable,
        "description": describe_model(model),
    }
    if flops:
        inputs = synthetic_batch(1, height, width, num_classes=cfg.MODEL.ROI_HEADS.NUM_CLASSES, train=False)[0]
        info["gflops"] = count_flops(model, inputs)
        info["flops_input"] = f"{height}x{width}"
    return info


def write_golden(path: str, infos: Sequence[Dict[str, object]], *, replace_all: bool) -> Dict[str, Dict[str, int]]:
    """Store the counts of ``infos`` in the golden JSON file at ``path``.

    ``replace_all`` rewrites the file with exactly these entries (``--all``: configs
    that no longer exist disappear); otherwise they are merged into the existing file.
    Returns the entries written.
    """
    entries: Dict[str, Dict[str, int]] = {}
    if not replace_all and os.path.exists(path):
        with open(path) as f:
            try:
                entries = dict(json.load(f).get("configs", {}))
            except (json.JSONDecodeError, AttributeError) as e:
                raise ValueError(f"{path}: not a golden parameter-count file ({e}); regenerate it with --all") from None
    for info in infos:
        entries[golden_key(str(info["config"]))] = {"params": int(info["params"]), "trainable": int(info["trainable"])}
    data = {"about": GOLDEN_ABOUT, "configs": dict(sorted(entries.items()))}
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    atomic_write_text(path, json.dumps(data, indent=2) + "\n")
    return data["configs"]


def summary_table(infos: Sequence[Dict[str, object]]) -> str:
    """One row per config: golden key, parameters, trainable parameters (and GFLOPs when counted)."""
    has_flops = any("gflops" in i for i in infos)
    rows = [("config", "params", "trainable") + (("GFLOPs",) if has_flops else ())]
    for i in infos:
        row = (golden_key(str(i["config"])), f"{int(i['params']):,}", f"{int(i['trainable']):,}")
        rows.append(row + ((f"{i['gflops']:.1f}" if "gflops" in i else "-",) if has_flops else ()))
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) if c == 0 else cell.rjust(w) for c, (cell, w) in enumerate(zip(r, widths)))
             for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
