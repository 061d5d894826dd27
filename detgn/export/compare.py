"""Are two sets of detections the same? The equality an export must keep.

An export computes the eager model's float32 arithmetic in another order (other kernels,
other vector widths), so its numbers differ in the last bits: relative errors of ~1e-5 at the
end of a ResNet (measured in ``docs/history/export.md``). The rule below asks for what those
bits allow, and no more:

- **Matched detections.** Each detection needs a partner in the other set with the same class,
  a box within ``box_tol`` px in every coordinate and a score within ``SCORE_TOL`` (3e-5:
  twice the largest score error measured between the backends on R50 models, 1.4e-5, and
  below the 5e-5 to 8e-5 that a 1% change of one box-head weight moves several scores of a
  small model by: ``docs/history/export.md``). The box tolerance is ``BOX_TOL`` px plus ``BOX_TOL_REL`` of the box's longer side: a box is decoded
  as ``anchor or proposal + delta x its size``, so the error of a float32 network's deltas
  becomes pixels in proportion to the box (a 600 px box of a C4 model's 2048-channel head moves
  ~0.01 px). Detections are matched one to one, not by position: two backends order near-tied
  detections differently.
- **Decisions within precision.** Three steps of inference compare a computed value with a
  threshold: the score threshold, the top-k cut and per-class NMS (IoU against its threshold,
  and which of two overlapping boxes scores higher). Where the two sides of such a comparison
  are closer than the precision, either outcome is the model's, and the two backends may take
  different ones. A detection without a partner passes only when a decision of that kind
  explains it (:func:`explain_differences`): its score is within ``score_tol`` of the score
  threshold, or of the k-th score where the cap was reached; or an overlapping detection of
  its class (IoU above the NMS threshold) in the other set suppresses it there, that detection
  scoring at least as high within ``score_tol``, and being itself a difference so explained,
  the two of a near-tie, or at an IoU within precision of the NMS threshold. Anything else, a
  detection lost or added with no such reason, fails.
- **Masks** of matched pairs: IoU of the pasted bool masks at least ``MASK_IOU_MIN``, or, for
  small masks where one pixel weighs more, differences of at most ``MASK_CELL_FLIPS`` cells of
  the M x M grid the mask was predicted on (a cell is the box's width / M by its height / M
  pixels): a predicted probability within float precision of 0.5 may land on either side,
  and the paste's bilinear interpolation spreads it over the pixels of its neighbouring
  cells (2 x 2 cells). With Detectron's or torchvision's paste (an integer window), two boxes
  equal within precision whose windows truncate to different integers give masks a pixel apart:
  that too is a decision within precision. M x M probabilities agree to 1e-3, or as masks at 0.5.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional

import numpy as np

from detgn.layers.mask_ops import expanded_window

__all__ = ["DetectionMatch", "DecisionRules", "match_detections", "explain_differences", "rules_of_model",
           "BOX_TOL", "BOX_TOL_REL", "SCORE_TOL", "MASK_IOU_MIN", "MASK_CELL_FLIPS"]

BOX_TOL = 0.01
BOX_TOL_REL = 2e-5
SCORE_TOL = 3e-5
MASK_IOU_MIN = 0.99
MASK_CELL_FLIPS = 4


@dataclass(frozen=True)
class DecisionRules:
    """The thresholds inference applied: what a detection's presence depends on.

    Unset (None) rules explain nothing: without them every unmatched detection fails.
    """

    score_thresh: Optional[float] = None
    nms_thresh: Optional[float] = None
    topk: Optional[int] = None
    mask_size: int = 28  # M of the M x M masks the model predicts
    mask_paste: str = "grid_sample"  # the model's paste (detgn.layers.mask_ops.PASTE_METHODS)


def rules_of_model(model) -> DecisionRules:
    """The box predictor's test-time score threshold, NMS threshold and detections per image."""
    predictor = model.roi_heads.box_predictor
    topk = int(predictor.test_topk_per_image)
    mask_size = getattr(getattr(model.roi_heads, "mask_head", None), "mask_size", None)
    return DecisionRules(float(predictor.test_score_thresh), float(predictor.test_nms_thresh),
                         topk if topk >= 0 else None, int(mask_size or 28), getattr(model, "mask_paste", "grid_sample"))


