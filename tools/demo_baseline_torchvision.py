#!/usr/bin/env python
"""The demo's yardstick: torchvision's Mask R-CNN trained the same way, on the same set.

    python tools/demo_baseline_torchvision.py [--minutes 15] [--root datasets/synthetic] [--out DIR]

The CPU demo's bar is "a torchvision Mask R-CNN (ResNet-18 FPN, GN,
4conv1fc GN box head, GN mask head, from scratch, 2 images/step) trained for 15
minutes". This script is that model, built from torchvision's own parts
(``resnet_fpn_backbone`` with GroupNorm and all five stages trainable,
``FastRCNNConvFCHead`` 4x256 conv + 1024 fc with GroupNorm, ``MaskRCNNHeads`` with
GroupNorm; everything else at torchvision's defaults: 512 RoIs per image, 2000/1000
proposals), trained from scratch on the synthetic training split for a wall-clock
budget with 2 images per step, then scored with COCOeval (bbox + segm) on the
validation split, so the demo's AP can be compared with it on the same data, machine
and budget.

Choices made where the issue is silent (each favours the baseline or matches detgn's
demo): input shorter side 256-320 (test 288), longer side at most 512 (the demo's);
SGD, momentum 0.9, weight decay 1e-4, LR 0.02 with a 100-iteration linear warmup and
no decay (the run is cut by time, not iterations); GroupNorm with 32 groups
(torchvision's usual), the images in RGB scaled to [0, 1] with ImageNet mean/std
(torchvision's transform).
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from detgn.benchmark.torchvision_baseline import CocoSplit, build_baseline, evaluate, train  # noqa: E402,F401
from detgn.utils.file_io import atomic_write_json  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--root", default=os.path.join(ROOT, "datasets", "synthetic"), help="synthetic set (prepare_synthetic.py --out)")
    ap.add_argument("--minutes", type=float, default=15.0, help="training wall-clock budget")
    ap.add_argument("--ims-per-step", type=int, default=2)
    ap.add_argument("--lr", type=float, default=0.02)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--eval-images", type=int, default=0, help="score only the first N validation images (0: all)")
    ap.add_argument("--out", default="", help="write the figures here as JSON")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    train_set, val_set = CocoSplit(args.root, "train"), CocoSplit(args.root, "val")
    model = build_baseline(len(train_set.cat_ids), min_size=(256, 288, 320), max_size=512)
    print(f"torchvision {__import__('torchvision').__version__} Mask R-CNN R18-FPN GN 4conv1fc, "
          f"{sum(p.numel() for p in model.parameters()):,} parameters; training {args.minutes} min", flush=True)
    iters, train_s, s_per_iter = train(model, train_set, args.minutes, args.lr, args.ims_per_step, args.seed)
    model.transform.min_size = (288,)
    metrics, eval_s, n = evaluate(model, val_set, args.eval_images)
    summary = {
        "iterations": iters,
        "images_seen": iters * args.ims_per_step,
        "train_seconds": round(train_s, 1),
        "median_s_per_iter": round(s_per_iter, 3),
        "eval_seconds": round(eval_s, 1),
        "eval_images": n,
        "bbox": metrics["bbox"],
        "segm": metrics["segm"],
    }
    print(json.dumps(summary, indent=1))
    if args.out:
        atomic_write_json(args.out, summary, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
