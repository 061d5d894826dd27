"""The second stage: RoI sampling, box head and predictor, mask head (FPN and C4 variants)."""
from .box_head import FastRCNNConvFCHead, build_box_head
from .fast_rcnn import (
    FastRCNNOutputLayers,
    build_fast_rcnn_output_layers,
    fast_rcnn_classification_stats,
    fast_rcnn_inference,
    fast_rcnn_losses,
)
from .mask_head import (
    MaskRCNNConvUpsampleHead,
    build_mask_head,
    mask_rcnn_fg_loss,
    mask_rcnn_inference,
    mask_rcnn_loss,
    mask_rcnn_targets,
)
from .roi_heads import (
    ROI_HEADS_REGISTRY,
    Res5ROIHeads,
    ROIHeads,
    StandardROIHeads,
    add_ground_truth_to_proposals,
    build_roi_heads,
    select_foreground_proposals,
)

__all__ = [
    "FastRCNNConvFCHead",
    "build_box_head",
    "FastRCNNOutputLayers",
    "build_fast_rcnn_output_layers",
    "fast_rcnn_classification_stats",
    "fast_rcnn_inference",
    "fast_rcnn_losses",
    "MaskRCNNConvUpsampleHead",
    "build_mask_head",
    "mask_rcnn_fg_loss",
    "mask_rcnn_inference",
    "mask_rcnn_loss",
    "mask_rcnn_targets",
    "ROI_HEADS_REGISTRY",
    "ROIHeads",
    "Res5ROIHeads",
    "StandardROIHeads",
    "add_ground_truth_to_proposals",
    "build_roi_heads",
    "select_foreground_proposals",
]
