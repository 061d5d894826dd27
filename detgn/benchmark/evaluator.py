"""How long COCOEvaluator takes per image, on synthetic ground truth and predictions.

The evaluator runs once per image next to a model that needs ~1-3 s per image;
this measures ``process()`` (box conversion + RLE encoding of every mask) and the
per-image share of ``evaluate()`` (COCOeval bbox + segm), so a regression that
makes evaluation a noticeable fraction of inference shows up as a number.

    python tools/benchmark.py --task evaluator --iters 20 --dets-per-image 100 --width 512
"""
from __future__ import annotations

import os
import tempfile
import time
from typing import Dict, List, Tuple

import numpy as np
import torch

from detgn.structures import Boxes, Instances
from detgn.utils.file_io import atomic_write_json

from detgn.evaluation.coco_evaluator import COCOEvaluator, encode_masks


def _ellipse_polygon(rng: np.random.Generator, h: int, w: int) -> List[float]:
    """A random 16-vertex ellipse inside an (h, w) image, as a flat COCO polygon."""
    rx, ry = rng.uniform(8, w / 5), rng.uniform(8, h / 5)
    cx, cy = rng.uniform(rx, w - rx), rng.uniform(ry, h - ry)
    t = np.linspace(0, 2 * np.pi, 16, endpoint=False)
    xy = np.stack([cx + rx * np.cos(t), cy + ry * np.sin(t)], axis=1)
    return [round(float(v), 2) for v in xy.reshape(-1)]


def synthesize_gt(
    num_images: int, image_size: Tuple[int, int], *,
    objects_per_image: int, num_classes: int, seed: int,
) -> dict:
    """A COCO-format dict: polygon objects, non-contiguous category ids (1, 3, 5, ...)."""
    from pycocotools import mask as mask_util

    rng = np.random.default_rng(seed)
    h, w = image_size
    cats = [{"id": 2 * k + 1, "name": f"class{k}"} for k in range(num_classes)]
    images, anns = [], []
    for img_id in range(1, num_images + 1):
        images.append({"id": img_id, "height": h, "width": w, "file_name": f"{img_id:06d}.jpg"})
        for _ in range(objects_per_image):
            poly = _ellipse_polygon(rng, h, w)
            rle = mask_util.merge(mask_util.frPyObjects([poly], h, w))
            xs, ys = poly[0::2], poly[1::2]
            cat = cats[rng.integers(num_classes)]["id"]
            anns.append({
                "id": len(anns) + 1, "image_id": img_id, "category_id": cat,
                "segmentation": [poly], "area": float(mask_util.area(rle)), "iscrowd": 0,
                "bbox": [min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)],
            })
    return {"images": images, "annotations": anns, "categories": cats}


def synthesize_predictions(
    gt: dict, image_id: int, dets_per_image: int, *, num_classes: int, rng: np.random.Generator
) -> Instances:
    """``dets_per_image`` detections: a jittered copy of every GT object, the rest random.

    Masks are filled ellipses inside each box, at the original image size, as the
    model's mask paste would produce them.
    """
    import cv2

    img = next(i for i in gt["images"] if i["id"] == image_id)
    h, w = img["height"], img["width"]
    cat_ids = sorted(c["id"] for c in gt["categories"])
    objs = [a for a in gt["annotations"] if a["image_id"] == image_id][:dets_per_image]
    boxes, classes = [], []
    for a in objs:
        x, y, bw, bh = a["bbox"]
        jitter = rng.normal(0, 0.05, 4) * [bw, bh, bw, bh]
        boxes.append([x + jitter[0], y + jitter[1], x + bw + jitter[2], y + bh + jitter[3]])
        classes.append(cat_ids.index(a["category_id"]))
    for _ in range(dets_per_image - len(objs)):
        x1, y1 = rng.uniform(0, w - 16), rng.uniform(0, h - 16)
        boxes.append([x1, y1, rng.uniform(x1 + 8, w), rng.uniform(y1 + 8, h)])
        classes.append(int(rng.integers(num_classes)))
    box_arr = np.clip(np.array(boxes, dtype=np.float32).reshape(-1, 4), 0, [w, h, w, h])
    masks = np.zeros((len(boxes), h, w), dtype=np.uint8)
    for m, (x1, y1, x2, y2) in zip(masks, box_arr):
        center = (int((x1 + x2) / 2), int((y1 + y2) / 2))
        axes = (max(int((x2 - x1) / 2), 1), max(int((y2 - y1) / 2), 1))
        cv2.ellipse(m, center, axes, 0, 0, 360, 1, thickness=-1)
    return Instances(
        (h, w),
        pred_boxes=Boxes(torch.from_numpy(box_arr)),
        scores=torch.from_numpy(rng.uniform(0.05, 1.0, len(boxes)).astype(np.float32)),
        pred_classes=torch.tensor(classes, dtype=torch.int64),
        pred_masks=torch.from_numpy(masks.astype(bool)),
    )


