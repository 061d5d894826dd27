#!/usr/bin/env python
"""Draw a model's detections (masks, boxes, class names, scores) on images as PNGs.

    python tools/visualize.py --config NAME MODEL.WEIGHTS model_final.pth --input img_or_dir --output out/
    python tools/visualize.py --config NAME MODEL.WEIGHTS model_final.pth --dataset synthetic_val --num 8 --output out/

The same command as ``detgn visualize`` (installed with the package); its code is
:mod:`detgn.cli.visualize`.
"""
import os
import sys

# Runnable from a checkout without installing the package.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from detgn.cli.visualize import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
