"""The second stage's box predictor: class scores and per-class box deltas of each RoI.

Classes: ``cls_score`` has K + 1 outputs, foreground classes 0..K-1 and the
background LAST (index K); ``bbox_pred`` has 4K outputs, a box per foreground class
(or 4 when class-agnostic). Holds the pure loss and inference functions and the
``FastRCNNOutputLayers`` module.
"""
from __future__ import annotations

from typing import Dict, List, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

from detgn.layers import at_least_fp32, batched_nms
from detgn.layers.shape_spec import ShapeSpec
from detgn.modeling.box_regression import Box2BoxTransform, masked_smooth_l1_loss
from detgn.structures import Boxes, Instances
from detgn.utils.events import get_event_storage


def fast_rcnn_losses(
    pred_class_logits: torch.Tensor,
    pred_proposal_deltas: torch.Tensor,
    gt_classes: torch.Tensor,
    proposal_boxes: torch.Tensor,
    gt_boxes: torch.Tensor,
    box2box_transform: Box2BoxTransform,
    smooth_l1_beta: float = 0.0,
) -> Dict[str, torch.Tensor]:
    """Classification and box-regression losses of the sampled RoIs of a batch.

    Args:
        pred_class_logits: (R, K + 1) logits, background last.
        pred_proposal_deltas: (R, 4K) class-specific or (R, 4) class-agnostic deltas.
        gt_classes: (R,) int64 in [0, K]; K is background.
        proposal_boxes: (R, 4) RoI boxes.
        gt_boxes: (R, 4) matched ground-truth boxes (ignored for background RoIs).
        box2box_transform: the coding of the regression targets.
        smooth_l1_beta: 0 for L1.
    Returns:
        ``loss_cls``: cross-entropy averaged over the R RoIs;
        ``loss_box_reg``: (smooth-)L1 summed over foreground RoIs' deltas of their
        ground-truth class, divided by R (so background RoIs count in the mean).
        Both are 0, still connected to the predictions, when R == 0 or nothing is foreground.
    """
    num_rois = pred_class_logits.shape[0]
    num_classes = pred_class_logits.shape[1] - 1
    if num_rois == 0:
        zero = pred_class_logits.sum() * 0.0 + pred_proposal_deltas.sum() * 0.0
        return {"loss_cls": zero, "loss_box_reg": zero.clone()}
    loss_cls = F.cross_entropy(pred_class_logits, gt_classes, reduction="mean")

    # A foreground mask, not its indices: nonzero() would wait for the GPU (a host sync).
    # Background RoIs take their own box as target (deltas 0) and weigh 0 in the sum.
    fg = (gt_classes >= 0) & (gt_classes < num_classes)
    box_dim = 4
    if pred_proposal_deltas.shape[1] == box_dim:  # class-agnostic
        fg_deltas = pred_proposal_deltas
    else:
        rows = torch.arange(num_rois, device=gt_classes.device)
        fg_deltas = pred_proposal_deltas.view(num_rois, -1, box_dim)[rows, gt_classes.clamp(0, num_classes - 1)]
    gt_deltas = box2box_transform.get_deltas(proposal_boxes, torch.where(fg[:, None], gt_boxes, proposal_boxes))
    loss_box_reg = masked_smooth_l1_loss(fg_deltas, gt_deltas, fg, smooth_l1_beta) / num_rois
    return {"loss_cls": loss_cls, "loss_box_reg": loss_box_reg}


def fast_rcnn_classification_stats(pred_class_logits: torch.Tensor, gt_classes: torch.Tensor) -> Dict[str, torch.Tensor]:
    """How well the sampled RoIs of a batch are classified (training statistics, no loss).

    Args:
        pred_class_logits: (R, K + 1) logits, background last.
        gt_classes: (R,) int64 in [0, K]; K is background.
    Returns:
        0-dim float tensors (computed on the device, no host synchronisation):
        ``fast_rcnn/cls_accuracy`` (all RoIs), ``fast_rcnn/fg_cls_accuracy`` (foreground
        RoIs given their class) and ``fast_rcnn/false_negative`` (foreground RoIs called
        background); the last two are NaN when no RoI is foreground, and all three
        when R == 0.
    """
    bg = pred_class_logits.shape[1] - 1
    pred = pred_class_logits.detach().argmax(dim=1)
    fg = (gt_classes >= 0) & (gt_classes < bg)
    num_fg = fg.sum().float()
    return {
        "fast_rcnn/cls_accuracy": (pred == gt_classes).float().mean(),
        "fast_rcnn/fg_cls_accuracy": ((pred == gt_classes) & fg).sum().float() / num_fg,
        "fast_rcnn/false_negative": ((pred == bg) & fg).sum().float() / num_fg,
    }


