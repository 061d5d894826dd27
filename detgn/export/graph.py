"""The detector as one exportable graph: a resized image in, final detections out.

:class:`ExportableDetector` runs a trained :class:`~detgn.modeling.meta_arch.GeneralizedRCNN`
(its own sub-modules and weights, not copies) on one image with tensor operations only: no
``Instances``, no Python branch on a data-dependent size, no host loop. It computes what
``GeneralizedRCNN.inference`` + ``detector_postprocess`` compute, step for step, so the
exported program gives the eager ``Predictor``'s detections:

    image (3, h, w) uint8, the mapper's resized image in INPUT.FORMAT order
    original_size (2,) int64, (H, W) of the image before the resize
      -> normalise, pad to size_divisibility, backbone
      -> RPN: per level top-k, decode, clip, drop small, per-level NMS, top-k
      -> box head on the proposals: softmax, decode, clip, score threshold, per-class NMS, top-k
      -> mask head on the detections: the predicted class's M x M probabilities
      -> boxes scaled to (H, W), clipped, empty ones dropped
    boxes (D, 4) float32 in original pixels, scores (D,), classes (D,) int64,
    mask_probs (D, M, M) float32 (when the model has masks)

The resize (OpenCV, in the runtime) and the paste of the M x M masks into the image (the
model's own paste method, in the runtime) stay outside the graph: both are then the very code
``Predictor`` runs, and the graph's output stays small (an image-sized mask per detection
would be ~100 x H x W floats).
"""
from __future__ import annotations

from typing import Dict, List, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from detgn.modeling.roi_heads.fast_rcnn import effective_score_thresh

from .ops import batched_nms_op

__all__ = ["ExportableDetector", "OUTPUT_NAMES"]

OUTPUT_NAMES = ("boxes", "scores", "classes", "mask_probs")


def _clip(boxes: torch.Tensor, height, width) -> torch.Tensor:
    """(N, 4) boxes clipped to [0, width] x [0, height], as ``Boxes.clip``."""
    x1, y1, x2, y2 = boxes.clamp(min=0).unbind(dim=1)
    return torch.stack((x1.clamp(max=width), y1.clamp(max=height), x2.clamp(max=width), y2.clamp(max=height)), dim=1)


def _nonempty(boxes: torch.Tensor, threshold: float = 0.0) -> torch.Tensor:
    return ((boxes[:, 2] - boxes[:, 0]) > threshold) & ((boxes[:, 3] - boxes[:, 1]) > threshold)


def _rois(boxes: torch.Tensor) -> torch.Tensor:
    """(max(R, 1), 5) RoI rows of one image's (R, 4) boxes.

    With no box a dummy RoI is pooled instead: some runtimes cannot reshape a 0-RoI batch
    inside GN (onnxruntime's Reshape infers no -1 from a size of 0). The heads are per-RoI,
    so the caller drops the dummy's output (``[:R]``) and the other RoIs never see it.
    """
    n = boxes.shape[0]
    boxes = torch.cat([boxes, boxes.new_tensor([[0.0, 0.0, 1.0, 1.0]])])[: torch.sym_max(n, 1)]
    return torch.cat([boxes.new_zeros((boxes.shape[0], 1)), boxes], dim=1)


