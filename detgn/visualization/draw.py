"""Draw predicted (or ground-truth) instances on an image: masks, boxes, class names, scores.

:func:`draw_predictions` draws a model's output; :func:`render` puts it beside the
ground truth of a dataset record (decoded by :func:`gt_arrays`), each panel captioned;
:func:`write_png` saves the picture atomically. ``tools/visualize.py`` and the demo
drive these through :mod:`detgn.visualization.predictions`.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np

from detgn.structures import polygons_to_bitmask, rle_to_bitmask

from detgn.utils.file_io import atomic_write_bytes

__all__ = ["CAPTION_H", "GAP", "draw_instances", "draw_predictions", "gt_arrays", "render", "write_png"]

CAPTION_H = 18  # pixels of the caption strip above each panel of a side-by-side picture
GAP = 4  # white columns between the two panels


def _palette(n: int) -> np.ndarray:
    """n distinct BGR colours (golden-ratio hues), stable across calls."""
    hsv = np.zeros((n, 1, 3), dtype=np.uint8)
    hsv[:, 0, 0] = (np.arange(n) * 0.618033988749895 * 180) % 180
    hsv[:, 0, 1] = 200
    hsv[:, 0, 2] = 255
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)[:, 0, :]


def draw_instances(
    image_bgr: np.ndarray,
    boxes: np.ndarray,
    classes: Sequence[int],
    scores: Optional[Sequence[float]] = None,
    masks: Optional[np.ndarray] = None,
    class_names: Optional[Sequence[str]] = None,
    alpha: float = 0.45,
) -> np.ndarray:
    """Return a copy of ``image_bgr`` (H, W, 3 uint8) with instances drawn on it.

    Args:
        boxes: (N, 4) x1, y1, x2, y2 in image pixels.
        classes: (N,) contiguous class ids.
        scores: (N,) or None (ground truth).
        masks: (N, H, W) bool or None.
        class_names: names indexed by class id.
    """
    out = image_bgr.copy()
    n = len(boxes)
    if n == 0:
        return out
    colours = _palette(max(n, 1))
    if masks is not None and len(masks):
        overlay = out.copy()
        for i in range(n):
            m = masks[i].astype(bool)
            overlay[m] = colours[i]
        out = cv2.addWeighted(overlay, alpha, out, 1 - alpha, 0)
        for i in range(n):
            contours, _ = cv2.findContours(masks[i].astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
            cv2.drawContours(out, contours, -1, tuple(int(c) for c in colours[i]), 1)
    scale = max(0.35, min(out.shape[:2]) / 900.0)
    for i in range(n):
        x1, y1, x2, y2 = [int(round(float(v))) for v in boxes[i]]
        c = tuple(int(v) for v in colours[i])
        cv2.rectangle(out, (x1, y1), (x2, y2), c, 1, cv2.LINE_AA)
        cls = int(classes[i])
        label = class_names[cls] if class_names is not None and cls < len(class_names) else str(cls)
        if scores is not None:
            label = f"{label} {float(scores[i]):.2f}"
        (tw, th), base = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
        ty = max(y1, th + base)
        cv2.rectangle(out, (x1, ty - th - base), (x1 + tw, ty), c, -1)
        cv2.putText(out, label, (x1, ty - base), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 1, cv2.LINE_AA)
    return out


def draw_predictions(image_bgr: np.ndarray, instances, class_names=None, score_thresh: float = 0.5) -> np.ndarray:
    """Draw a model's output ``Instances`` (at the image's size) above ``score_thresh``."""
    keep = instances.scores >= score_thresh
    inst = instances[keep].to("cpu")
    masks = inst.pred_masks.numpy() if inst.has("pred_masks") else None
    return draw_instances(
        image_bgr,
        inst.pred_boxes.tensor.numpy(),
        inst.pred_classes.tolist(),
        inst.scores.tolist(),
        masks,
        class_names,
    )


def gt_arrays(record: Dict[str, Any]) -> Tuple[np.ndarray, List[int], Optional[np.ndarray]]:
    """Non-crowd ground truth of a record: (boxes (N, 4) XYXY, classes (N,), masks (N, H, W) bool or None)."""
    anns = [a for a in record.get("annotations", []) if not a.get("iscrowd", 0)]
    h, w = int(record["height"]), int(record["width"])
    xywh = np.asarray([a["bbox"] for a in anns], dtype=np.float64).reshape(-1, 4)
    boxes = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1)
    classes = [int(a["category_id"]) for a in anns]
    if not anns or not all("segmentation" in a for a in anns):
        return boxes, classes, None
    masks = np.zeros((len(anns), h, w), dtype=bool)
    for i, a in enumerate(anns):
        segm = a["segmentation"]
        masks[i] = rle_to_bitmask(segm, h, w) if isinstance(segm, dict) else polygons_to_bitmask(segm, h, w)
    return boxes, classes, masks


def _captioned(panel: np.ndarray, text: str) -> np.ndarray:
    strip = np.full((CAPTION_H, panel.shape[1], 3), 255, dtype=np.uint8)
    cv2.putText(strip, text, (3, CAPTION_H - 5), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
    return np.concatenate([strip, panel], axis=0)


def render(
    image_bgr: np.ndarray,
    instances,
    *,
    class_names: Optional[Sequence[str]] = None,
    score_thresh: float = 0.5,
    record: Optional[Dict[str, Any]] = None,
) -> np.ndarray:
    """Draw one image's detections; with ``record``, its ground truth beside them.

    Args:
        image_bgr: (H, W, 3) uint8, the original image in BGR order.
        instances: model output at (H, W) (``pred_boxes``, ``scores``, ``pred_classes``,
            optional ``pred_masks``).
        class_names: names by contiguous class id (None: numbers).
        score_thresh: detections scoring lower are not drawn.
        record: the dataset record of the image, for the ground-truth panel.
    Returns:
        (H, W, 3) uint8 without ``record``; otherwise (H + CAPTION_H, 2W + GAP, 3): the
        predictions on the left, the ground truth on the right, each with a caption.
    """
    pred = draw_predictions(image_bgr, instances, class_names, score_thresh=score_thresh)
    if record is None:
        return pred
    boxes, classes, masks = gt_arrays(record)
    gt = draw_instances(image_bgr, boxes, classes, None, masks, class_names)
    n_pred = int((instances.scores >= score_thresh).sum())
    left = _captioned(pred, f"predicted {n_pred} (>={score_thresh:.2f})")
    right = _captioned(gt, f"ground truth {len(boxes)}")
    gap = np.full((left.shape[0], GAP, 3), 255, dtype=np.uint8)
    return np.concatenate([left, gap, right], axis=1)


def write_png(path: str, image: np.ndarray) -> None:
    """Encode ``image`` (BGR) as PNG and write it atomically."""
    ok, buf = cv2.imencode(".png", image)
    if not ok:
        raise RuntimeError(f"OpenCV could not encode {path} as PNG")
    atomic_write_bytes(path, buf.tobytes())
