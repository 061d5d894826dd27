"""Operators the exported graph needs beyond ATen and ``torchvision::``: per-class NMS.

``torchvision.ops.batched_nms`` picks its algorithm from the number of boxes (a Python
branch on a data-dependent size), which ``torch.export`` cannot trace. ``detgn::batched_nms``
wraps detgn's own :func:`detgn.layers.batched_nms` as one opaque operator:

- in torch (eager or a ``torch.export`` program) it runs that very function, so an exported
  program keeps exactly the detections of the eager model;
- in ONNX it becomes one ``NonMaxSuppression`` over a (1, C, N) score matrix (each box's
  score in its own class row, -inf elsewhere), i.e. exact per-class NMS, followed by a sort
  by decreasing score, as ``batched_nms`` returns its indices.

The class count C is an attribute (the RPN's levels, the box head's classes), so the ONNX
graph needs no data-dependent maximum.
"""
from __future__ import annotations

import torch

from detgn.layers import batched_nms as _batched_nms

__all__ = ["batched_nms_op", "onnx_translation_table"]


@torch.library.custom_op("detgn::batched_nms", mutates_args=())
def batched_nms_op(
    boxes: torch.Tensor, scores: torch.Tensor, idxs: torch.Tensor, iou_threshold: float, num_classes: int
) -> torch.Tensor:
    """Indices (int64, by decreasing score) kept by NMS done separately per ``idxs`` value.

    Args:
        boxes: (N, 4) x1y1x2y2 float32. scores: (N,). idxs: (N,) int64 in [0, num_classes).
        iou_threshold: a box is suppressed by a higher-scoring one of its class with IoU > this.
        num_classes: C, an upper bound of ``idxs`` (used by the ONNX form only).
    """
    del num_classes
    return _batched_nms(boxes, scores, idxs, iou_threshold).clone()


@batched_nms_op.register_fake
def _(boxes, scores, idxs, iou_threshold, num_classes):
    count = torch.library.get_ctx().new_dynamic_size()
    return boxes.new_empty((count,), dtype=torch.int64)


def _onnx_batched_nms(boxes, scores, idxs, iou_threshold: float, num_classes: int):
    """ONNX form of ``detgn::batched_nms`` (traced by onnxscript when torch.onnx translates)."""
    from onnxscript import opset18 as op
    from onnxscript.onnx_types import INT64

    classes = op.Range(op.Constant(value_int=0), op.Constant(value_int=num_classes), op.Constant(value_int=1))
    own_class = op.Equal(op.Unsqueeze(idxs, [0]), op.Unsqueeze(classes, [1]))  # (C, N)
    neg_inf = op.CastLike(op.Constant(value_float=float("-inf")), scores)
    per_class = op.Where(own_class, op.Unsqueeze(scores, [0]), neg_inf)
    selected = op.NonMaxSuppression(
        op.Unsqueeze(boxes, [0]),
        op.Unsqueeze(per_class, [0]),
        op.Constant(value_ints=[2**62]),
        op.Constant(value_floats=[iou_threshold]),
        op.Constant(value_floats=[-3.4028234663852886e38]),  # keeps every finite score, drops -inf
    )
    keep = op.Reshape(op.Slice(selected, [2], [3], [1]), [-1])
    kept_scores = op.Gather(scores, keep)
    _, order = op.TopK(kept_scores, op.Shape(kept_scores), axis=0, largest=1, sorted=1)
    return op.Cast(op.Gather(keep, order), to=INT64.dtype)


def onnx_translation_table() -> dict:
    """``custom_translation_table`` for ``torch.onnx.export``."""
    return {torch.ops.detgn.batched_nms.default: _onnx_batched_nms}
