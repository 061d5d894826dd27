"""The second stage: sample RoIs from proposals, then the box and mask heads.

- ``StandardROIHeads`` (FPN): separate box and mask heads, each with its own
  RoIAlign on P2..P5 (7x7 for boxes, 14x14 for masks).
- ``Res5ROIHeads`` (C4): 14x14 RoIAlign on res4, ResNet's res5 stage as the shared
  head, mean-pooled for the box predictor; the mask head deconvolves the res5
  features of the foreground RoIs (training) or of the detections (inference).

Both label proposals against the ground truth (IoU >= 0.5 is foreground, the rest
background, class index K), sample ``batch_size_per_image`` RoIs with at most
``positive_fraction`` foreground, and at test time run the mask head on the final
detections only.
"""
from __future__ import annotations

import logging
import math
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn
from torch.profiler import record_function

from detgn.layers import ROIPooler
from detgn.layers.shape_spec import ShapeSpec
from detgn.modeling.backbone.resnet import build_res5_stage
from detgn.modeling.matcher import Matcher
from detgn.modeling.sampling import subsample_labels
from detgn.structures import Boxes, ImageList, Instances, pairwise_iou
from detgn.utils.events import get_event_storage

from .box_head import build_box_head
from .fast_rcnn import FastRCNNOutputLayers, build_fast_rcnn_output_layers
from .mask_head import build_mask_head, mask_rcnn_fg_loss, mask_rcnn_inference

logger = logging.getLogger(__name__)

# Logit given to ground-truth boxes appended to the proposals: sigmoid ~ 1 - 1e-10.
GT_PROPOSAL_LOGIT = math.log((1.0 - 1e-10) / 1e-10)


def add_ground_truth_to_proposals(gt_boxes: Boxes, proposals: Instances) -> Instances:
    """Append an image's ground-truth boxes to its proposals (training only).

    Early in training the RPN proposes little that overlaps the objects; the ground
    truth guarantees the heads see foreground RoIs from the first iteration.
    """
    gt = Instances(
        proposals.image_size,
        proposal_boxes=gt_boxes.to(proposals.proposal_boxes.device),
        objectness_logits=torch.full(
            (len(gt_boxes),), GT_PROPOSAL_LOGIT, device=proposals.proposal_boxes.device
        ),
    )
    if len(proposals) == 0:
        return gt
    return Instances.cat([proposals, gt])


def select_foreground_proposals(
    proposals: List[Instances], bg_label: int
) -> Tuple[List[Instances], List[torch.Tensor]]:
    """Per image, the sampled RoIs with a foreground ``gt_classes``, and the (R_i,) bool selection."""
    fg, masks = [], []
    for p in proposals:
        sel = (p.gt_classes != -1) & (p.gt_classes != bg_label)
        fg.append(p[sel])
        masks.append(sel)
    return fg, masks


class ROIHeads(nn.Module):
    """What both RoI head variants share: labelling and sampling proposals.

    Args:
        num_classes: K foreground classes (background is K).
        batch_size_per_image: RoIs sampled per image (512).
        positive_fraction: largest share of foreground RoIs (0.25).
        proposal_matcher: labels proposals by IoU with the ground truth.
        proposal_append_gt: add the ground-truth boxes to the proposals in training.
    """

    def __init__(
        self,
        *,
        num_classes: int,
        batch_size_per_image: int,
        positive_fraction: float,
        proposal_matcher: Matcher,
        proposal_append_gt: bool = True,
    ):
        super().__init__()
        self.num_classes = num_classes
        self.batch_size_per_image = batch_size_per_image
        self.positive_fraction = positive_fraction
        self.proposal_matcher = proposal_matcher
        self.proposal_append_gt = proposal_append_gt

    @torch.no_grad()
    @record_function("roi_heads.label_and_sample_proposals")  # a scope of detgn.benchmark.profiling
    def label_and_sample_proposals(self, proposals: List[Instances], targets: List[Instances]) -> List[Instances]:
        """Sample RoIs per image and attach their training targets.

        Args:
            proposals: per image ``proposal_boxes``, ``objectness_logits``.
            targets: per image ``gt_boxes``, ``gt_classes`` (and ``gt_masks``).
        Returns:
            per image at most ``batch_size_per_image`` RoIs (foreground first) with
            ``gt_classes`` (K for background), ``gt_boxes`` (matched box, zeros when the
            image has no ground truth) and every other ``gt_*`` field of the targets,
            matched (when the image has ground truth). During training the foreground
            and background RoIs per image are recorded as events
            (``roi_head/num_fg_samples``, ``roi_head/num_bg_samples``).
        """
        out, num_fg, num_bg = [], [], []
        for props, tgt in zip(proposals, targets):
            if self.proposal_append_gt:
                props = add_ground_truth_to_proposals(tgt.gt_boxes, props)
            has_gt = len(tgt) > 0
            iou = pairwise_iou(tgt.gt_boxes.to(props.proposal_boxes.device), props.proposal_boxes)
            matches, labels = self.proposal_matcher(iou)
            if has_gt:
                gt_classes = tgt.gt_classes.to(matches.device)[matches]
                gt_classes = gt_classes.masked_fill(labels == 0, self.num_classes).masked_fill_(labels == -1, -1)
            else:
                gt_classes = torch.full_like(matches, self.num_classes)
            pos, neg = subsample_labels(gt_classes, self.batch_size_per_image, self.positive_fraction, self.num_classes)
            num_fg.append(pos.numel())  # sizes of index tensors: known on the host
            num_bg.append(neg.numel())
            idx = torch.cat([pos, neg])
            sampled = props[idx]
            sampled.gt_classes = gt_classes[idx]
            if has_gt:
                for name, value in tgt.get_fields().items():
                    if name.startswith("gt_") and name != "gt_classes":
                        sampled.set(name, value[matches[idx]])
            else:
                sampled.gt_boxes = Boxes(props.proposal_boxes.tensor.new_zeros((len(idx), 4)))
            out.append(sampled)
        storage = get_event_storage()
        if storage is not None and out:
            storage.put_scalar("roi_head/num_fg_samples", sum(num_fg) / len(out))
            storage.put_scalar("roi_head/num_bg_samples", sum(num_bg) / len(out))
        return out