# The smallest normal float32. A softmax probability below it is a subnormal number, which
# some kernels compute and others flush to zero (onnxruntime's AVX2 softmax does, its AVX-512
# one does not): with SCORE_THRESH_TEST 0 such detections would come and go with the CPU.
SMALLEST_SCORE = float(torch.finfo(torch.float32).tiny)


def effective_score_thresh(score_thresh: float) -> float:
    """The threshold scores must exceed: ``score_thresh``, and at least :data:`SMALLEST_SCORE`."""
    return max(float(score_thresh), SMALLEST_SCORE)


def fast_rcnn_inference_single_image(
    boxes: torch.Tensor,
    scores: torch.Tensor,
    image_shape: Tuple[int, int],
    score_thresh: float,
    nms_thresh: float,
    topk_per_image: int,
) -> Tuple[Instances, torch.Tensor]:
    """Detections of one image.

    Args:
        boxes: (R, 4K) or (R, 4) decoded boxes.
        scores: (R, K + 1) class probabilities, background last.
    Returns:
        Instances with ``pred_boxes``, ``scores``, ``pred_classes``, and the (D,)
        indices of the RoIs each detection came from.
    """
    # Non-finite RoIs are masked out with the low scores: one nonzero() below is this
    # function's only host sync on CUDA before the NMS.
    valid = torch.isfinite(boxes).all(dim=1) & torch.isfinite(scores).all(dim=1)
    scores = scores[:, :-1]
    num_rois, num_classes = scores.shape
    boxes_per_roi = boxes.shape[1] // 4
    clipped = Boxes(boxes.reshape(-1, 4))
    clipped.clip(image_shape)
    boxes = clipped.tensor.view(num_rois, boxes_per_roi, 4)
    if boxes_per_roi == 1 and num_classes > 1:  # class-agnostic: one box for every class
        boxes = boxes.expand(num_rois, num_classes, 4)

    keep_mask = (scores > effective_score_thresh(score_thresh)) & valid[:, None]
    nz = keep_mask.nonzero()  # (D, 2): RoI index, class
    boxes = boxes[nz[:, 0], nz[:, 1]]
    scores = scores[nz[:, 0], nz[:, 1]]
    keep = batched_nms(boxes, scores, nz[:, 1], nms_thresh)
    if topk_per_image >= 0:
        keep = keep[:topk_per_image]
    boxes, scores, nz = boxes[keep], scores[keep], nz[keep]
    result = Instances(image_shape, pred_boxes=Boxes(boxes), scores=scores, pred_classes=nz[:, 1])
    return result, nz[:, 0]


def fast_rcnn_inference(
    boxes: Sequence[torch.Tensor],
    scores: Sequence[torch.Tensor],
    image_shapes: Sequence[Tuple[int, int]],
    score_thresh: float,
    nms_thresh: float,
    topk_per_image: int,
) -> Tuple[List[Instances], List[torch.Tensor]]:
    """Per image: drop low scores, per-class NMS (``batched_nms``), keep the top-k.

    Args:
        boxes: per image (R_i, 4K) decoded boxes (or (R_i, 4) class-agnostic).
        scores: per image (R_i, K + 1) probabilities, background last.
        image_shapes: per image (h, w) the boxes are clipped to.
        score_thresh: detections must score strictly above this (and above SMALLEST_SCORE).
        nms_thresh: per-class NMS IoU.
        topk_per_image: detections kept per image (< 0 keeps all).
    Returns:
        per image Instances (``pred_boxes``, ``scores``, ``pred_classes``), and per
        image the indices of the RoIs the detections came from.
    """
    outs = [
        fast_rcnn_inference_single_image(b, s, shape, score_thresh, nms_thresh, topk_per_image)
        for b, s, shape in zip(boxes, scores, image_shapes)
    ]
    return [o[0] for o in outs], [o[1] for o in outs]


