"""Box coding: the (dx, dy, dw, dh) parametrisation of R-CNN, and its regression loss.

A target box is coded relative to a source box (an anchor or a proposal) as::

    dx = wx * (tx - sx) / sw        dw = ww * log(tw / sw)
    dy = wy * (ty - sy) / sh        dh = wh * log(th / sh)

with centres (x, y), widths ``w = x2 - x1`` (no +1) and per-coordinate weights
``(wx, wy, ww, wh)``: (1, 1, 1, 1) for the RPN, (10, 10, 5, 5) for the RoI heads.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F

# Decoded dw, dh are clamped to this, so exp() cannot produce a box wider than
# 1000/16 times its source (the Detectron value), whatever the network outputs.
DEFAULT_SCALE_CLAMP = math.log(1000.0 / 16)


class Box2BoxTransform:
    """Encode target boxes as deltas from source boxes, and decode deltas back.

    Args:
        weights: (wx, wy, ww, wh) multiplied into the deltas.
        scale_clamp: upper bound on the decoded dw, dh before exp().
    """

    def __init__(self, weights: Sequence[float], scale_clamp: float = DEFAULT_SCALE_CLAMP):
        if len(weights) != 4:
            raise ValueError(f"Box2BoxTransform needs 4 weights (wx, wy, ww, wh), got {list(weights)}")
        self.weights = tuple(float(w) for w in weights)
        self.scale_clamp = float(scale_clamp)

    def __repr__(self) -> str:
        return f"Box2BoxTransform(weights={self.weights}, scale_clamp={self.scale_clamp:.4f})"

    def get_deltas(self, src_boxes: torch.Tensor, target_boxes: torch.Tensor) -> torch.Tensor:
        """Deltas that turn each source box into its target box.

        Args:
            src_boxes: (N, 4) x1y1x2y2 boxes with positive width and height.
            target_boxes: (N, 4) x1y1x2y2 boxes.
        Returns:
            (N, 4) deltas (dx, dy, dw, dh).
        """
        assert src_boxes.shape == target_boxes.shape, (src_boxes.shape, target_boxes.shape)
        src_boxes = src_boxes.float()
        target_boxes = target_boxes.float()
        sw = src_boxes[:, 2] - src_boxes[:, 0]
        sh = src_boxes[:, 3] - src_boxes[:, 1]
        sx = src_boxes[:, 0] + 0.5 * sw
        sy = src_boxes[:, 1] + 0.5 * sh
        tw = target_boxes[:, 2] - target_boxes[:, 0]
        th = target_boxes[:, 3] - target_boxes[:, 1]
        tx = target_boxes[:, 0] + 0.5 * tw
        ty = target_boxes[:, 1] + 0.5 * th
        wx, wy, ww, wh = self.weights
        deltas = torch.stack(
            (wx * (tx - sx) / sw, wy * (ty - sy) / sh, ww * torch.log(tw / sw), wh * torch.log(th / sh)),
            dim=1,
        )
        return deltas

    def apply_deltas(self, deltas: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        """Decode deltas on their source boxes.

        Args:
            deltas: (N, 4 * k) deltas, k boxes per source (k = num classes for
                class-specific regression, 1 otherwise).
            boxes: (N, 4) source boxes.
        Returns:
            (N, 4 * k) decoded x1y1x2y2 boxes, same layout as ``deltas``.
        """
        deltas = deltas.float()
        boxes = boxes.to(deltas.dtype)
        widths = (boxes[:, 2] - boxes[:, 0])[:, None]
        heights = (boxes[:, 3] - boxes[:, 1])[:, None]
        ctr_x = boxes[:, 0][:, None] + 0.5 * widths
        ctr_y = boxes[:, 1][:, None] + 0.5 * heights
        wx, wy, ww, wh = self.weights
        dx = deltas[:, 0::4] / wx
        dy = deltas[:, 1::4] / wy
        dw = (deltas[:, 2::4] / ww).clamp(max=self.scale_clamp)
        dh = (deltas[:, 3::4] / wh).clamp(max=self.scale_clamp)
        pred_ctr_x = dx * widths + ctr_x
        pred_ctr_y = dy * heights + ctr_y
        pred_w = torch.exp(dw) * widths
        pred_h = torch.exp(dh) * heights
        out = torch.stack(
            (
                pred_ctr_x - 0.5 * pred_w,
                pred_ctr_y - 0.5 * pred_h,
                pred_ctr_x + 0.5 * pred_w,
                pred_ctr_y + 0.5 * pred_h,
            ),
            dim=2,
        )
        return out.reshape(deltas.shape)


def smooth_l1_loss(input: torch.Tensor, target: torch.Tensor, beta: float) -> torch.Tensor:
    """Element-wise smooth-L1 summed over all elements; ``beta == 0`` is plain L1.

    ``beta < 1e-5`` is treated as L1 because the quadratic branch divides by beta.
    """
    if beta < 1e-5:
        return (input - target).abs().sum()
    return F.smooth_l1_loss(input, target, beta=beta, reduction="sum")


def masked_smooth_l1_loss(input: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, beta: float) -> torch.Tensor:
    """:func:`smooth_l1_loss` of the rows ``(N, D)`` where ``mask`` ``(N,)`` is True.

    The same sum as indexing the rows first, without the boolean index, which needs a host
    sync on CUDA. Rows left out contribute exactly 0 (selected by ``torch.where``, so a
    non-finite value there cannot leak into the sum).
    """
    if beta < 1e-5:
        elem = (input - target).abs()
    else:
        elem = F.smooth_l1_loss(input, target, beta=beta, reduction="none")
    return torch.where(mask[:, None], elem, elem.new_zeros(())).sum()

