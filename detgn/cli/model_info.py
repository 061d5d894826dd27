"""Parameter counts, per-part norms and freezing, and optionally inference GFLOPs of a config.

    detgn model-info --config mask_rcnn_R_50_FPN_GN_2x.yaml [KEY VALUE ...]
    detgn model-info --config NAME --flops [--height 800 --width 1216]
    detgn model-info --all                      # every shipped config (not Base-*)
    detgn model-info --all --write-golden tests/configs/golden_param_counts.json
    detgn model-info --config NEW.yaml --write-golden tests/configs/golden_param_counts.json

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
shipped configs; with ``--config`` that one entry is added or replaced. The functions are
:mod:`detgn.benchmark.model_info`.
"""
from __future__ import annotations

import argparse
import sys
from typing import Dict, List, Optional, Sequence

from detgn.benchmark.model_info import model_info, shipped_configs, summary_table, write_golden
from detgn.config import ConfigError, configs_root
from detgn.modeling.describe import format_model_info


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
        print(summary_table(infos))
    if args.write_golden:
        written = write_golden(args.write_golden, infos, replace_all=args.all)
        print(f"wrote {len(infos)} entr{'y' if len(infos) == 1 else 'ies'} to {args.write_golden} "
              f"({len(written)} configs in the file)")
    return infos


def cli(argv: Optional[Sequence[str]] = None) -> int:
    """The command: :func:`main`, with a config error printed as one line (exit status 1)."""
    try:
        main(argv)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(cli())
