"""The interface every backbone implements."""
from __future__ import annotations

from abc import ABCMeta, abstractmethod
from typing import Dict, List

import torch
from torch import nn

from detgn.layers import ShapeSpec, describe_norms


class Backbone(nn.Module, metaclass=ABCMeta):
    """A network mapping an image batch to named feature maps.

    Subclasses set ``self._out_features`` (names in output order) and, per name,
    ``self._out_feature_channels`` and ``self._out_feature_strides``.
    """

    def __init__(self):
        super().__init__()
        self._out_features: List[str] = []
        self._out_feature_channels: Dict[str, int] = {}
        self._out_feature_strides: Dict[str, int] = {}

    @abstractmethod
    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        """(N, C, H, W) images -> {name: (N, C_name, H / stride, W / stride)}."""

    @property
    def size_divisibility(self) -> int:
        """Input sides must be a multiple of this (0: any size works)."""
        return 0

    @property
    def out_features(self) -> List[str]:
        return list(self._out_features)

    def output_shape(self) -> Dict[str, ShapeSpec]:
        """{name: ShapeSpec(channels, stride)} of every output feature map."""
        return {
            name: ShapeSpec(
                channels=self._out_feature_channels[name], stride=self._out_feature_strides[name]
            )
            for name in self._out_features
        }

    def describe_norms(self) -> List[str]:
        """Per part, the norm layers it uses and how many of its params are frozen."""
        return describe_norms(self)
