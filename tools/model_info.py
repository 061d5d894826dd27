#!/usr/bin/env python
"""Parameter counts, per-part norms and freezing, and optionally inference GFLOPs of a config.

    python tools/model_info.py --config mask_rcnn_R_50_FPN_GN_2x.yaml [KEY VALUE ...]
    python tools/model_info.py --config NAME --flops [--height 800 --width 1216]
    python tools/model_info.py --all                      # every shipped config (not Base-*)
    python tools/model_info.py --all --write-golden tests/configs/golden_param_counts.json
    python tools/model_info.py --config NEW.yaml --write-golden tests/configs/golden_param_counts.json

No weights are loaded: MODEL.WEIGHTS is set to "" internally (a parameter count
does not depend on the values, and a zoo name would otherwise need a download).
Without ``--flops`` the model is built on PyTorch's ``meta`` device: modules and
parameter shapes are created, no memory is allocated and no initialisation runs,
so even an R-101 takes a fraction of a second. The counts are the same as a CPU
build (``tests/configs/test_shipped_configs.py`` checks that). ``--flops`` builds
the model for real on MODEL.DEVICE with random weights and counts one inference
pass with fvcore (:func:`detgn.modeling.count_flops`); the test score
threshold is set to 0 so the mask head always runs on TEST.DETECTIONS_PER_IMAGE
boxes, which makes the figure independent of what the random weights predict.

``--write-golden FILE`` stores ``{"params", "trainable"}`` per config (keyed by the
path under ``configs/``): with ``--all`` the file is rewritten with exactly the
shipped configs; with ``--config`` that one entry is added or replaced.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence

# Runnable from a checkout without installing the package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from detgn.config import ConfigError, configs_root, resolve_config_path  # noqa: E402
from detgn.benchmark.model import synthetic_batch  # noqa: E402
from detgn.modeling import build_model_without_weights, count_flops, count_parameters, describe_model  # noqa: E402
from detgn.modeling.describe import format_model_info  # noqa: E402
from detgn.utils.file_io import atomic_write_text  # noqa: E402

__all__ = [
    "GOLDEN_ABOUT",
    "golden_key",
    "main",
    "model_info",
    "shipped_configs",
    "write_golden",
]

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


def _summary_table(infos: Sequence[Dict[str, object]]) -> str:
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


def main(argv: Optional[Sequence[str]] = None) -> List[Dict[str, object]]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    which = ap.add_mutually_exclusive_group(required=True)
    which.add_argument("--config", help="config name or path")
    which.add_argument("--all", action="store_true", help="every shipped config under configs/ (not Base-*)")
    ap.add_argument("--flops", action="store_true", help="also count inference GFLOPs with fvcore (real build)")
    ap.add_argument("--height", type=int, default=800, help="FLOPs input height (the image is already resized)")
    ap.add_argument("--width", type=int, default=1216, help="FLOPs input width")
    ap.add_argument("--write-golden", metavar="FILE", help="store the parameter counts in this golden JSON file")
    ap.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    args = ap.parse_args(argv)
    if args.write_golden and args.opts:
        ap.error("--write-golden stores the shipped configs as written; drop the KEY VALUE overrides")
    # Absolute paths for --all, so a same-named file in the working directory cannot shadow them.
    names = [str(configs_root() / n) for n in shipped_configs()] if args.all else [args.config]
    if not names:
        ap.error(f"no configs found under {configs_root()}")
    infos = []
    for name in names:
        info = model_info(name, args.opts, flops=args.flops, height=args.height, width=args.width)
        print(format_model_info(info) + "\n", flush=True)
        infos.append(info)
    if len(infos) > 1:
        print(_summary_table(infos))
    if args.write_golden:
        written = write_golden(args.write_golden, infos, replace_all=args.all)
        print(f"wrote {len(infos)} entr{'y' if len(infos) == 1 else 'ies'} to {args.write_golden} "
              f"({len(written)} configs in the file)")
    return infos


if __name__ == "__main__":
    try:
        main()
    except ConfigError as e:
        sys.exit(f"error: {e}")
