#!/usr/bin/env python
"""Check that an exported model gives the eager model's detections (and, on a dataset, its AP).

    # export a config's model in each format to a temporary folder and compare on four image sizes
    python tools/check_export.py --config gn_paper/mask_rcnn_R_50_FPN_GN_2x.yaml --format onnx,torch_export \\
        MODEL.WEIGHTS "" MODEL.ROI_HEADS.SCORE_THRESH_TEST 0.0
    # an existing export against its config and weights, on a dataset: detections and COCO AP
    python tools/check_export.py --config synthetic/demo_gn_scratch.yaml --model exported/ \\
        --dataset synthetic_val MODEL.WEIGHTS output/demo/model_final.pth

The same command as ``detgn check-export`` (installed with the package); its code is
:mod:`detgn.cli.check_export`.
"""
import os
import sys

# Runnable from a checkout without installing the package.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from detgn.cli.check_export import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
