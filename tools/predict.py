#!/usr/bin/env python
"""Predict with a trained or exported detector on images, folders, globs or a video.

    python tools/predict.py --model exported/ --input photos/ --output out/                  # onnxruntime
    python tools/predict.py --model exported/ --backend openvino --input "frames/*.jpg" --output out/
    python tools/predict.py --model exported/ --input clip.mp4 --output out/                 # out/clip.mp4
    python tools/predict.py --config NAME MODEL.WEIGHTS model_final.pth --input img.jpg --output out/  # eager torch
    python tools/predict.py --model exported/ --dataset synthetic_val --output out/ --no-draw
    python tools/evaluate_results.py --json datasets/synthetic/annotations/instances_val.json \\
        --results out/coco_instances_results.json

The same command as ``detgn predict`` (installed with the package); its code is
:mod:`detgn.cli.predict`.
"""
import os
import sys

# Runnable from a checkout without installing the package.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from detgn.cli.predict import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
