"""The mask head: 3x3 convs with their own norm, a 2x2 deconv, per-class mask logits.

FPN: ``mask_fcn1..mask_fcn4`` (3x3, 256 ch, conv -> norm -> ReLU) on 14x14 RoI
features, ``conv5_mask`` (2x2 stride-2 deconv -> ReLU) to 28x28, ``mask_fcn_logits``
(1x1, K channels: one mask per foreground class, no background channel).
C4: no 3x3 convs (NUM_CONV 0); the deconv runs on the res5 features (7x7 -> 14x14).
Holds the pure loss and inference functions and the module.
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn
from torch.profiler import record_function

from detgn.layers import Norm, add_conv_norm_relu_stack, at_least_fp32, c2_msra_fill, norm_from_cfg
from detgn.layers.shape_spec import ShapeSpec
from detgn.structures import Instances


def mask_rcnn_loss(
    pred_mask_logits: torch.Tensor, gt_classes: torch.Tensor, gt_mask_targets: torch.Tensor,
    has_mask: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Per-pixel binary cross-entropy of each RoI's ground-truth-class mask.

    Args:
        pred_mask_logits: (R, K, M, M) logits (or (R, 1, M, M) class-agnostic).
        gt_classes: (R,) int64 ground-truth class of each (foreground) RoI.
        gt_mask_targets: (R, M, M) targets in [0, 1] (the ground-truth mask
            cropped to the RoI and resized to M x M).
        has_mask: (R,) bool, False for RoIs whose ground truth has no mask (a box-only
            annotation): they are left out of the loss (None: every RoI has one).
    Returns:
        scalar mean over the R * M * M pixels of the RoIs with a mask; 0 (connected to the
        logits) when there is none.
    """
    num_rois = pred_mask_logits.shape[0]
    if num_rois == 0:
        return pred_mask_logits.sum() * 0.0
    if gt_mask_targets.shape != (num_rois,) + tuple(pred_mask_logits.shape[2:]):
        raise ValueError(
            f"mask targets {tuple(gt_mask_targets.shape)} do not match mask logits {tuple(pred_mask_logits.shape)}"
        )
    if pred_mask_logits.shape[1] == 1:
        logits = pred_mask_logits[:, 0]
    else:
        logits = pred_mask_logits[torch.arange(num_rois, device=pred_mask_logits.device), gt_classes]
    targets = gt_mask_targets.to(logits.dtype)
    if has_mask is None:
        return F.binary_cross_entropy_with_logits(logits, targets, reduction="mean")
    # A 0/1 weight per RoI instead of indexing: no host sync for the count of RoIs kept.
    weight = has_mask.to(logits.dtype)[:, None, None].expand_as(logits)
    total = F.binary_cross_entropy_with_logits(logits, targets, weight=weight, reduction="sum")
    return total / weight.sum().clamp(min=1.0)


@record_function("mask_rcnn_targets")  # a scope of detgn.benchmark.profiling
def mask_rcnn_targets(
    instances: List[Instances], mask_size: int
) -> Tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
    """Ground-truth classes (R,), M x M mask targets (R, M, M) and has-mask flags (R,) of foreground RoIs.

    Each Instances holds the foreground proposals of one image with ``proposal_boxes``,
    ``gt_classes``, ``gt_masks`` (the matched ground truth, PolygonMasks or BitMasks) and, from
    the mapper, ``gt_has_mask``. The flags are None when no image carries ``gt_has_mask``
    (every RoI then counts as having a mask).
    """
    classes, targets, has = [], [], []
    flagged = any(inst.has("gt_has_mask") for inst in instances)
    for inst in instances:
        if len(inst) == 0:
            continue
        classes.append(inst.gt_classes)
        targets.append(inst.gt_masks.crop_and_resize(inst.proposal_boxes.tensor, mask_size).to(inst.gt_classes.device))
        if flagged:
            has.append(inst.gt_has_mask.to(inst.gt_classes.device) if inst.has("gt_has_mask")
                       else torch.ones(len(inst), dtype=torch.bool, device=inst.gt_classes.device))
    if not classes:
        return (torch.zeros(0, dtype=torch.int64), torch.zeros(0, mask_size, mask_size),
                torch.zeros(0, dtype=torch.bool) if flagged else None)
    return torch.cat(classes), torch.cat(targets), torch.cat(has) if flagged else None


def mask_rcnn_fg_loss(pred_mask_logits: torch.Tensor, fg_instances: List[Instances]) -> torch.Tensor:
    """The mask loss of a batch's foreground RoIs: their targets, then :func:`mask_rcnn_loss`.

    Args:
        pred_mask_logits: (R, K, M, M) (or (R, 1, M, M)) logits of the foreground RoIs, in
            the order of ``fg_instances`` (image by image).
        fg_instances: per image the foreground RoIs (``proposal_boxes``, ``gt_classes``,
            ``gt_masks``, ``gt_has_mask``), as :func:`~.roi_heads.select_foreground_proposals` gives them.
    Returns:
        the scalar loss over the RoIs whose ground truth has a mask (0, connected to the
        logits, when there is none).
    """
    gt_classes, gt_masks, has_mask = mask_rcnn_targets(fg_instances, pred_mask_logits.shape[-1])
    device = pred_mask_logits.device
    return mask_rcnn_loss(pred_mask_logits, gt_classes.to(device), gt_masks.to(device),
                          None if has_mask is None else has_mask.to(device))


