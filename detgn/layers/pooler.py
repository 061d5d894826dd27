"""RoI feature pooling over one feature map (C4) or an FPN pyramid."""
from __future__ import annotations

import math
from typing import List, Sequence, Tuple, Union

import torch
from torch import nn

from detgn.structures import Boxes

from .ops import ROIAlign


def assign_boxes_to_levels(
    boxes: List[Boxes],
    min_level: int,
    max_level: int,
    canonical_box_size: float,
    canonical_level: int,
) -> torch.Tensor:
    """FPN level index (0 = ``min_level``) of every box, FPN paper eq. (1).

    ``level = floor(canonical_level + log2(sqrt(area) / canonical_box_size) + 1e-6)``,
    clamped to [min_level, max_level]: a 224x224 box goes to level 4, one of half the
    side to level 3. The 1e-6 keeps a box exactly at a boundary size on the upper
    level despite float rounding, as torchvision's MultiScaleRoIAlign does.

    Args:
        boxes: per image, R_i boxes.
    Returns:
        (sum R_i,) int64 in [0, max_level - min_level].
    """
    device = boxes[0].device if boxes else torch.device("cpu")
    xyxy = torch.cat([b.tensor for b in boxes]) if boxes else torch.zeros(0, 4, device=device)
    return level_of_boxes(xyxy, min_level, max_level, canonical_box_size, canonical_level)


def level_of_boxes(
    boxes: torch.Tensor, min_level: int, max_level: int, canonical_box_size: float, canonical_level: int
) -> torch.Tensor:
    """:func:`assign_boxes_to_levels` of one (R, 4) x1y1x2y2 tensor."""
    area = (boxes[:, 2] - boxes[:, 0]).clamp(min=0) * (boxes[:, 3] - boxes[:, 1]).clamp(min=0)  # as Boxes.area
    level = torch.floor(canonical_level + torch.log2(area.sqrt() / canonical_box_size) + 1e-6)
    level = level.clamp(min=min_level, max=max_level)
    return level.to(torch.int64) - min_level


def boxes_to_rois(boxes: List[Boxes]) -> torch.Tensor:
    """(R, 5) rows ``(image_index, x1, y1, x2, y2)`` from per-image boxes, image order."""
    rows = []
    for i, b in enumerate(boxes):
        index = torch.full((len(b), 1), float(i), dtype=b.tensor.dtype, device=b.device)
        rows.append(torch.cat([index, b.tensor], dim=1))
    if not rows:
        return torch.zeros(0, 5)
    return torch.cat(rows, dim=0)


class ROIPooler(nn.Module):
    """RoIAlign each box on the pyramid level its size selects (or the one map given).

    Args:
        output_size: int or (h, w) of the pooled features.
        scales: 1 / stride of each feature map, finest first (e.g. 1/4 ... 1/32).
            Several scales must be consecutive powers of two (FPN levels).
        sampling_ratio: samples per bin side (0: adaptive).
        aligned: RoIAlign convention (True: half-pixel corrected; False: legacy).
        canonical_box_size, canonical_level: a box of this side goes to this level.
    """

    def __init__(
        self,
        output_size: Union[int, Tuple[int, int]],
        scales: Sequence[float],
        sampling_ratio: int,
        aligned: bool,
        canonical_box_size: float = 224,
        canonical_level: int = 4,
    ):
        super().__init__()
        scales = [float(s) for s in scales]
        if not scales:
            raise ValueError("ROIPooler needs at least one feature-map scale")
        levels = [-math.log2(s) for s in scales]
        if len(scales) > 1:
            if any(abs(lv - round(lv)) > 1e-6 for lv in levels):
                raise ValueError(f"ROIPooler scales must be powers of 2 for FPN levels, got {scales}")
            levels = [int(round(lv)) for lv in levels]
            if levels != list(range(levels[0], levels[0] + len(levels))):
                raise ValueError(
                    f"ROIPooler scales must be consecutive levels, finest first, got {scales}"
                )
        self.output_size = (output_size, output_size) if isinstance(output_size, int) else tuple(output_size)
        self.scales = scales
        self.min_level = int(round(levels[0]))
        self.max_level = int(round(levels[-1]))
        self.canonical_box_size = canonical_box_size
        self.canonical_level = canonical_level
        self.level_poolers = nn.ModuleList(
            ROIAlign(self.output_size, spatial_scale=s, sampling_ratio=sampling_ratio, aligned=aligned)
            for s in scales
        )

    def forward(self, features: List[torch.Tensor], boxes: List[Boxes]) -> torch.Tensor:
        """Pool the boxes of every image.

        Args:
            features: one (B, C, H_l, W_l) tensor per level, finest first.
            boxes: B ``Boxes`` in input-image pixels, one per image.
        Returns:
            (R, C, h, w), R = total boxes, in image order then box order.
        """
        if len(features) != len(self.level_poolers):
            raise ValueError(
                f"ROIPooler was built for {len(self.level_poolers)} feature maps "
                f"(scales {self.scales}) but got {len(features)}"
            )
        if len(boxes) != features[0].shape[0]:
            raise ValueError(
                f"ROIPooler got boxes for {len(boxes)} images but features for {features[0].shape[0]}"
            )
        return self.pool(features, boxes_to_rois(boxes).to(features[0].device))

    def pool(self, features: List[torch.Tensor], rois: torch.Tensor) -> torch.Tensor:
        """Pool (R, 5) ``(image_index, x1, y1, x2, y2)`` rows, each on the level its box selects.

        Tensor in, tensor out, with no branch on the number of boxes, so that the same code
        runs eagerly and under ``torch.export`` (see :mod:`detgn.export`).
        """
        if len(self.level_poolers) == 1:
            return self.level_poolers[0](features[0], rois)
        channels = features[0].shape[1]
        out = features[0].new_zeros((rois.shape[0], channels) + self.output_size)
        level_of_box = level_of_boxes(
            rois[:, 1:], self.min_level, self.max_level, self.canonical_box_size, self.canonical_level
        )
        for level, (feature, pooler) in enumerate(zip(features, self.level_poolers)):
            index = torch.nonzero(level_of_box == level, as_tuple=True)[0]
            out[index] = pooler(feature, rois[index]).to(out.dtype)
        return out
