"""``build_backbone(cfg)``: the backbone named by ``MODEL.BACKBONE.NAME``."""
from __future__ import annotations

from typing import Callable, Dict, Optional

from detgn.config import ConfigError
from detgn.layers import ShapeSpec

from .backbone import Backbone
from .fpn import build_resnet_fpn_backbone
from .resnet import build_resnet_c4_backbone

# A plain dict: users add their own builder with BACKBONE_REGISTRY["name"] = fn,
# where fn(cfg, input_shape) -> Backbone.
BACKBONE_REGISTRY: Dict[str, Callable[..., Backbone]] = {
    "build_resnet_fpn_backbone": build_resnet_fpn_backbone,
    "build_resnet_c4_backbone": build_resnet_c4_backbone,
}


def build_backbone(cfg, input_shape: Optional[ShapeSpec] = None) -> Backbone:
    """Build ``MODEL.BACKBONE.NAME`` from the registry.

    Args:
        cfg: the config.
        input_shape: channels of the input images (default: ``len(MODEL.PIXEL_MEAN)``).
    """
    name = cfg.MODEL.BACKBONE.NAME
    if name not in BACKBONE_REGISTRY:
        raise ConfigError(
            f"MODEL.BACKBONE.NAME = {name!r} is not a known backbone; choose one of "
            f"{sorted(BACKBONE_REGISTRY)}"
        )
    if input_shape is None:
        input_shape = ShapeSpec(channels=len(cfg.MODEL.PIXEL_MEAN))
    backbone = BACKBONE_REGISTRY[name](cfg, input_shape)
    if not isinstance(backbone, Backbone):
        raise TypeError(f"Backbone builder {name!r} returned {type(backbone).__name__}, not a Backbone")
    return backbone