def mask_rcnn_inference(pred_mask_logits: torch.Tensor, pred_instances: List[Instances]) -> None:
    """Set ``pred_masks`` (D_i, 1, M, M) probabilities of each detection's predicted class.

    Args:
        pred_mask_logits: (D, K, M, M) or (D, 1, M, M) logits of all detections of the batch,
            in image order.
        pred_instances: per image, detections with ``pred_classes``; modified in place.
    """
    pred_mask_logits = at_least_fp32(pred_mask_logits)  # float32 probabilities under bf16 autocast too
    if pred_mask_logits.shape[1] == 1:
        probs = pred_mask_logits.sigmoid()
    else:
        classes = torch.cat([i.pred_classes for i in pred_instances])
        idx = torch.arange(pred_mask_logits.shape[0], device=pred_mask_logits.device)
        probs = pred_mask_logits[idx, classes][:, None].sigmoid()
    for probs_i, inst in zip(probs.split([len(i) for i in pred_instances]), pred_instances):
        inst.pred_masks = probs_i


class MaskRCNNConvUpsampleHead(nn.Module):
    """``mask_fcn{k}`` 3x3 convs, ``conv5_mask`` deconv, ``mask_fcn_logits`` predictor.

    Args:
        input_shape: the RoI feature (channels, P, P).
        num_classes: K foreground classes (1 output channel when ``cls_agnostic_mask``).
        conv_dims: channels of each 3x3 conv followed by the deconv's channels; its
            length is NUM_CONV + 1 (C4: just the deconv, e.g. [256]).
        conv_norm: norm of the 3x3 convs ("" keeps a conv bias and no norm).
        cls_agnostic_mask: predict one mask per RoI.
        predictor_init: init of ``mask_fcn_logits``: "gaussian" (N(0, 0.001), detectron2's
            choice) or "msra" (MSRAFill / kaiming-normal fan-out, what Detectron's GN and
            Mask R-CNN configs (MRCNN.CONV_INIT: MSRAFill) and torchvision use).
    """

    def __init__(
        self,
        input_shape: ShapeSpec,
        *,
        num_classes: int,
        conv_dims: Sequence[int],
        conv_norm: Union[str, Norm, None] = "",
        cls_agnostic_mask: bool = False,
        predictor_init: str = "gaussian",
    ):
        super().__init__()
        if predictor_init not in ("gaussian", "msra"):
            raise ValueError(f"MODEL.ROI_MASK_HEAD.PREDICTOR_INIT must be 'gaussian' or 'msra', got {predictor_init!r}")
        if len(conv_dims) < 1:
            raise ValueError("conv_dims needs at least the deconv's channels")
        self.conv_norm = conv_norm
        # (M, M) of the predicted masks: the deconv doubles the RoI features' side.
        self.mask_size = 2 * input_shape.height if input_shape.height else None
        self.conv_names, channels = add_conv_norm_relu_stack(
            self, in_channels=input_shape.channels, dims=conv_dims[:-1], norm=conv_norm, name_format="mask_fcn{}"
        )
        self.conv5_mask = nn.ConvTranspose2d(channels, conv_dims[-1], kernel_size=2, stride=2)
        c2_msra_fill(self.conv5_mask)
        self.mask_fcn_logits = nn.Conv2d(conv_dims[-1], 1 if cls_agnostic_mask else num_classes, kernel_size=1)
        if predictor_init == "gaussian":  # initial masks near 0.5 everywhere (detectron2)
            nn.init.normal_(self.mask_fcn_logits.weight, std=0.001)
            nn.init.constant_(self.mask_fcn_logits.bias, 0.0)
        else:
            c2_msra_fill(self.mask_fcn_logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(R, C, P, P) RoI features -> (R, K, 2P, 2P) mask logits."""
        for name in self.conv_names:
            x = getattr(self, name)(x)
        x = F.relu(self.conv5_mask(x))
        return self.mask_fcn_logits(x)


def build_mask_head(cfg, input_shape: ShapeSpec, *, num_conv: Optional[int] = None) -> MaskRCNNConvUpsampleHead:
    """The mask head of MODEL.ROI_MASK_HEAD (NUM_CONV, CONV_DIM, NORM, CLS_AGNOSTIC_MASK).

    ``num_conv`` overrides NUM_CONV: the C4 heads pass 0 (just the deconv and the
    predictor, on the res5 features shared with the box branch).
    """
    head = cfg.MODEL.ROI_MASK_HEAD
    num_conv = head.NUM_CONV if num_conv is None else num_conv
    return MaskRCNNConvUpsampleHead(
        input_shape,
        num_classes=cfg.MODEL.ROI_HEADS.NUM_CLASSES,
        conv_dims=[head.CONV_DIM] * (num_conv + 1),
        conv_norm=norm_from_cfg(cfg, head.NORM),
        cls_agnostic_mask=head.CLS_AGNOSTIC_MASK,
        predictor_init=head.PREDICTOR_INIT,
    )
