"""Feature Pyramid Network on a ResNet: P2-P6, with its own norm (GN in the paper)."""
from __future__ import annotations

import math
from typing import Dict, List, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn

from detgn.config import ConfigError
from detgn.layers import Conv2d, Norm, ShapeSpec, c2_xavier_fill, norm_from_cfg

from .backbone import Backbone
from .resnet import build_resnet_backbone


class LastLevelMaxPool(nn.Module):
    """P6 from P5 by a 1x1 max-pool of stride 2 (a subsampling), as in Mask R-CNN FPN."""

    num_levels = 1

    def forward(self, p5: torch.Tensor) -> List[torch.Tensor]:
        return [F.max_pool2d(p5, kernel_size=1, stride=2, padding=0)]


class FPN(Backbone):
    """Top-down pyramid with lateral connections over ``bottom_up``'s ``in_features``.

    Every level gets a 1x1 lateral conv (``fpn_lateral{k}``) and a 3x3 output conv
    (``fpn_output{k}``), k = log2(stride) of the input feature; both are conv -> norm
    (no conv bias) when ``norm`` is set, conv with bias when it is ``""``. The coarser
    map is upsampled (nearest) to the lateral's exact size, so odd sizes work, and
    fused by sum (or average). ``top_block`` adds the extra levels (P6).

    Args:
        bottom_up: a Backbone (the ResNet).
        in_features: its outputs to build on, finest first (e.g. res2..res5).
        out_channels: channels of every level (256).
        norm: norm of the lateral and output convs.
        top_block: module mapping the coarsest output to extra levels, or None.
        fuse_type: "sum" or "avg".

    Shapes: (N, C, H, W) -> {"p2": (N, out_channels, H/4, W/4), ..., "p6": (.., H/64, W/64)}.
    """

    def __init__(
        self,
        *,
        bottom_up: Backbone,
        in_features: Sequence[str],
        out_channels: int = 256,
        norm: Union[str, Norm, None] = "",
        top_block: Optional[nn.Module] = None,
        fuse_type: str = "sum",
    ):
        super().__init__()
        if fuse_type not in ("sum", "avg"):
            raise ValueError(f"FPN fuse_type must be 'sum' or 'avg', got {fuse_type!r}")
        shapes = bottom_up.output_shape()
        missing = [f for f in in_features if f not in shapes]
        if not in_features or missing:
            raise ValueError(
                f"FPN in_features {list(in_features)} must be outputs of the bottom-up network "
                f"({list(shapes)}); missing {missing}"
            )
        strides = [shapes[f].stride for f in in_features]
        if any(b != 2 * a for a, b in zip(strides, strides[1:])):
            raise ValueError(f"FPN in_features must have strides doubling level to level, got {strides}")
        self.bottom_up = bottom_up
        self.in_features = list(in_features)
        self.top_block = top_block
        self.fuse_type = fuse_type

        self._levels = [int(math.log2(s)) for s in strides]
        self.lateral_convs: List[Conv2d] = []
        self.output_convs: List[Conv2d] = []
        for feature, level in zip(self.in_features, self._levels):
            lateral = Conv2d(shapes[feature].channels, out_channels, 1, norm=norm)
            output = Conv2d(out_channels, out_channels, 3, padding=1, norm=norm)
            c2_xavier_fill(lateral)
            c2_xavier_fill(output)
            self.add_module(f"fpn_lateral{level}", lateral)
            self.add_module(f"fpn_output{level}", output)
            self.lateral_convs.append(lateral)
            self.output_convs.append(output)

        self._out_features = [f"p{level}" for level in self._levels]
        if top_block is not None:
            last = self._levels[-1]
            self._out_features += [f"p{last + i + 1}" for i in range(top_block.num_levels)]
        self._out_feature_channels = {name: out_channels for name in self._out_features}
        self._out_feature_strides = {name: 2 ** int(name[1:]) for name in self._out_features}
        self._size_divisibility = strides[-1]

    @property
    def size_divisibility(self) -> int:
        return self._size_divisibility

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        bottom_up = self.bottom_up(x)
        feats = [bottom_up[f] for f in self.in_features]
        # Coarsest first: each finer lateral receives the upsampled sum from above.
        prev = self.lateral_convs[-1](feats[-1])
        results = [self.output_convs[-1](prev)]
        for feat, lateral_conv, output_conv in zip(
            feats[-2::-1], self.lateral_convs[-2::-1], self.output_convs[-2::-1]
        ):
            lateral = lateral_conv(feat)
            top_down = F.interpolate(prev, size=lateral.shape[-2:], mode="nearest")
            prev = lateral + top_down
            if self.fuse_type == "avg":
                prev = prev / 2
            results.insert(0, output_conv(prev))
        if self.top_block is not None:
            results.extend(self.top_block(results[-1]))
        return dict(zip(self._out_features, results))


def build_resnet_fpn_backbone(cfg, input_shape: Optional[ShapeSpec] = None) -> FPN:
    """ResNet (``MODEL.RESNETS``) + FPN (``MODEL.FPN``) with P6 by max-pool: p2..p6."""
    bottom_up = build_resnet_backbone(cfg, input_shape)
    fpn = cfg.MODEL.FPN
    if fpn.FUSE_TYPE not in ("sum", "avg"):
        raise ConfigError(f"MODEL.FPN.FUSE_TYPE = {fpn.FUSE_TYPE!r}; use 'sum' or 'avg'")
    missing = [f for f in fpn.IN_FEATURES if f not in bottom_up.out_features]
    if missing:
        raise ConfigError(
            f"MODEL.FPN.IN_FEATURES {list(fpn.IN_FEATURES)} needs {missing} from the ResNet; "
            f"add them to MODEL.RESNETS.OUT_FEATURES (now {list(cfg.MODEL.RESNETS.OUT_FEATURES)})"
        )
    if cfg.MODEL.RESNETS.RES5_DILATION != 1 and "res5" in fpn.IN_FEATURES:
        raise ConfigError(
            "MODEL.RESNETS.RES5_DILATION = 2 keeps res5 at stride 16, which an FPN level cannot "
            "use; set it to 1 or drop res5 from MODEL.FPN.IN_FEATURES"
        )
    return FPN(
        bottom_up=bottom_up,
        in_features=fpn.IN_FEATURES,
        out_channels=fpn.OUT_CHANNELS,
        norm=norm_from_cfg(cfg, fpn.NORM),
        top_block=LastLevelMaxPool(),
        fuse_type=fpn.FUSE_TYPE,
    )