def benchmark_evaluator(
    num_images: int, dets_per_image: int, image_size: int, *,
    objects_per_image: int = 8, num_classes: int = 10, seed: int = 0, write_results: bool = True,
) -> Dict[str, float]:
    """Time COCOEvaluator on synthetic data (images are ``image_size`` wide, 4:3).

    Returns seconds: ``process_s_per_image`` (conversion + RLE), of which
    ``encode_s_per_image`` is the mask encoding alone, ``evaluate_s`` (COCOeval
    bbox + segm and, with ``write_results``, the results JSON) and its per-image
    share, ``total_s_per_image`` (wall) and ``total_cpu_s_per_image`` (CPU time);
    plus the bbox/segm AP as a sanity check.
    """
    h, w = int(round(image_size * 3 / 4)), int(image_size)
    gt = synthesize_gt(num_images, (h, w), objects_per_image=objects_per_image,
                       num_classes=num_classes, seed=seed)
    rng = np.random.default_rng(seed + 1)
    with tempfile.TemporaryDirectory() as tmp:
        json_file = os.path.join(tmp, "instances.json")
        atomic_write_json(json_file, gt)
        evaluator = COCOEvaluator.from_json(json_file, output_dir=tmp if write_results else None,
                                            distributed=False)
        # One-time costs (lazy cv2 / pycocotools imports) would otherwise be charged
        # to the first image; they do not recur over a dataset.
        encode_masks(np.zeros((1, 8, 8), dtype=bool))
        process_s = encode_s = process_cpu = 0.0
        for img in gt["images"]:
            # Synthesis is not timed: only what the evaluator does per image.
            instances = synthesize_predictions(
                gt, img["id"], dets_per_image, num_classes=num_classes, rng=rng
            )
            inputs = [{"image_id": img["id"], "height": h, "width": w}]
            c0, t0 = time.process_time(), time.perf_counter()
            evaluator.process(inputs, [{"instances": instances}])
            t1 = time.perf_counter()
            process_cpu += time.process_time() - c0
            encode_masks(instances.pred_masks)
            encode_s += time.perf_counter() - t1
            process_s += t1 - t0
        c0, t0 = time.process_time(), time.perf_counter()
        results = evaluator.evaluate()
        evaluate_s = time.perf_counter() - t0
        evaluate_cpu = time.process_time() - c0
    return {
        "num_images": num_images,
        "dets_per_image": dets_per_image,
        "image_height": h,
        "image_width": w,
        "process_s_per_image": process_s / num_images,
        "encode_s_per_image": encode_s / num_images,
        "evaluate_s": evaluate_s,
        "evaluate_s_per_image": evaluate_s / num_images,
        "total_s_per_image": (process_s + evaluate_s) / num_images,
        # CPU seconds: less sensitive than wall time to other jobs sharing the cores
        "total_cpu_s_per_image": (process_cpu + evaluate_cpu) / num_images,
        "bbox_AP": results["bbox"]["AP"],
        "segm_AP": results["segm"]["AP"],
    }

