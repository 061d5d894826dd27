"""Small COCO ground truth and predictions for the evaluation tests.

Coordinates are whole pixels so XYXY <-> XYWH round trips are exact in float32,
and the evaluator can be compared with pycocotools called directly for equality.
"""
from __future__ import annotations

import copy
import json
import math
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
from pycocotools import mask as mask_util
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from detgn.structures import Boxes, Instances

# Non-contiguous dataset ids, as in COCO (contiguous ids 0, 1, 2 in sorted order).
CATEGORIES = [{"id": 3, "name": "person"}, {"id": 7, "name": "dog"}, {"id": 20, "name": "kite"}]
CAT_IDS = [c["id"] for c in CATEGORIES]
METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")


def rect(x: float, y: float, w: float, h: float) -> List[float]:
    return [x, y, x + w, y, x + w, y + h, x, y + h]


# image id -> (height, width, [(category id, polygon)])
_IMAGES = {
    1: (96, 128, [(3, rect(10, 10, 40, 50)), (7, [60, 20, 120, 20, 90, 80]), (20, rect(100, 70, 12, 10))]),
    2: (64, 64, [(20, rect(5, 5, 8, 8)), (3, rect(24, 20, 36, 40))]),
    3: (128, 96, [(7, [20, 10, 60, 10, 80, 50, 60, 90, 20, 90, 5, 50]), (20, rect(40, 100, 30, 20))]),
    4: (80, 112, [(3, rect(4, 4, 30, 60)), (7, rect(30, 30, 50, 40)), (20, rect(90, 10, 16, 16))]),
    5: (64, 64, []),  # an image without objects: detections there are false positives
}
# Image 2 has a crowd region (left strip), given as uncompressed RLE like COCO's.
CROWD_IMAGE, CROWD_CAT, CROWD_BOX = 2, 3, (0, 24, 16, 40)  # x, y, w, h


def _poly_mask(poly: List[float], h: int, w: int) -> np.ndarray:
    return mask_util.decode(mask_util.merge(mask_util.frPyObjects([poly], h, w))).astype(bool)


def _uncompressed_rle(mask: np.ndarray) -> dict:
    """Column-major run lengths, starting with a (possibly empty) run of zeros."""
    flat = mask.flatten(order="F").astype(np.int8)
    change = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    counts = np.diff(bounds).tolist()
    if flat[0] == 1:
        counts = [0] + counts
    return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": counts}


def make_gt(with_crowd: bool = True) -> dict:
    """COCO-format ground truth dict (bbox from polygon extents, area from the mask)."""
    images, anns = [], []
    for img_id, (h, w, objs) in _IMAGES.items():
        images.append({"id": img_id, "height": h, "width": w, "file_name": f"{img_id}.png"})
        for cat, poly in objs:
            xs, ys = poly[0::2], poly[1::2]
            anns.append({
                "id": len(anns) + 1, "image_id": img_id, "category_id": cat, "segmentation": [poly],
                "bbox": [min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)],
                "area": float(_poly_mask(poly, h, w).sum()), "iscrowd": 0,
            })
    if with_crowd:
        h, w, _ = _IMAGES[CROWD_IMAGE]
        x, y, bw, bh = CROWD_BOX
        mask = np.zeros((h, w), dtype=bool)
        mask[y:y + bh, x:x + bw] = True
        anns.append({
            "id": len(anns) + 1, "image_id": CROWD_IMAGE, "category_id": CROWD_CAT,
            "segmentation": _uncompressed_rle(mask), "bbox": [x, y, bw, bh],
            "area": float(mask.sum()), "iscrowd": 1,
        })
    return {"images": images, "annotations": anns, "categories": copy.deepcopy(CATEGORIES)}


def write_gt(path, gt: Optional[dict] = None) -> str:
    with open(path, "w") as f:
        json.dump(gt if gt is not None else make_gt(), f)
    return str(path)


