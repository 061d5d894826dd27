"""Building blocks shared by every part: norms (with EvalNorm), conv, NMS/RoIAlign, RoI pooling,
and the auxiliary losses / parameter groups a layer may declare."""
from .auxiliary import AuxiliaryModule, AuxLoss, ParamGroup, pop_aux_losses
from .batch_norm import BatchNorm2d, evalnorm
from .evalnorm_setup import (
    apply_evalnorm_rule,
    configure_evalnorm,
    evalnorm_layers,
    evalnorm_summary,
    log_evalnorm_state,
    pop_evalnorm_loss,
)
from .conv import Conv2d, add_conv_norm_relu_stack
from .norm import (
    NORM_NAMES,
    FrozenBatchNorm2d,
    GroupNorm,
    Norm,
    SyncBatchNorm2d,
    describe_norms,
    get_norm,
    norm_from_cfg,
)
from .ops import ROIAlign, at_least_fp32, batched_nms, nms, roi_align
from .pooler import ROIPooler, assign_boxes_to_levels
from .shape_spec import ShapeSpec
from .weight_init import c2_msra_fill, c2_xavier_fill

__all__ = [
    "at_least_fp32",
    "NORM_NAMES",
    "AuxiliaryModule",
    "AuxLoss",
    "ParamGroup",
    "pop_aux_losses",
    "BatchNorm2d",
    "GroupNorm",
    "apply_evalnorm_rule",
    "configure_evalnorm",
    "evalnorm",
    "evalnorm_layers",
    "evalnorm_summary",
    "log_evalnorm_state",
    "pop_evalnorm_loss",
    "Conv2d",
    "FrozenBatchNorm2d",
    "Norm",
    "ROIAlign",
    "ROIPooler",
    "ShapeSpec",
    "SyncBatchNorm2d",
    "add_conv_norm_relu_stack",
    "assign_boxes_to_levels",
    "batched_nms",
    "c2_msra_fill",
    "c2_xavier_fill",
    "describe_norms",
    "get_norm",
    "nms",
    "norm_from_cfg",
    "roi_align",
]
