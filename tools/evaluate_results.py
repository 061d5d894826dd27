#!/usr/bin/env python
"""Re-evaluate a saved COCO results file (no model needed).

    python tools/evaluate_results.py --json datasets/coco/annotations/instances_val2017.json \\
        --results output/inference/coco_instances_results.json [--tasks bbox segm] [--output-dir DIR]

The same command as ``detgn evaluate-results`` (installed with the package); its code is
:mod:`detgn.cli.evaluate_results`.
"""
import os
import sys

# Runnable from a checkout without installing the package.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from detgn.cli.evaluate_results import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
