"""Are two sets of detections the same? The equality an export must keep.

Two backends may order detections whose scores agree to ~1e-7 differently (float sums in
another order), so detections are matched one to one, not compared by position: each
detection of the reference needs its own detection in the other set with the same class, a
box within ``box_tol`` px in every coordinate and a score within ``score_tol``. Masks of
matched pairs are compared by IoU (pasted bool masks, or M x M probabilities thresholded at
0.5, whose largest difference is reported too).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional

import numpy as np

__all__ = ["DetectionMatch", "match_detections", "BOX_TOL", "SCORE_TOL", "MASK_IOU_MIN"]

BOX_TOL = 0.01
SCORE_TOL = 1e-4
MASK_IOU_MIN = 0.99


@dataclass
class DetectionMatch:
    """The outcome of :func:`match_detections`."""

    count_ref: int
    count_other: int
    unmatched: List[int] = field(default_factory=list)  # reference detections without a partner
    max_box_err: float = 0.0
    max_score_err: float = 0.0
    min_mask_iou: Optional[float] = None  # bool masks, or probability masks at 0.5
    max_mask_err: Optional[float] = None  # probability masks: largest difference

    @property
    def ok(self) -> bool:
        """Same count, every detection matched, masks within the limits."""
        # M x M probabilities pass when they agree to 1e-3, or when their masks at 0.5 do (a
        # pixel of a 28 x 28 mask at 0.5 +- 3e-6 may flip and still be the same mask).
        masks_ok = (self.min_mask_iou is None or self.min_mask_iou >= MASK_IOU_MIN
                    or (self.max_mask_err is not None and self.max_mask_err <= 1e-3))
        return self.count_ref == self.count_other and not self.unmatched and masks_ok

    def summary(self) -> str:
        parts = [f"{self.count_other} vs {self.count_ref} detections"]
        if self.unmatched:
            parts.append(f"{len(self.unmatched)} without a partner (class, box within {BOX_TOL} px, "
                         f"score within {SCORE_TOL}), first: #{self.unmatched[0]}")
        parts.append(f"max box error {self.max_box_err:.3g} px, max score error {self.max_score_err:.3g}")
        if self.min_mask_iou is not None:
            parts.append(f"min mask IoU {self.min_mask_iou:.4f}")
        if self.max_mask_err is not None:
            parts.append(f"max mask probability error {self.max_mask_err:.3g}")
        return "; ".join(parts)


def _np(x):
    if x is None:
        return None
    return x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)


def match_detections(ref_boxes, ref_scores, ref_classes, boxes, scores, classes, ref_masks=None, masks=None,
                     *, box_tol: float = BOX_TOL, score_tol: float = SCORE_TOL) -> DetectionMatch:
    """Match the detections (``boxes`` (N, 4), ``scores`` (N,), ``classes`` (N,), optional ``masks``
    (N, H, W) bool or (N, M, M) float) of another backend to the reference's.

    Returns:
        a :class:`DetectionMatch`; errors are over the matched pairs.
    """
    rb, rs, rc = _np(ref_boxes).reshape(-1, 4).astype(np.float64), _np(ref_scores).reshape(-1), _np(ref_classes)
    ob, os_, oc = _np(boxes).reshape(-1, 4).astype(np.float64), _np(scores).reshape(-1), _np(classes)
    result = DetectionMatch(count_ref=len(rb), count_other=len(ob))
    used = np.zeros(len(ob), dtype=bool)
    pairs = []
    for i in range(len(rb)):
        box_err = np.abs(ob - rb[i]).max(axis=1) if len(ob) else np.zeros(0)
        score_err = np.abs(os_.astype(np.float64) - float(rs[i]))
        ok = (~used) & (oc.reshape(-1) == rc.reshape(-1)[i]) & (box_err <= box_tol) & (score_err <= score_tol)
        if not ok.any():
            result.unmatched.append(i)
            continue
        j = int(np.flatnonzero(ok)[np.argmin(box_err[ok])])
        used[j] = True
        pairs.append((i, j))
        result.max_box_err = max(result.max_box_err, float(box_err[j]))
        result.max_score_err = max(result.max_score_err, float(score_err[j]))
    rm, om = _np(ref_masks), _np(masks)
    if rm is not None and om is not None and pairs:
        if rm.dtype != bool:  # M x M probabilities: their largest difference, and IoU of the masks at 0.5
            result.max_mask_err = float(max(np.abs(rm[i].astype(np.float64) - om[j]).max() for i, j in pairs))
            rm, om = rm >= 0.5, om >= 0.5
        ious = []
        for i, j in pairs:
            union = np.logical_or(rm[i], om[j]).sum()
            ious.append(1.0 if union == 0 else np.logical_and(rm[i], om[j]).sum() / union)
        result.min_mask_iou = float(min(ious))
    return result


def compare_predictors(reference, other, images) -> List[DetectionMatch]:
    """Match ``other``'s detections to ``reference``'s on each (H, W, 3) BGR image.

    Both are called like ``Predictor``; returns one :class:`DetectionMatch` per image.
    """
    out = []
    for image in images:
        a, b = reference(image), other(image)
        out.append(match_detections(a.pred_boxes.tensor, a.scores, a.pred_classes, b.pred_boxes.tensor, b.scores,
                                    b.pred_classes, a.pred_masks if a.has("pred_masks") else None,
                                    b.pred_masks if b.has("pred_masks") else None))
    return out
