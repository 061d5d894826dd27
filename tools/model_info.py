#!/usr/bin/env python
"""Parameter counts, per-part norms and freezing, and optionally inference GFLOPs of a config.

    python tools/model_info.py --config mask_rcnn_R_50_FPN_GN_2x.yaml [KEY VALUE ...]
    python tools/model_info.py --config NAME --flops [--height 800 --width 1216]
    python tools/model_info.py --all                      # every shipped config (not Base-*)
    python tools/model_info.py --all --write-golden tests/configs/golden_param_counts.json
    python tools/model_info.py --config NEW.yaml --write-golden tests/configs/golden_param_counts.json

The same command as ``detgn model-info`` (installed with the package); its code is
:mod:`detgn.cli.model_info`.
"""
import os
import sys

# Runnable from a checkout without installing the package.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from detgn.cli.model_info import cli  # noqa: E402

if __name__ == "__main__":
    sys.exit(cli())
