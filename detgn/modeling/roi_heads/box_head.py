"""The FPN box head: a few 3x3 convs (with their own norm) then fully connected layers.

``2fc`` (the BN* baseline): NUM_CONV 0, NUM_FC 2 -> ``fc6``, ``fc7`` (1024-d, ReLU).
``4conv1fc`` (the paper's GN head): NUM_CONV 4 -> ``conv1..conv4`` (3x3, 256 ch,
conv -> norm -> ReLU), NUM_FC 1 -> ``fc6``. FC layers never take a norm. The fc
names follow Detectron's (``fc6``/``fc7``) so converted weights load by name.
"""
from __future__ import annotations

from typing import Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn

from detgn.layers import Norm, add_conv_norm_relu_stack, c2_xavier_fill, norm_from_cfg
from detgn.layers.shape_spec import ShapeSpec

FIRST_FC_INDEX = 6  # fc6, fc7, ... as in Detectron / Caffe2 checkpoints


class FastRCNNConvFCHead(nn.Module):
    """Convs then fcs on pooled RoI features.

    Args:
        input_shape: the pooled feature (channels, height, width), e.g. 256 x 7 x 7.
        conv_dims: output channels of each 3x3 conv (empty for 2fc).
        fc_dims: output size of each fc (e.g. [1024, 1024] for 2fc).
        conv_norm: norm of the convs ("", "GN", a ``Norm``); convs before a norm have no bias.
    """

    def __init__(
        self,
        input_shape: ShapeSpec,
        *,
        conv_dims: Sequence[int],
        fc_dims: Sequence[int],
        conv_norm: Union[str, Norm, None] = "",
    ):
        super().__init__()
        if len(conv_dims) + len(fc_dims) == 0:
            raise ValueError("The box head needs at least one conv or fc (MODEL.ROI_BOX_HEAD.NUM_CONV / NUM_FC)")
        self.conv_norm = conv_norm
        height, width = input_shape.height, input_shape.width
        self.conv_names, channels = add_conv_norm_relu_stack(
            self, in_channels=input_shape.channels, dims=conv_dims, norm=conv_norm, name_format="conv{}"
        )
        self.fc_names = []
        self._output_size = (channels, height, width)
        for k, dim in enumerate(fc_dims):
            fc = nn.Linear(channels * (height or 1) * (width or 1) if k == 0 else channels, dim)
            c2_xavier_fill(fc)
            name = f"fc{FIRST_FC_INDEX + k}"
            self.add_module(name, fc)
            self.fc_names.append(name)
            channels, height, width = dim, None, None
            self._output_size = (dim, None, None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(R, C, P, P) pooled features -> (R, FC_DIM) (or (R, C', P, P) without fcs)."""
        for name in self.conv_names:
            x = getattr(self, name)(x)
        if self.fc_names:
            x = x.flatten(1)
            for name in self.fc_names:
                x = F.relu(getattr(self, name)(x))
        return x

    @property
    def output_shape(self) -> ShapeSpec:
        c, h, w = self._output_size
        return ShapeSpec(channels=c, height=h, width=w)


def build_box_head(cfg, input_shape: ShapeSpec) -> FastRCNNConvFCHead:
    """The box head of MODEL.ROI_BOX_HEAD (NUM_CONV, CONV_DIM, NUM_FC, FC_DIM, NORM)."""
    head = cfg.MODEL.ROI_BOX_HEAD
    return FastRCNNConvFCHead(
        input_shape,
        conv_dims=[head.CONV_DIM] * head.NUM_CONV,
        fc_dims=[head.FC_DIM] * head.NUM_FC,
        conv_norm=norm_from_cfg(cfg, head.NORM),
    )
