"""Region Proposal Network: objectness and box deltas per anchor, its losses, its proposals.

Output layout of the head on a level with A anchors per location:
``objectness_logits`` (N, A, H, W) and ``anchor_deltas`` (N, A * 4, H, W) with
the 4 deltas of an anchor adjacent (channel ``4a + j``). Both are flattened to
the anchor order of ``anchors.py`` (location-major, then anchor), so index i of
a level's (N, H * W * A) predictions is anchor i of that level.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.profiler import record_function

from detgn.layers import at_least_fp32, batched_nms
from detgn.layers.shape_spec import ShapeSpec
from detgn.modeling.box_regression import Box2BoxTransform, masked_smooth_l1_loss
from detgn.modeling.matcher import Matcher
from detgn.modeling.sampling import subsample_labels
from detgn.structures import Boxes, ImageList, Instances, pairwise_iou
from detgn.utils.events import get_event_storage

from .anchors import DefaultAnchorGenerator, build_anchor_generator


def rpn_losses(
    pred_objectness_logits: torch.Tensor,
    pred_anchor_deltas: torch.Tensor,
    gt_labels: torch.Tensor,
    anchors: torch.Tensor,
    gt_boxes: torch.Tensor,
    box2box_transform: Box2BoxTransform,
    smooth_l1_beta: float = 0.0,
) -> Dict[str, torch.Tensor]:
    """Objectness and localisation losses over the sampled anchors of a batch.

    Args:
        pred_objectness_logits: (N, R) logits, R anchors of all levels per image.
        pred_anchor_deltas: (N, R, 4) predicted deltas.
        gt_labels: (N, R) 1 positive, 0 negative, -1 not sampled.
        anchors: (R, 4) anchors (the same for every image).
        gt_boxes: (N, R, 4) matched ground-truth box of each anchor.
        box2box_transform: the RPN's coding (weights 1, 1, 1, 1).
        smooth_l1_beta: 0 for L1.
    Returns:
        ``loss_rpn_cls``: binary cross-entropy summed over sampled anchors;
        ``loss_rpn_loc``: (smooth-)L1 summed over positive anchors; both divided by
        the number of sampled anchors in the batch (at least 1).
    """
    # Masks and weights, not boolean indexing or .item(): on CUDA each of those waits for the
    # GPU (a host sync), and the sums below are the same.
    sampled = gt_labels >= 0
    positive = gt_labels == 1
    normalizer = sampled.sum().clamp(min=1)
    # Unsampled anchors are selected out (torch.where), not weighted 0: an inf logit there must
    # not turn the sum into NaN.
    bce = F.binary_cross_entropy_with_logits(pred_objectness_logits, positive.to(pred_objectness_logits.dtype),
                                             reduction="none")
    loss_cls = torch.where(sampled, bce, bce.new_zeros(())).sum()
    expanded_anchors = anchors[None].expand_as(gt_boxes)
    # Anchors that are not positive get themselves as target (finite deltas of 0), then weight 0.
    targets = torch.where(positive[..., None], gt_boxes, expanded_anchors)
    gt_deltas = box2box_transform.get_deltas(expanded_anchors.reshape(-1, 4), targets.reshape(-1, 4))
    loss_loc = masked_smooth_l1_loss(pred_anchor_deltas.reshape(-1, 4), gt_deltas, positive.reshape(-1), smooth_l1_beta)
    return {"loss_rpn_cls": loss_cls / normalizer, "loss_rpn_loc": loss_loc / normalizer}


@torch.no_grad()
def find_top_rpn_proposals(
    proposals: Sequence[torch.Tensor],
    pred_objectness_logits: Sequence[torch.Tensor],
    image_sizes: Sequence[Tuple[int, int]],
    nms_thresh: float,
    pre_nms_topk: int,
    post_nms_topk: int,
    min_box_size: float = 0.0,
) -> List[Instances]:
    """Top-k per level, clip, drop tiny boxes, NMS per level, top-k per image.

    Args:
        proposals: per level (N, R_l, 4) decoded boxes.
        pred_objectness_logits: per level (N, R_l) logits.
        image_sizes: per image (h, w) before padding.
        nms_thresh: IoU of the NMS (run separately on each level's boxes).
        pre_nms_topk: boxes kept per level and image before NMS.
        post_nms_topk: proposals kept per image after NMS, over all levels.
        min_box_size: boxes with a side <= this are dropped.
    Returns:
        per image Instances with ``proposal_boxes`` (Boxes) and ``objectness_logits``
        (P,), sorted by decreasing objectness.
    """
    num_images = len(image_sizes)
    device = proposals[0].device
    top_boxes, top_logits, level_ids = [], [], []
    for level, (boxes_l, logits_l) in enumerate(zip(proposals, pred_objectness_logits)):
        k = min(pre_nms_topk, logits_l.shape[1])
        logits_l, idx = logits_l.topk(k, dim=1)
        batch_idx = torch.arange(num_images, device=device)[:, None]
        top_boxes.append(boxes_l[batch_idx, idx])
        top_logits.append(logits_l)
        level_ids.append(torch.full((k,), level, dtype=torch.int64, device=device))
    top_boxes = torch.cat(top_boxes, dim=1)
    top_logits = torch.cat(top_logits, dim=1)
    level_ids = torch.cat(level_ids)

    results = []
    for i, image_size in enumerate(image_sizes):
        boxes, logits, lvl = top_boxes[i], top_logits[i], level_ids
        # A diverging model can produce inf boxes; they must not reach NMS. One boolean index
        # for both filters: on CUDA each test or index of a mask is a host sync.
        finite = torch.isfinite(boxes).all(dim=1) & torch.isfinite(logits)
        boxes = Boxes(boxes.clone())
        boxes.clip(image_size)
        keep = torch.nonzero(finite & boxes.nonempty(threshold=min_box_size)).squeeze(1)
        boxes, logits, lvl = boxes[keep], logits[keep], lvl[keep]
        keep = batched_nms(boxes.tensor, logits, lvl, nms_thresh)[:post_nms_topk]
        results.append(Instances(image_size, proposal_boxes=boxes[keep], objectness_logits=logits[keep]))
    return results


class StandardRPNHead(nn.Module):
    """Shared 3x3 ``conv`` (+ReLU), then 1x1 ``objectness_logits`` (A) and ``anchor_deltas`` (4A).

    Args:
        in_channels: channels of every input level (the head is shared across levels).
        num_anchors: A, anchors per location.
        box_dim: 4.
        conv_dims: channels of the shared conv(s); -1 keeps ``in_channels``.
    """

    def __init__(self, *, in_channels: int, num_anchors: int, box_dim: int = 4, conv_dims: Sequence[int] = (-1,)):
        super().__init__()
        dims = [in_channels if d == -1 else d for d in conv_dims]
        if len(dims) == 1:
            self.conv = nn.Conv2d(in_channels, dims[0], kernel_size=3, padding=1)
        else:
            layers, c = [], in_channels
            for k, d in enumerate(dims):
                layers.append(nn.Conv2d(c, d, kernel_size=3, padding=1))
                if k < len(dims) - 1:
                    layers.append(nn.ReLU())
                c = d
            self.conv = nn.Sequential(*layers)
        self.objectness_logits = nn.Conv2d(dims[-1], num_anchors, kernel_size=1)
        self.anchor_deltas = nn.Conv2d(dims[-1], num_anchors * box_dim, kernel_size=1)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, std=0.01)
                nn.init.constant_(m.bias, 0.0)

    def forward(self, features: List[torch.Tensor]) -> Tuple[List[torch.Tensor], List[torch.Tensor]]:
        """Per level (N, C, H, W) -> per level (N, A, H, W) logits and (N, 4A, H, W) deltas."""
        logits, deltas = [], []
        for x in features:
            t = F.relu(self.conv(x))
            logits.append(self.objectness_logits(t))
            deltas.append(self.anchor_deltas(t))
        return logits, deltas


class RPN(nn.Module):
    """The region proposal network of Faster R-CNN on one or more feature maps.

    Args:
        in_features: names of the feature maps it runs on ("p2".."p6" or "res4").
        head: predicts objectness and deltas per anchor.
        anchor_generator: anchors matching ``in_features``.
        anchor_matcher: labels anchors (IoU 0.3 / 0.7 with low-quality matches).
        box2box_transform: anchor delta coding.
        batch_size_per_image, positive_fraction: anchor sampling (256, 0.5).
        pre_nms_topk, post_nms_topk: (train, test) pairs.
        nms_thresh: proposal NMS IoU.
        min_box_size: proposals with a side <= this are dropped.
        anchor_boundary_thresh: anchors beyond the image by more than this are
            ignored in training (< 0 keeps all).
        loss_weight: multiplies both RPN losses.
        smooth_l1_beta: 0 for L1.
    """

    def __init__(
        self,
        *,
        in_features: Sequence[str],
        head: nn.Module,
        anchor_generator: DefaultAnchorGenerator,
        anchor_matcher: Matcher,
        box2box_transform: Box2BoxTransform,
        batch_size_per_image: int,
        positive_fraction: float,
        pre_nms_topk: Tuple[int, int],
        post_nms_topk: Tuple[int, int],
        nms_thresh: float = 0.7,
        min_box_size: float = 0.0,
        anchor_boundary_thresh: float = -1.0,
        loss_weight: float = 1.0,
        smooth_l1_beta: float = 0.0,
    ):
        super().__init__()
        self.in_features = list(in_features)
        self.rpn_head = head
        self.anchor_generator = anchor_generator
        self.anchor_matcher = anchor_matcher
        self.box2box_transform = box2box_transform
        self.batch_size_per_image = batch_size_per_image
        self.positive_fraction = positive_fraction
        self.pre_nms_topk = {True: pre_nms_topk[0], False: pre_nms_topk[1]}
        self.post_nms_topk = {True: post_nms_topk[0], False: post_nms_topk[1]}
        self.nms_thresh = nms_thresh
        self.min_box_size = min_box_size
        self.anchor_boundary_thresh = anchor_boundary_thresh
        self.loss_weight = loss_weight
        self.smooth_l1_beta = smooth_l1_beta

    @torch.no_grad()
    @record_function("rpn.label_and_sample_anchors")  # a scope of detgn.benchmark.profiling
    def label_and_sample_anchors(
        self, anchors: Boxes, gt_instances: List[Instances]
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """Label the anchors of every image and sample ``batch_size_per_image`` of them.

        Returns:
            gt_labels: (N, R) 1 / 0 / -1 (positive / negative / not sampled).
            matched_gt_boxes: (N, R, 4) the matched ground-truth box of each anchor.
        """
        labels_all, boxes_all = [], []
        for inst in gt_instances:
            gt_boxes = inst.gt_boxes.to(anchors.device)
            matches, labels = self.anchor_matcher(pairwise_iou(gt_boxes, anchors))
            labels = labels.to(torch.int64)
            if self.anchor_boundary_thresh >= 0:
                h, w = inst.image_size
                t = self.anchor_boundary_thresh
                a = anchors.tensor
                inside = (a[:, 0] >= -t) & (a[:, 1] >= -t) & (a[:, 2] < w + t) & (a[:, 3] < h + t)
                labels.masked_fill_(~inside, -1)
            pos, neg = subsample_labels(labels, self.batch_size_per_image, self.positive_fraction, 0)
            labels.fill_(-1)
            labels[pos] = 1
            labels[neg] = 0
            if len(gt_boxes) == 0:
                matched = torch.zeros_like(anchors.tensor)
            else:
                matched = gt_boxes.tensor[matches]
            labels_all.append(labels)
            boxes_all.append(matched)
        return torch.stack(labels_all), torch.stack(boxes_all)

    def forward(
        self,
        images: ImageList,
        features: Dict[str, torch.Tensor],
        gt_instances: Optional[List[Instances]] = None,
    ) -> Tuple[List[Instances], Dict[str, torch.Tensor]]:
        """Proposals for every image, and the RPN losses in training.

        Args:
            images: the padded batch (its ``image_sizes`` clip the proposals).
            features: backbone outputs by name, (N, C, H_l, W_l).
            gt_instances: per image ``gt_boxes`` (training only).
        Returns:
            proposals: per image Instances(``proposal_boxes``, ``objectness_logits``),
                detached (the RoI heads do not back-propagate into the RPN through them).
            losses: ``loss_rpn_cls``, ``loss_rpn_loc`` in training, else {}. Training also
                records the sampled positive and negative anchors per image as events
                (``rpn/num_pos_anchors``, ``rpn/num_neg_anchors``).
        """
        feats = [features[f] for f in self.in_features]
        anchors = self.anchor_generator(feats, images.tensor.shape[-2:])
        logits, deltas = self.rpn_head(feats)
        num_images = feats[0].shape[0]
        # (N, A, H, W) -> (N, H*W*A) and (N, A*4, H, W) -> (N, H*W*A, 4), anchor order.
        logits = [x.permute(0, 2, 3, 1).flatten(1) for x in logits]
        deltas = [
            x.view(num_images, -1, 4, x.shape[-2], x.shape[-1]).permute(0, 3, 4, 1, 2).reshape(num_images, -1, 4)
            for x in deltas
        ]

        losses = {}
        if self.training:
            if gt_instances is None:
                raise ValueError("RPN in training mode needs gt_instances (each image's 'instances')")
            all_anchors = Boxes.cat(anchors)
            gt_labels, gt_boxes = self.label_and_sample_anchors(all_anchors, gt_instances)
            storage = get_event_storage()
            if storage is not None:  # device tensors: read by the writer, no sync here
                storage.put_scalar("rpn/num_pos_anchors", (gt_labels == 1).sum() / num_images)
                storage.put_scalar("rpn/num_neg_anchors", (gt_labels == 0).sum() / num_images)
            losses = rpn_losses(
                torch.cat(logits, dim=1),
                torch.cat(deltas, dim=1),
                gt_labels,
                all_anchors.tensor,
                gt_boxes,
                self.box2box_transform,
                self.smooth_l1_beta,
            )
            losses = {k: v * self.loss_weight for k, v in losses.items()}

        proposals = self.predict_proposals(anchors, logits, deltas, images.image_sizes)
        return proposals, losses

    @torch.no_grad()
    def predict_proposals(
        self,
        anchors: List[Boxes],
        logits: List[torch.Tensor],
        deltas: List[torch.Tensor],
        image_sizes: List[Tuple[int, int]],
    ) -> List[Instances]:
        """Decode each level's deltas on its anchors, then :func:`find_top_rpn_proposals`."""
        boxes = []
        for anchors_l, deltas_l in zip(anchors, deltas):
            n, r, _ = deltas_l.shape
            a = anchors_l.tensor[None].expand(n, -1, -1).reshape(-1, 4)
            boxes.append(self.box2box_transform.apply_deltas(deltas_l.detach().reshape(-1, 4), a).view(n, r, 4))
        return find_top_rpn_proposals(
            boxes,
            [at_least_fp32(x.detach()) for x in logits],  # ranked in float32 under bf16 autocast too
            image_sizes,
            self.nms_thresh,
            self.pre_nms_topk[self.training],
            self.post_nms_topk[self.training],
            self.min_box_size,
        )


def build_rpn(cfg, input_shape: Dict[str, ShapeSpec]) -> RPN:
    """The RPN of MODEL.RPN / MODEL.ANCHOR_GENERATOR on the backbone features ``input_shape``."""
    rpn = cfg.MODEL.RPN
    missing = [f for f in rpn.IN_FEATURES if f not in input_shape]
    if missing:
        raise ValueError(
            f"MODEL.RPN.IN_FEATURES has {missing}, which the backbone does not output "
            f"(it has {sorted(input_shape)}); fix MODEL.RPN.IN_FEATURES"
        )
    shapes = [input_shape[f] for f in rpn.IN_FEATURES]
    channels = {s.channels for s in shapes}
    if len(channels) != 1:
        raise ValueError(f"The RPN head is shared across levels, but MODEL.RPN.IN_FEATURES have channels {channels}")
    anchor_generator = build_anchor_generator(cfg, shapes)
    num_anchors = set(anchor_generator.num_anchors)
    if len(num_anchors) != 1:
        raise ValueError(
            "The RPN head is shared across levels, so every level needs the same number of anchors per "
            f"location; MODEL.ANCHOR_GENERATOR gives {anchor_generator.num_anchors}"
        )
    head = StandardRPNHead(in_channels=channels.pop(), num_anchors=num_anchors.pop(), conv_dims=rpn.CONV_DIMS)
    return RPN(
        in_features=rpn.IN_FEATURES,
        head=head,
        anchor_generator=anchor_generator,
        anchor_matcher=Matcher(rpn.IOU_THRESHOLDS, [0, -1, 1], allow_low_quality_matches=True),
        box2box_transform=Box2BoxTransform(weights=rpn.BBOX_REG_WEIGHTS),
        batch_size_per_image=rpn.BATCH_SIZE_PER_IMAGE,
        positive_fraction=rpn.POSITIVE_FRACTION,
        pre_nms_topk=(rpn.PRE_NMS_TOPK_TRAIN, rpn.PRE_NMS_TOPK_TEST),
        post_nms_topk=(rpn.POST_NMS_TOPK_TRAIN, rpn.POST_NMS_TOPK_TEST),
        nms_thresh=rpn.NMS_THRESH,
        anchor_boundary_thresh=rpn.BOUNDARY_THRESH,
        loss_weight=rpn.LOSS_WEIGHT,
        smooth_l1_beta=rpn.SMOOTH_L1_BETA,
    )