@dataclass
class DetectionMatch:
    """The outcome of :func:`match_detections`."""

    count_ref: int
    count_other: int
    unmatched: List[int] = field(default_factory=list)  # reference detections without a partner, unexplained
    extra: List[int] = field(default_factory=list)  # the other set's detections without a partner, unexplained
    explained: Dict[str, int] = field(default_factory=dict)  # differences explained, by the decision
    max_box_err: float = 0.0
    max_box_err_rel: float = 0.0  # box error / allowed error, of the worst matched pair
    max_score_err: float = 0.0
    min_mask_iou: Optional[float] = None  # bool masks, or probability masks at 0.5
    max_mask_err: Optional[float] = None  # probability masks: largest difference
    bad_masks: List[int] = field(default_factory=list)  # reference detections whose mask differs

    @property
    def ok(self) -> bool:
        """Every detection matched, or its difference explained; masks within the limits."""
        return not self.unmatched and not self.extra and not self.bad_masks

    def summary(self) -> str:
        parts = [f"{self.count_other} vs {self.count_ref} detections"]
        if self.unmatched or self.extra:
            first = f"#{self.unmatched[0]}" if self.unmatched else f"#{self.extra[0]} of the other set"
            parts.append(f"{len(self.unmatched) + len(self.extra)} without a partner or a reason (class, box "
                         f"within {BOX_TOL} px + {BOX_TOL_REL:g} x its size, score within {SCORE_TOL}), first: {first}")
        if self.explained:
            parts.append("differences at decisions within precision: " +
                         ", ".join(f"{n} {what}" for what, n in sorted(self.explained.items())))
        parts.append(f"max box error {self.max_box_err:.3g} px ({self.max_box_err_rel:.2f} of the allowed), "
                     f"max score error {self.max_score_err:.3g}")
        if self.min_mask_iou is not None:
            parts.append(f"min mask IoU {self.min_mask_iou:.4f}")
        if self.max_mask_err is not None:
            parts.append(f"max mask probability error {self.max_mask_err:.3g}")
        if self.bad_masks:
            parts.append(f"{len(self.bad_masks)} masks differ by more than {MASK_CELL_FLIPS} cells of their grid and "
                         f"IoU {MASK_IOU_MIN}, first: #{self.bad_masks[0]}")
        return "; ".join(parts)


def _np(x):
    if x is None:
        return None
    return x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)


def box_tolerance(boxes: np.ndarray) -> np.ndarray:
    """(N,) allowed error in px of each (N, 4) box: ``BOX_TOL + BOX_TOL_REL x`` its longer side."""
    sides = np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]).clip(min=0)
    return BOX_TOL + BOX_TOL_REL * sides


def _iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    lt = np.maximum(box[:2], boxes[:, :2])
    rb = np.minimum(box[2:], boxes[:, 2:])
    inter = np.prod((rb - lt).clip(min=0), axis=1)
    area = lambda b: np.prod((b[..., 2:] - b[..., :2]).clip(min=0), axis=-1)  # noqa: E731
    union = area(box) + area(boxes) - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def explain_differences(sets, unmatched, rules: DecisionRules, score_tol: float = SCORE_TOL):
    """Which detections without a partner a decision within precision explains.

    Args:
        sets: two (boxes (N, 4), scores (N,), classes (N,)) tuples of arrays: the reference and the other.
        unmatched: two lists of the indices of each set's detections without a partner.
        rules: the thresholds the model applied.

    Returns:
        two dicts (one per set) mapping each explained index to its reason: "score threshold",
        "top-k cut" or "NMS".
    """
    reasons = [{}, {}]
    # A detection missing from one set may have been cut there: that set is at the cap and the
    # detection scores within precision of its lowest score.
    floor = [s[1].min() if rules.topk is not None and len(s[1]) >= rules.topk else None for s in sets]
    for side in (0, 1):
        scores, cut = sets[side][1], floor[1 - side]
        for i in unmatched[side]:
            if rules.score_thresh is not None and scores[i] <= rules.score_thresh + score_tol:
                reasons[side][i] = "score threshold"
            elif cut is not None and scores[i] <= cut + score_tol:
                reasons[side][i] = "top-k cut"
    if rules.nms_thresh is None:
        return reasons
    pending = [set(u) - set(r) for u, r in zip(unmatched, reasons)]
    differing = [set(u) for u in unmatched]
    changed = True
    while changed:  # an explanation may explain others (suppression chains): to a fixed point
        changed = False
        for side in (0, 1):
            (boxes, scores, classes), (oboxes, oscores, oclasses) = sets[side], sets[1 - side]
            for i in sorted(pending[side]):
                tol = box_tolerance(boxes[i: i + 1])[0]
                iou_tol = 4 * tol / max(float(np.min(boxes[i, 2:] - boxes[i, :2])), 1.0)
                iou = _iou(boxes[i], oboxes)
                near = (oclasses == classes[i]) & (iou > rules.nms_thresh - iou_tol) & (oscores >= scores[i] - score_tol)
                for j in np.flatnonzero(near):
                    tie = j in differing[1 - side] and abs(float(oscores[j]) - float(scores[i])) <= score_tol
                    at_threshold = abs(float(iou[j]) - rules.nms_thresh) <= iou_tol
                    if tie or at_threshold or j in reasons[1 - side]:
                        reasons[side][i] = "NMS"
                        pending[side].discard(i)
                        changed = True
                        break
    return reasons


def _mask_differs(ref: np.ndarray, other: np.ndarray, box: np.ndarray, mask_size: int) -> bool:
    """Bool masks of a box: differences beyond a float error's reach (see the module docstring)."""
    flips = int((ref != other).sum())
    if flips == 0:
        return False
    union = np.logical_or(ref, other).sum()
    if np.logical_and(ref, other).sum() >= MASK_IOU_MIN * union:
        return False
    cell = max(float(box[2] - box[0]), 1.0) * max(float(box[3] - box[1]), 1.0) / mask_size ** 2
    return flips > MASK_CELL_FLIPS * max(cell, 1.0)


