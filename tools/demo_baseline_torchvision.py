#!/usr/bin/env python
"""The demo's yardstick: torchvision's Mask R-CNN trained the same way, on the same set.

    python tools/demo_baseline_torchvision.py [--minutes 15] [--root datasets/synthetic] [--out DIR]

Issue 4 sets the CPU demo's bar with "a torchvision Mask R-CNN (ResNet-18 FPN, GN,
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
import random
import sys
import time

import cv2
import numpy as np
import torch
from torch import nn

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from detgn.evaluation.coco_evaluator import (  # noqa: E402
    SUMMARY_METRICS,
    encode_masks,
    evaluate_predictions_on_coco,
    load_coco_json,
)
from detgn.utils.file_io import atomic_write_json  # noqa: E402


def build_baseline(num_classes: int, min_size, max_size: int) -> nn.Module:
    from torchvision.models.detection import MaskRCNN
    from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
    from torchvision.models.detection.faster_rcnn import FastRCNNConvFCHead
    from torchvision.models.detection.mask_rcnn import MaskRCNNHeads

    def gn(channels: int) -> nn.Module:
        return nn.GroupNorm(32, channels)

    backbone = resnet_fpn_backbone(backbone_name="resnet18", weights=None, norm_layer=gn, trainable_layers=5)
    box_head = FastRCNNConvFCHead((backbone.out_channels, 7, 7), [256, 256, 256, 256], [1024], norm_layer=gn)
    mask_head = MaskRCNNHeads(backbone.out_channels, [256, 256, 256, 256], 1, norm_layer=gn)
    return MaskRCNN(
        backbone,
        num_classes=num_classes + 1,  # + background
        min_size=min_size,
        max_size=max_size,
        box_head=box_head,
        mask_head=mask_head,
    )


class CocoSplit:
    """Images and targets of one COCO-format split, as torchvision's detectors take them."""

    def __init__(self, root: str, split: str):
        self.coco = load_coco_json(os.path.join(root, "annotations", f"instances_{split}.json"))
        self.image_dir = os.path.join(root, split)
        self.cat_ids = sorted(self.coco.getCatIds())
        self.label_of = {c: i + 1 for i, c in enumerate(self.cat_ids)}
        self.ids = sorted(self.coco.getImgIds())

    def image(self, image_id: int) -> torch.Tensor:
        info = self.coco.loadImgs(image_id)[0]
        path = os.path.join(self.image_dir, info["file_name"])
        bgr = cv2.imread(path, cv2.IMREAD_COLOR)
        if bgr is None:
            raise SystemExit(f"cannot read image {path}")
        return torch.from_numpy(np.ascontiguousarray(bgr[:, :, ::-1])).permute(2, 0, 1).float() / 255.0

    def target(self, image_id: int):
        anns = [a for a in self.coco.loadAnns(self.coco.getAnnIds(imgIds=image_id)) if not a.get("iscrowd", 0)]
        anns = [a for a in anns if a["bbox"][2] > 1 and a["bbox"][3] > 1]
        if not anns:
            return None
        boxes = torch.tensor([[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]] for a in anns])
        masks = np.stack([self.coco.annToMask(a) for a in anns])
        return {
            "boxes": boxes.float(),
            "labels": torch.tensor([self.label_of[a["category_id"]] for a in anns], dtype=torch.int64),
            "masks": torch.from_numpy(masks),
        }


def train(model, data: CocoSplit, minutes: float, lr: float, ims_per_step: int, seed: int, log_every: int = 20):
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=1e-4)
    warmup = 100
    rng = random.Random(seed)
    order = []
    model.train()
    start = time.perf_counter()
    it = 0
    losses_hist = []
    while time.perf_counter() - start < minutes * 60:
        images, targets = [], []
        while len(images) < ims_per_step:
            if not order:
                order = list(data.ids)
                rng.shuffle(order)
            image_id = order.pop()
            tgt = data.target(image_id)
            if tgt is None:
                continue
            img = data.image(image_id)
            if rng.random() < 0.5:  # horizontal flip, as detgn's demo does
                img = img.flip(-1)
                w = img.shape[-1]
                tgt["boxes"] = torch.stack([w - tgt["boxes"][:, 2], tgt["boxes"][:, 1], w - tgt["boxes"][:, 0], tgt["boxes"][:, 3]], 1)
                tgt["masks"] = tgt["masks"].flip(-1)
            images.append(img)
            targets.append(tgt)
        factor = min(1.0, (it + 1) / warmup) if warmup else 1.0
        for g in opt.param_groups:
            g["lr"] = lr * (0.001 + (1 - 0.001) * factor)
        t0 = time.perf_counter()
        losses = model(images, targets)
        total = sum(losses.values())
        opt.zero_grad()
        total.backward()
        opt.step()
        it += 1
        losses_hist.append({k: v.item() for k, v in losses.items()} | {"time": time.perf_counter() - t0})
        if it % log_every == 0:
            recent = losses_hist[-log_every:]
            med = {k: float(np.median([r[k] for r in recent])) for k in recent[0]}
            elapsed = time.perf_counter() - start
            print(
                f"iter {it}  " + "  ".join(f"{k}: {v:.4f}" for k, v in med.items()) + f"  elapsed {elapsed:.0f}s",
                flush=True,
            )
    return it, time.perf_counter() - start, float(np.median([r["time"] for r in losses_hist])) if losses_hist else 0.0


@torch.no_grad()
def evaluate(model, data: CocoSplit, max_images: int = 0):
    model.eval()
    results = []
    ids = data.ids[:max_images] if max_images else data.ids
    start = time.perf_counter()
    inv = {v: k for k, v in data.label_of.items()}
    for image_id in ids:
        out = model([data.image(image_id)])[0]
        boxes = out["boxes"].numpy()
        rles = encode_masks((out["masks"][:, 0] > 0.5).numpy()) if len(boxes) else []
        for k in range(len(boxes)):
            x0, y0, x1, y1 = boxes[k].tolist()
            results.append(
                {
                    "image_id": image_id,
                    "category_id": inv[int(out["labels"][k])],
                    "bbox": [x0, y0, x1 - x0, y1 - y0],
                    "score": float(out["scores"][k]),
                    "segmentation": rles[k],
                }
            )
    seconds = time.perf_counter() - start
    metrics = {}
    for task in ("bbox", "segm"):
        scores = evaluate_predictions_on_coco(data.coco, results, task, img_ids=ids)
        metrics[task] = {k: scores[k] for k in SUMMARY_METRICS}
    return metrics, seconds, len(ids)


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