class ExportableDetector(nn.Module):
    """Single-image, tensor-only inference of a GeneralizedRCNN (see the module docstring).

    Args:
        model: the detector; it should be in eval mode. Its sub-modules are shared, not copied.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.mask_on = bool(model.mask_on)
        self.is_c4 = not hasattr(model.roi_heads, "box_pooler")

    # -- stages -------------------------------------------------------------------------

    def _normalize_and_pad(self, image: torch.Tensor) -> torch.Tensor:
        m = self.model
        x = (image.float() - m.pixel_mean) / m.pixel_std
        d = m.size_divisibility
        h, w = x.shape[-2], x.shape[-1]
        x = F.pad(x, (0, (w + d - 1) // d * d - w, 0, (h + d - 1) // d * d - h), value=0.0)
        return x[None]

    def _proposals(self, features: Dict[str, torch.Tensor], height, width, padded) -> torch.Tensor:
        """(P, 4) proposals of the image, by decreasing objectness (``RPN.predict_proposals``)."""
        rpn = self.model.proposal_generator
        feats = [features[f] for f in rpn.in_features]
        anchors = rpn.anchor_generator(feats, padded)
        logits, deltas = rpn.rpn_head(feats)
        pre_topk, post_topk = rpn.pre_nms_topk[False], rpn.post_nms_topk[False]
        boxes_l, logits_l, levels = [], [], []
        for level, (anchors_l, logit, delta) in enumerate(zip(anchors, logits, deltas)):
            logit = logit.permute(0, 2, 3, 1).reshape(-1)
            delta = delta.view(1, -1, 4, delta.shape[-2], delta.shape[-1]).permute(0, 3, 4, 1, 2).reshape(-1, 4)
            k = torch.sym_min(pre_topk, logit.shape[0])
            top, idx = logit.topk(k)
            # Decoding after the top-k gives the same numbers as decoding every anchor first.
            boxes_l.append(rpn.box2box_transform.apply_deltas(delta[idx], anchors_l.tensor[idx]))
            logits_l.append(top)
            levels.append(torch.full_like(idx, level))
        boxes, logits, levels = torch.cat(boxes_l), torch.cat(logits_l), torch.cat(levels)
        finite = torch.isfinite(boxes).all(dim=1) & torch.isfinite(logits)
        boxes, logits, levels = boxes[finite], logits[finite], levels[finite]
        boxes = _clip(boxes, height, width)
        keep = _nonempty(boxes, rpn.min_box_size)
        boxes, logits, levels = boxes[keep], logits[keep], levels[keep]
        keep = batched_nms_op(boxes, logits, levels, float(rpn.nms_thresh), len(anchors))[:post_topk]
        return boxes[keep]

    def _pooled_for_boxes(self, features: Dict[str, torch.Tensor], boxes: torch.Tensor) -> torch.Tensor:
        """(max(R, 1), C, P, P) RoI features the box branch pools (see :func:`_rois`)."""
        heads = self.model.roi_heads
        if self.is_c4:
            return heads.pooler.pool([features[f] for f in heads.in_features], _rois(boxes))
        return heads.box_pooler.pool([features[f] for f in heads.box_in_features], _rois(boxes))

    def _box_head(self, pooled: torch.Tensor) -> torch.Tensor:
        """The box branch's features of pooled RoIs: Res5 then a mean (C4), or the box head."""
        heads = self.model.roi_heads
        return heads.res5(pooled).mean(dim=(2, 3)) if self.is_c4 else heads.box_head(pooled)

    def _box_features(self, features: Dict[str, torch.Tensor], boxes: torch.Tensor) -> torch.Tensor:
        return self._box_head(self._pooled_for_boxes(features, boxes))[: boxes.shape[0]]

    def _detections(self, features, proposals: torch.Tensor, height, width):
        """``FastRCNNOutputLayers.inference`` of one image: (D, 4) boxes, (D,) scores, (D,) classes."""
        predictor = self.model.roi_heads.box_predictor
        logits, deltas = predictor(self._box_features(features, proposals))
        boxes = predictor.box2box_transform.apply_deltas(deltas, proposals)
        scores = F.softmax(logits, dim=-1)
        valid = torch.isfinite(boxes).all(dim=1) & torch.isfinite(scores).all(dim=1)
        boxes, scores = boxes[valid], scores[valid][:, :-1]
        num_classes = predictor.num_classes
        per_roi = boxes.shape[1] // 4
        boxes = _clip(boxes.reshape(-1, 4), height, width).view(-1, per_roi, 4)
        if per_roi == 1 and num_classes > 1:  # class-agnostic: one box for every class
            boxes = boxes.expand(-1, num_classes, 4)
        keep_mask = scores > effective_score_thresh(predictor.test_score_thresh)
        nz = keep_mask.nonzero()
        boxes, scores, classes = boxes[nz[:, 0], nz[:, 1]], scores[keep_mask], nz[:, 1]
        keep = batched_nms_op(boxes, scores, classes, float(predictor.test_nms_thresh), num_classes)
        if predictor.test_topk_per_image >= 0:
            keep = keep[: predictor.test_topk_per_image]
        return boxes[keep], scores[keep], classes[keep]

    def _mask_probs(self, features, boxes: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        """(D, M, M) probabilities of each detection's class (``mask_rcnn_inference``)."""
        heads = self.model.roi_heads
        if self.is_c4:
            feats = [features[f] for f in heads.in_features]
            x = heads.res5(heads.pooler.pool(feats, _rois(boxes)))
        else:
            feats = [features[f] for f in heads.mask_in_features]
            x = heads.mask_pooler.pool(feats, _rois(boxes))
        logits = heads.mask_head(x)[: boxes.shape[0]]
        if logits.shape[1] == 1:
            return logits[:, 0].sigmoid()
        return logits[torch.arange(logits.shape[0]), classes].sigmoid()

    # -- the graph ----------------------------------------------------------------------

    def forward(self, image: torch.Tensor, original_size: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        """See the module docstring: (boxes, scores, classes[, mask_probs])."""
        height, width = image.shape[-2], image.shape[-1]
        x = self._normalize_and_pad(image)
        features = self.model.backbone(x)
        proposals = self._proposals(features, height, width, x.shape[-2:])
        boxes, scores, classes = self._detections(features, proposals, height, width)
        outputs: List[torch.Tensor] = []
        if self.mask_on:
            mask_probs = self._mask_probs(features, boxes, classes)
        # detector_postprocess: to the original image's pixels, clip, drop empty boxes.
        # The scale is rounded from float64 to the boxes' dtype, as detector_postprocess's is.
        size = original_size.to(torch.float64)
        scale_y, scale_x = (size[0] / height).to(boxes.dtype), (size[1] / width).to(boxes.dtype)
        boxes = boxes * torch.stack([scale_x, scale_y, scale_x, scale_y])
        boxes = _clip(boxes, original_size[0], original_size[1])
        keep = _nonempty(boxes)
        outputs = [boxes[keep], scores[keep], classes[keep]]
        if self.mask_on:
            outputs.append(mask_probs[keep])
        return tuple(outputs)