def perfect_detections(gt: dict) -> List[dict]:
    """One detection per non-crowd GT object: {image_id, category_id, bbox XYWH, score, mask}."""
    sizes = {i["id"]: (i["height"], i["width"]) for i in gt["images"]}
    dets = []
    for k, a in enumerate(a for a in gt["annotations"] if not a["iscrowd"]):
        h, w = sizes[a["image_id"]]
        dets.append({
            "image_id": a["image_id"], "category_id": a["category_id"], "bbox": list(a["bbox"]),
            "score": 0.95 - 0.01 * k, "mask": _poly_mask(a["segmentation"][0], h, w),
        })
    return dets


def box_det(image_id: int, cat: int, xywh: Sequence[float], score: float, gt: dict) -> dict:
    """A detection whose mask fills its box."""
    img = next(i for i in gt["images"] if i["id"] == image_id)
    mask = np.zeros((img["height"], img["width"]), dtype=bool)
    x, y, w, h = (int(v) for v in xywh)
    mask[y:y + h, x:x + w] = True
    return {"image_id": image_id, "category_id": cat, "bbox": list(xywh), "score": score, "mask": mask}


def to_model_io(dets: List[dict], gt: dict, *, with_masks: bool = True, image_ids=None):
    """(inputs, outputs) as the test loader and the model would give them, one per image."""
    inputs, outputs = [], []
    for img in gt["images"]:
        if image_ids is not None and img["id"] not in image_ids:
            continue
        h, w = img["height"], img["width"]
        mine = [d for d in dets if d["image_id"] == img["id"]]
        xyxy = [[x, y, x + bw, y + bh] for x, y, bw, bh in (d["bbox"] for d in mine)]
        fields = {
            "pred_boxes": Boxes(torch.tensor(xyxy, dtype=torch.float32).reshape(-1, 4)),
            "scores": torch.tensor([d["score"] for d in mine], dtype=torch.float32),
            "pred_classes": torch.tensor([CAT_IDS.index(d["category_id"]) for d in mine], dtype=torch.int64),
        }
        if with_masks:
            masks = np.stack([d["mask"] for d in mine]) if mine else np.zeros((0, h, w), dtype=bool)
            fields["pred_masks"] = torch.from_numpy(masks)
        inputs.append({"image_id": img["id"], "height": h, "width": w, "file_name": img["file_name"]})
        outputs.append({"instances": Instances((h, w), **fields)})
    return inputs, outputs


def direct_pycocotools(json_file: str, dets: List[dict], task: str) -> Dict[str, float]:
    """What pycocotools reports when called by hand: per-detection encoding, float32 scores."""
    coco_gt = COCO(json_file)
    results = []
    for d in dets:
        # The model's scores are float32; compare against the same values.
        r = {"image_id": d["image_id"], "category_id": d["category_id"],
             "score": float(np.float32(d["score"]))}
        if task == "bbox":
            r["bbox"] = list(d["bbox"])
        else:
            r["segmentation"] = mask_util.encode(np.asfortranarray(d["mask"].astype(np.uint8)))
        results.append(r)
    coco_eval = COCOeval(coco_gt, coco_gt.loadRes(results), task)
    coco_eval.evaluate()
    coco_eval.accumulate()
    coco_eval.summarize()
    out = {m: (coco_eval.stats[i] * 100 if coco_eval.stats[i] >= 0 else float("nan")) for i, m in enumerate(METRICS)}
    for k, cat in enumerate(coco_eval.params.catIds):
        p = coco_eval.eval["precision"][:, :, k, 0, -1]
        p = p[p > -1]
        name = next(c["name"] for c in CATEGORIES if c["id"] == cat)
        out[f"AP-{name}"] = p.mean() * 100 if p.size else float("nan")
    return out


def assert_same_metrics(a: Dict[str, float], b: Dict[str, float]) -> None:
    assert set(a) == set(b), (sorted(a), sorted(b))
    for k in a:
        same = (math.isnan(a[k]) and math.isnan(b[k])) or a[k] == b[k]
        assert same, f"{k}: {a[k]} != {b[k]}"
