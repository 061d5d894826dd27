#!/usr/bin/env python
"""Speed and memory of a config: training step, inference, data loading, FLOPs; the evaluator's cost.

    python tools/benchmark.py --config fpn_gn_long.yaml --task train [--iters 20] [KEY VALUE ...]
    python tools/benchmark.py --config NAME --task inference --torchvision   # + torchvision's Mask R-CNN
    python tools/benchmark.py --task evaluator --iters 20 --dets-per-image 100 --width 512

The same command as ``detgn benchmark`` (installed with the package); its code is
:mod:`detgn.cli.benchmark`.
"""
import os
import sys

# Runnable from a checkout without installing the package.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from detgn.cli.benchmark import cli  # noqa: E402

if __name__ == "__main__":
    sys.exit(cli())
