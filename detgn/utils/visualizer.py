"""Draw predicted (or ground-truth) instances on an image: masks, boxes, class names, scores."""
from __future__ import annotations

from typing import Optional, Sequence

import cv2
import numpy as np


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