def match_detections(ref_boxes, ref_scores, ref_classes, boxes, scores, classes, ref_masks=None, masks=None,
                     *, rules: Optional[DecisionRules] = None, score_tol: float = SCORE_TOL) -> DetectionMatch:
    """Match the detections (``boxes`` (N, 4), ``scores`` (N,), ``classes`` (N,), optional ``masks``
    (N, H, W) bool or (N, M, M) float) of another backend to the reference's.

    Args:
        rules: the model's score/NMS thresholds and detections per image; detections without a
            partner are explained by them (see the module docstring). None: none is explained.

    Returns:
        a :class:`DetectionMatch`; errors are over the matched pairs.
    """
    rb, rs, rc = _np(ref_boxes).reshape(-1, 4).astype(np.float64), _np(ref_scores).reshape(-1), _np(ref_classes)
    ob, os_, oc = _np(boxes).reshape(-1, 4).astype(np.float64), _np(scores).reshape(-1), _np(classes)
    rs, os_ = rs.astype(np.float64), os_.astype(np.float64)
    rc, oc = rc.reshape(-1), oc.reshape(-1)
    result = DetectionMatch(count_ref=len(rb), count_other=len(ob))
    used = np.zeros(len(ob), dtype=bool)
    pairs, unmatched = [], []
    tols = box_tolerance(rb)
    for i in range(len(rb)):
        box_err = np.abs(ob - rb[i]).max(axis=1) if len(ob) else np.zeros(0)
        score_err = np.abs(os_ - rs[i])
        ok = (~used) & (oc == rc[i]) & (box_err <= tols[i]) & (score_err <= score_tol)
        if not ok.any():
            unmatched.append(i)
            continue
        j = int(np.flatnonzero(ok)[np.argmin(box_err[ok])])
        used[j] = True
        pairs.append((i, j))
        result.max_box_err = max(result.max_box_err, float(box_err[j]))
        result.max_box_err_rel = max(result.max_box_err_rel, float(box_err[j] / tols[i]))
        result.max_score_err = max(result.max_score_err, float(score_err[j]))
    extra = [int(j) for j in np.flatnonzero(~used)]
    if unmatched or extra:
        reasons = explain_differences(((rb, rs, rc), (ob, os_, oc)), (unmatched, extra), rules or DecisionRules(),
                                      score_tol)
        result.unmatched = [i for i in unmatched if i not in reasons[0]]
        result.extra = [j for j in extra if j not in reasons[1]]
        for why in list(reasons[0].values()) + list(reasons[1].values()):
            result.explained[why] = result.explained.get(why, 0) + 1
    rm, om = _np(ref_masks), _np(masks)
    if rm is not None and om is not None and pairs:
        probabilities = rm.dtype != bool
        if probabilities:  # M x M probabilities: their largest difference, and IoU of the masks at 0.5
            result.max_mask_err = float(max(np.abs(rm[i].astype(np.float64) - om[j]).max() for i, j in pairs))
            rm, om = rm >= 0.5, om >= 0.5
        ious = []
        for i, j in pairs:
            union = np.logical_or(rm[i], om[j]).sum()
            ious.append(1.0 if union == 0 else np.logical_and(rm[i], om[j]).sum() / union)
        result.min_mask_iou = float(min(ious))
        if probabilities:
            bad = [] if result.max_mask_err <= 1e-3 else [i for i, j in pairs if _mask_differs(
                rm[i], om[j], np.array([0, 0, rm.shape[-1], rm.shape[-2]]), rm.shape[-1])]
        else:
            rules = rules or DecisionRules()
            bad = []
            for i, j in pairs:
                if not _mask_differs(rm[i], om[j], rb[i], rules.mask_size):
                    continue
                # Detectron's and torchvision's pastes truncate the widened box to integers: two
                # boxes equal within precision may fall on either side of an integer, and their
                # masks are then pasted into windows a pixel apart.
                window = (rules.mask_size, rules.mask_size)
                if rules.mask_paste != "grid_sample" and expanded_window(rb[i], window) != expanded_window(ob[j], window):
                    result.explained["paste window"] = result.explained.get("paste window", 0) + 1
                else:
                    bad.append(i)
        result.bad_masks = bad
    return result


def compare_predictors(reference, other, images, rules: Optional[DecisionRules] = None) -> List[DetectionMatch]:
    """Match ``other``'s detections to ``reference``'s on each (H, W, 3) BGR image.

    Both are called like ``Predictor``; ``rules`` default to the reference model's
    (:func:`rules_of_model`). Returns one :class:`DetectionMatch` per image.
    """
    if rules is None and hasattr(reference, "model"):
        rules = rules_of_model(reference.model)
    out = []
    for image in images:
        a, b = reference(image), other(image)
        out.append(match_detections(a.pred_boxes.tensor, a.scores, a.pred_classes, b.pred_boxes.tensor, b.scores,
                                    b.pred_classes, a.pred_masks if a.has("pred_masks") else None,
                                    b.pred_masks if b.has("pred_masks") else None, rules=rules))
    return out
