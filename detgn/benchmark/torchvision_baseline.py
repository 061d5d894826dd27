"""torchvision's Mask R-CNN trained and scored on a COCO-format split: the demo's yardstick.

:func:`build_baseline` is the demo's stated yardstick (torchvision's ``resnet_fpn_backbone``
ResNet-18 with GroupNorm, all five stages trainable, ``FastRCNNConvFCHead`` 4x256 conv +
1024 fc and ``MaskRCNNHeads`` with GroupNorm, everything else at torchvision's
defaults). :class:`CocoSplit` gives a split's images and targets in torchvision's
``(images, targets)`` form; :func:`train` runs SGD for a wall-clock budget (the clock is
checked before each step, so a budget shorter than one step still takes one) and
:func:`evaluate` scores with COCOeval (bbox + segm). ``tools/demo_baseline_torchvision.py``
is the command line.
"""
from __future__ import annotations

import os
import random
import time

import numpy as np
import torch
from torch import nn

from detgn.data.mapper import read_image
from detgn.evaluation.coco_evaluator import (
    SUMMARY_METRICS,
    encode_masks,
    evaluate_predictions_on_coco,
    load_coco_json,
)

__all__ = ["CocoSplit", "build_baseline", "evaluate", "train"]


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
        rgb = read_image(os.path.join(self.image_dir, info["file_name"]), image_format="RGB", image_id=image_id)
        return torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1).float() / 255.0

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