class StandardROIHeads(ROIHeads):
    """FPN RoI heads: a box head and a mask head, each with its own pooler.

    Args:
        box_in_features: feature maps the boxes pool from ("p2".."p5").
        box_pooler: RoIAlign over those maps (7x7).
        box_head: e.g. ``FastRCNNConvFCHead`` (2fc or 4conv1fc).
        box_predictor: ``FastRCNNOutputLayers``.
        mask_in_features, mask_pooler, mask_head: the mask branch (14x14 -> 28x28);
            leave ``mask_head`` None for Faster R-CNN.
        **kwargs: see :class:`ROIHeads`.
    """

    def __init__(
        self,
        *,
        box_in_features: Sequence[str],
        box_pooler: ROIPooler,
        box_head: nn.Module,
        box_predictor: FastRCNNOutputLayers,
        mask_in_features: Optional[Sequence[str]] = None,
        mask_pooler: Optional[ROIPooler] = None,
        mask_head: Optional[nn.Module] = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.box_in_features = list(box_in_features)
        self.box_pooler = box_pooler
        self.box_head = box_head
        self.box_predictor = box_predictor
        self.mask_on = mask_head is not None
        if self.mask_on:
            self.mask_in_features = list(mask_in_features or box_in_features)
            self.mask_pooler = mask_pooler
            self.mask_head = mask_head

    def forward(
        self,
        images: ImageList,
        features: Dict[str, torch.Tensor],
        proposals: List[Instances],
        targets: Optional[List[Instances]] = None,
    ) -> Tuple[List[Instances], Dict[str, torch.Tensor]]:
        """Training: (sampled RoIs, {loss_cls, loss_box_reg[, loss_mask]}).
        Inference: (per image detections with pred_boxes, scores, pred_classes[, pred_masks], {})."""
        del images
        if self.training:
            if targets is None:
                raise ValueError("RoI heads in training mode need targets (each image's 'instances')")
            proposals = self.label_and_sample_proposals(proposals, targets)
            losses = self._forward_box(features, proposals)
            if self.mask_on:
                losses.update(self._forward_mask(features, proposals))
            return proposals, losses
        instances = self._forward_box(features, proposals)
        return self.forward_with_given_boxes(features, instances), {}

    def forward_with_given_boxes(self, features: Dict[str, torch.Tensor], instances: List[Instances]) -> List[Instances]:
        """Add ``pred_masks`` (D, 1, M, M) probabilities to detections (inference)."""
        if self.mask_on:
            instances = self._forward_mask(features, instances)
        return instances

    def _forward_box(self, features: Dict[str, torch.Tensor], proposals: List[Instances]):
        feats = [features[f] for f in self.box_in_features]
        box_features = self.box_pooler(feats, [p.proposal_boxes for p in proposals])
        predictions = self.box_predictor(self.box_head(box_features))
        if self.training:
            return self.box_predictor.losses(predictions, proposals)
        instances, _ = self.box_predictor.inference(predictions, proposals)
        return instances

    def _forward_mask(self, features: Dict[str, torch.Tensor], instances: List[Instances]):
        feats = [features[f] for f in self.mask_in_features]
        if self.training:
            fg, _ = select_foreground_proposals(instances, self.num_classes)
            logits = self.mask_head(self.mask_pooler(feats, [p.proposal_boxes for p in fg]))
            return {"loss_mask": mask_rcnn_fg_loss(logits, fg)}
        logits = self.mask_head(self.mask_pooler(feats, [i.pred_boxes for i in instances]))
        mask_rcnn_inference(logits, instances)
        return instances

    @classmethod
    def from_config(cls, cfg, input_shape: Dict[str, ShapeSpec]) -> "StandardROIHeads":
        """FPN heads of MODEL.ROI_HEADS / ROI_BOX_HEAD / ROI_MASK_HEAD."""
        in_features = list(cfg.MODEL.ROI_HEADS.IN_FEATURES)
        _check_features(in_features, input_shape, "MODEL.ROI_HEADS.IN_FEATURES")
        channels = {input_shape[f].channels for f in in_features}
        if len(channels) != 1:
            raise ValueError(f"MODEL.ROI_HEADS.IN_FEATURES {in_features} must all have the same channels, got {channels}")
        channels = channels.pop()
        scales = [1.0 / input_shape[f].stride for f in in_features]

        box_pooler, box_shape = _pooler(cfg, cfg.MODEL.ROI_BOX_HEAD, scales, channels)
        box_head = build_box_head(cfg, box_shape)
        box_predictor = build_fast_rcnn_output_layers(cfg, box_head.output_shape)

        mask_kwargs = {}
        if cfg.MODEL.MASK_ON:
            mask_pooler, mask_shape = _pooler(cfg, cfg.MODEL.ROI_MASK_HEAD, scales, channels)
            mask_kwargs = dict(
                mask_in_features=in_features, mask_pooler=mask_pooler, mask_head=build_mask_head(cfg, mask_shape),
            )
        return cls(
            box_in_features=in_features,
            box_pooler=box_pooler,
            box_head=box_head,
            box_predictor=box_predictor,
            **mask_kwargs,
            **_base_kwargs(cfg),
        )


class Res5ROIHeads(ROIHeads):
    """C4 RoI heads: res5 on 14x14 RoIAlign of res4, shared by the box and mask branches.

    Args:
        in_features: the one feature map pooled from (["res4"]).
        pooler: RoIAlign on it (14x14, scale 1/16).
        res5: ResNet's stage 5 (first block stride 2: 14x14 -> 7x7).
        box_predictor: ``FastRCNNOutputLayers`` on the mean-pooled res5 output.
        mask_head: a ``MaskRCNNConvUpsampleHead`` without 3x3 convs, or None.
        **kwargs: see :class:`ROIHeads`.
    """

    def __init__(
        self,
        *,
        in_features: Sequence[str],
        pooler: ROIPooler,
        res5: nn.Module,
        box_predictor: FastRCNNOutputLayers,
        mask_head: Optional[nn.Module] = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if len(in_features) != 1:
            raise ValueError(f"Res5ROIHeads pools from one feature map, got {list(in_features)}")
        self.in_features = list(in_features)
        self.pooler = pooler
        self.res5 = res5
        self.box_predictor = box_predictor
        self.mask_on = mask_head is not None
        if self.mask_on:
            self.mask_head = mask_head

    def _shared_roi_transform(self, features: List[torch.Tensor], boxes: List[Boxes]) -> torch.Tensor:
        return self.res5(self.pooler(features, boxes))

    def forward(
        self,
        images: ImageList,
        features: Dict[str, torch.Tensor],
        proposals: List[Instances],
        targets: Optional[List[Instances]] = None,
    ) -> Tuple[List[Instances], Dict[str, torch.Tensor]]:
        """Same contract as :meth:`StandardROIHeads.forward`."""
        del images
        feats = [features[f] for f in self.in_features]
        if self.training:
            if targets is None:
                raise ValueError("RoI heads in training mode need targets (each image's 'instances')")
            proposals = self.label_and_sample_proposals(proposals, targets)
        res5_features = self._shared_roi_transform(feats, [p.proposal_boxes for p in proposals])
        predictions = self.box_predictor(res5_features.mean(dim=(2, 3)))
        if self.training:
            losses = self.box_predictor.losses(predictions, proposals)
            if self.mask_on:
                fg, selection = select_foreground_proposals(proposals, self.num_classes)
                sel = torch.cat(selection) if selection else torch.zeros(0, dtype=torch.bool)
                losses["loss_mask"] = mask_rcnn_fg_loss(self.mask_head(res5_features[sel.to(res5_features.device)]), fg)
            return proposals, losses
        instances, _ = self.box_predictor.inference(predictions, proposals)
        return self.forward_with_given_boxes(features, instances), {}

    def forward_with_given_boxes(self, features: Dict[str, torch.Tensor], instances: List[Instances]) -> List[Instances]:
        """Add ``pred_masks`` (D, 1, M, M) to detections by running res5 on their boxes."""
        if self.mask_on:
            feats = [features[f] for f in self.in_features]
            x = self._shared_roi_transform(feats, [i.pred_boxes for i in instances])
            mask_rcnn_inference(self.mask_head(x), instances)
        return instances

    @classmethod
    def from_config(cls, cfg, input_shape: Dict[str, ShapeSpec]) -> "Res5ROIHeads":
        """C4 heads: res5 built like the backbone's (MODEL.RESNETS, its NORM), pooled at
        MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION (14 in the C4 configs)."""
        in_features = list(cfg.MODEL.ROI_HEADS.IN_FEATURES)
        _check_features(in_features, input_shape, "MODEL.ROI_HEADS.IN_FEATURES")
        if len(in_features) != 1:
            raise ValueError(
                f"Res5ROIHeads (C4) pools from one feature map; MODEL.ROI_HEADS.IN_FEATURES is {in_features}. "
                "Set it to ['res4'] (and MODEL.RPN.IN_FEATURES too)"
            )
        shape = input_shape[in_features[0]]
        res = cfg.MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION
        if res != 14:
            logger.warning(
                "Res5ROIHeads pools %dx%d RoIs; the C4 models of the paper pool 14x14 "
                "(MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION 14)", res, res,
            )
        pooler, _ = _pooler(cfg, cfg.MODEL.ROI_BOX_HEAD, [1.0 / shape.stride], shape.channels)
        res5, out_channels = build_res5_stage(cfg)
        res5_in = res5[0].in_channels
        if res5_in != shape.channels:
            raise ValueError(
                f"The C4 head's res5 expects {res5_in} input channels but {in_features[0]} has {shape.channels}; "
                "MODEL.RESNETS must describe the backbone the RoI heads pool from"
            )
        box_predictor = build_fast_rcnn_output_layers(cfg, ShapeSpec(channels=out_channels, height=1, width=1))
        mask_head = None
        if cfg.MODEL.MASK_ON:
            # C4's mask branch is just the deconv and the predictor on the res5 features.
            res5_shape = ShapeSpec(channels=out_channels, height=(res + 1) // 2, width=(res + 1) // 2)
            mask_head = build_mask_head(cfg, res5_shape, num_conv=0)
        return cls(
            in_features=in_features, pooler=pooler, res5=res5, box_predictor=box_predictor,
            mask_head=mask_head, **_base_kwargs(cfg),
        )


def _pooler(cfg, head, scales: List[float], channels: int) -> Tuple[ROIPooler, ShapeSpec]:
    """The RoIAlign of a head's config node (``POOLER_RESOLUTION``, ``POOLER_SAMPLING_RATIO``,
    ``POOLER_ALIGNED`` or else MODEL.POOLER_ALIGNED) and the shape of what it pools."""
    res = head.POOLER_RESOLUTION
    aligned = cfg.MODEL.POOLER_ALIGNED if head.POOLER_ALIGNED is None else bool(head.POOLER_ALIGNED)
    pooler = ROIPooler(output_size=res, scales=scales, sampling_ratio=head.POOLER_SAMPLING_RATIO, aligned=aligned)
    return pooler, ShapeSpec(channels=channels, height=res, width=res)


def _check_features(names: List[str], input_shape: Dict[str, ShapeSpec], key: str) -> None:
    missing = [f for f in names if f not in input_shape]
    if missing:
        raise ValueError(
            f"{key} has {missing}, which the backbone does not output (it has {sorted(input_shape)}); fix {key}"
        )


def _base_kwargs(cfg) -> dict:
    heads = cfg.MODEL.ROI_HEADS
    return dict(
        num_classes=heads.NUM_CLASSES,
        batch_size_per_image=heads.BATCH_SIZE_PER_IMAGE,
        positive_fraction=heads.POSITIVE_FRACTION,
        proposal_matcher=Matcher(heads.IOU_THRESHOLDS, [0, 1], allow_low_quality_matches=False),
        proposal_append_gt=heads.PROPOSAL_APPEND_GT,
    )


ROI_HEADS_REGISTRY = {"StandardROIHeads": StandardROIHeads, "Res5ROIHeads": Res5ROIHeads}


def build_roi_heads(cfg, input_shape: Dict[str, ShapeSpec]) -> ROIHeads:
    """The RoI heads named by MODEL.ROI_HEADS.NAME (a key of ``ROI_HEADS_REGISTRY``)."""
    name = cfg.MODEL.ROI_HEADS.NAME
    if name not in ROI_HEADS_REGISTRY:
        raise ValueError(f"MODEL.ROI_HEADS.NAME = {name!r} is unknown; choose one of {sorted(ROI_HEADS_REGISTRY)}")
    return ROI_HEADS_REGISTRY[name].from_config(cfg, input_shape)