class FastRCNNOutputLayers(nn.Module):
    """Two linear layers on the box head's feature: ``cls_score`` and ``bbox_pred``.

    Args:
        input_shape: the box head's output (channels x height x width are flattened).
        num_classes: K foreground classes.
        box2box_transform: coding of ``bbox_pred`` (weights 10, 10, 5, 5).
        cls_agnostic_bbox_reg: one box per RoI instead of one per class.
        smooth_l1_beta: 0 for L1.
        test_score_thresh, test_nms_thresh, test_topk_per_image: inference settings.
    """

    def __init__(
        self,
        input_shape: Union[ShapeSpec, int],
        *,
        num_classes: int,
        box2box_transform: Box2BoxTransform,
        cls_agnostic_bbox_reg: bool = False,
        smooth_l1_beta: float = 0.0,
        test_score_thresh: float = 0.05,
        test_nms_thresh: float = 0.5,
        test_topk_per_image: int = 100,
    ):
        super().__init__()
        if isinstance(input_shape, int):
            input_shape = ShapeSpec(channels=input_shape)
        input_size = input_shape.channels * (input_shape.height or 1) * (input_shape.width or 1)
        self.num_classes = num_classes
        self.cls_score = nn.Linear(input_size, num_classes + 1)
        self.bbox_pred = nn.Linear(input_size, 4 * (1 if cls_agnostic_bbox_reg else num_classes))
        nn.init.normal_(self.cls_score.weight, std=0.01)
        nn.init.normal_(self.bbox_pred.weight, std=0.001)
        nn.init.constant_(self.cls_score.bias, 0.0)
        nn.init.constant_(self.bbox_pred.bias, 0.0)
        self.box2box_transform = box2box_transform
        self.smooth_l1_beta = smooth_l1_beta
        self.test_score_thresh = test_score_thresh
        self.test_nms_thresh = test_nms_thresh
        self.test_topk_per_image = test_topk_per_image

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """(R, ...) features -> (R, K + 1) class logits and (R, 4K) box deltas."""
        x = x.flatten(1)
        return self.cls_score(x), self.bbox_pred(x)

    def losses(self, predictions, proposals: List[Instances]) -> Dict[str, torch.Tensor]:
        """Losses against the ``gt_classes`` / ``gt_boxes`` the RoI sampler set on ``proposals``;
        during training also records :func:`fast_rcnn_classification_stats` as events."""
        logits, deltas = predictions
        if len(proposals):
            gt_classes = torch.cat([p.gt_classes for p in proposals])
            proposal_boxes = torch.cat([p.proposal_boxes.tensor for p in proposals])
            gt_boxes = torch.cat([p.gt_boxes.tensor for p in proposals])
        else:
            gt_classes = logits.new_zeros((0,), dtype=torch.int64)
            proposal_boxes = gt_boxes = logits.new_zeros((0, 4))
        storage = get_event_storage()
        if storage is not None:
            storage.put_scalars(**fast_rcnn_classification_stats(logits, gt_classes))
        return fast_rcnn_losses(
            logits, deltas, gt_classes, proposal_boxes, gt_boxes, self.box2box_transform, self.smooth_l1_beta
        )

    def predict_boxes(self, predictions, proposals: List[Instances]) -> List[torch.Tensor]:
        """Per image (R_i, 4K) decoded boxes."""
        _, deltas = predictions
        counts = [len(p) for p in proposals]
        proposal_boxes = torch.cat([p.proposal_boxes.tensor for p in proposals])
        boxes = self.box2box_transform.apply_deltas(deltas, proposal_boxes)
        return list(boxes.split(counts))

    def predict_probs(self, predictions, proposals: List[Instances]) -> List[torch.Tensor]:
        """Per image (R_i, K + 1) softmax probabilities."""
        logits, _ = predictions
        return list(F.softmax(at_least_fp32(logits), dim=-1).split([len(p) for p in proposals]))

    def inference(self, predictions, proposals: List[Instances]) -> Tuple[List[Instances], List[torch.Tensor]]:
        """Final detections per image and the RoI index of each."""
        return fast_rcnn_inference(
            self.predict_boxes(predictions, proposals),
            self.predict_probs(predictions, proposals),
            [p.image_size for p in proposals],
            self.test_score_thresh,
            self.test_nms_thresh,
            self.test_topk_per_image,
        )


def build_fast_rcnn_output_layers(cfg, input_shape: ShapeSpec) -> FastRCNNOutputLayers:
    """The box predictor configured by MODEL.ROI_HEADS / MODEL.ROI_BOX_HEAD / TEST."""
    return FastRCNNOutputLayers(
        input_shape,
        num_classes=cfg.MODEL.ROI_HEADS.NUM_CLASSES,
        box2box_transform=Box2BoxTransform(weights=cfg.MODEL.ROI_BOX_HEAD.BBOX_REG_WEIGHTS),
        cls_agnostic_bbox_reg=cfg.MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG,
        smooth_l1_beta=cfg.MODEL.ROI_BOX_HEAD.SMOOTH_L1_BETA,
        test_score_thresh=cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST,
        test_nms_thresh=cfg.MODEL.ROI_HEADS.NMS_THRESH_TEST,
        test_topk_per_image=cfg.TEST.DETECTIONS_PER_IMAGE,
    )
