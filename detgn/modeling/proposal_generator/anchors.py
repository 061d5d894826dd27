"""Anchor boxes laid on every location of the RPN's feature maps.

Anchor order, the same on every level: location-major over the feature map
(row y, then column x), then the A = len(ratios) * len(sizes) cell anchors of a
location in **ratio-major** order: ``a = r * len(sizes) + s`` for the r-th aspect
ratio and the s-th size (Detectron's order). FPN has one size per level, so a
location holds [ratio 0.5, 1, 2]; C4's single map with 5 sizes holds
[0.5: 32, 64, ..., 512, 1.0: 32, ..., 2.0: 32, ...]. The RPN head's A output
channels per location follow the same order.

An anchor of size s and aspect ratio r (= height / width) has area s^2:
``w = s / sqrt(r)``, ``h = s * sqrt(r)``, centred on ``((x + offset) * stride,
(y + offset) * stride)``.
"""
from __future__ import annotations

import math
from typing import List, Optional, Sequence

import torch
from torch import nn

from detgn.layers.shape_spec import ShapeSpec
from detgn.structures import Boxes


def _broadcast_per_level(values: Sequence, num_levels: int, key: str) -> List[List[float]]:
    """One list per level; a single list is reused for every level."""
    values = [list(v) for v in values]
    if len(values) == 1:
        return values * num_levels
    if len(values) != num_levels:
        raise ValueError(
            f"{key} has {len(values)} lists for {num_levels} feature maps; give one list per "
            f"feature map in MODEL.RPN.IN_FEATURES or a single list for all of them"
        )
    return values


def generate_cell_anchors(sizes: Sequence[float], aspect_ratios: Sequence[float], round_to_pixels: bool = False) -> torch.Tensor:
    """(len(ratios) * len(sizes), 4) anchors centred at (0, 0), ratio-major.

    ``round_to_pixels`` rounds each coordinate to the nearest integer (half to even), as
    torchvision's ``AnchorGenerator`` does (``base_anchors.round()``): P2's ratio-0.5 anchor
    is then [-23, -11, 23, 11] instead of [-22.63, -11.31, 22.63, 11.31].
    """
    anchors = []
    for ratio in aspect_ratios:
        for size in sizes:
            w = size / math.sqrt(ratio)
            h = size * math.sqrt(ratio)
            anchors.append([-w / 2.0, -h / 2.0, w / 2.0, h / 2.0])
    out = torch.tensor(anchors, dtype=torch.float32)
    return out.round() if round_to_pixels else out


class DefaultAnchorGenerator(nn.Module):
    """Anchors for a list of feature maps (one stride per map).

    Args:
        sizes: one list of sizes (pixels, sqrt of the area) per feature map.
        aspect_ratios: one list of height/width ratios per feature map.
        strides: input pixels per feature pixel, one per feature map.
        offset: centre of the first anchor, as a fraction of the stride (0 or 0.5).
        round_to_pixels: round the cell anchors to integers (torchvision's convention).
        strides_from_image_size: take each level's stride from the padded image, (H // h_l,
            W // w_l), as torchvision's AnchorGenerator does, instead of ``strides``.
    """

    def __init__(
        self,
        *,
        sizes: Sequence[Sequence[float]],
        aspect_ratios: Sequence[Sequence[float]],
        strides: Sequence[int],
        offset: float = 0.0,
        round_to_pixels: bool = False,
        strides_from_image_size: bool = False,
    ):
        super().__init__()
        self.strides_from_image_size = bool(strides_from_image_size)
        n = len(strides)
        sizes = _broadcast_per_level(sizes, n, "MODEL.ANCHOR_GENERATOR.SIZES")
        aspect_ratios = _broadcast_per_level(aspect_ratios, n, "MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS")
        if not 0.0 <= offset < 1.0:
            raise ValueError(f"MODEL.ANCHOR_GENERATOR.OFFSET must be in [0, 1), got {offset}")
        self.strides = [int(s) for s in strides]
        self.offset = float(offset)
        self.round_to_pixels = bool(round_to_pixels)
        self.sizes = sizes
        self.aspect_ratios = aspect_ratios
        for i, (s, r) in enumerate(zip(sizes, aspect_ratios)):
            # Buffers move with .to(device) but are not saved: they follow from the config.
            self.register_buffer(f"cell_anchors_{i}", generate_cell_anchors(s, r, round_to_pixels),
                                 persistent=False)

    @property
    def cell_anchors(self) -> List[torch.Tensor]:
        return [getattr(self, f"cell_anchors_{i}") for i in range(len(self.strides))]

    @property
    def num_anchors(self) -> List[int]:
        """Anchors per location, one count per feature map."""
        return [len(s) * len(r) for s, r in zip(self.sizes, self.aspect_ratios)]

    def grid_anchors(self, grid_sizes: Sequence[Sequence[int]], strides=None) -> List[torch.Tensor]:
        """(H * W * A, 4) anchors per level for feature maps of the given (H, W).

        ``strides``: per level a stride or a (stride_y, stride_x) pair; default ``self.strides``.
        """
        out = []
        strides = self.strides if strides is None else strides
        for (h, w), stride, cell in zip(grid_sizes, strides, self.cell_anchors):
            stride_y, stride_x = stride if isinstance(stride, (tuple, list)) else (stride, stride)
            device = cell.device
            xs = (torch.arange(w, dtype=torch.float32, device=device) + self.offset) * stride_x
            ys = (torch.arange(h, dtype=torch.float32, device=device) + self.offset) * stride_y
            shift_y, shift_x = torch.meshgrid(ys, xs, indexing="ij")
            shift_x, shift_y = shift_x.reshape(-1), shift_y.reshape(-1)
            shifts = torch.stack((shift_x, shift_y, shift_x, shift_y), dim=1)
            out.append((shifts[:, None, :] + cell[None, :, :]).reshape(-1, 4))
        return out

    def forward(self, features: List[torch.Tensor], image_size: Optional[Sequence[int]] = None) -> List[Boxes]:
        """Anchors for (N, C, H_l, W_l) feature maps; shared by every image of the batch.

        Args:
            image_size: (H, W) of the padded batch; needed with ``strides_from_image_size``.
        Returns:
            one ``Boxes`` of (H_l * W_l * A_l) anchors per level.
        """
        if len(features) != len(self.strides):
            raise ValueError(f"{len(features)} feature maps for {len(self.strides)} anchor strides")
        grid_sizes = [tuple(f.shape[-2:]) for f in features]
        strides = None
        if self.strides_from_image_size:
            if image_size is None:
                raise ValueError("strides_from_image_size needs the padded image size")
            strides = [(image_size[0] // h, image_size[1] // w) for h, w in grid_sizes]
        return [Boxes(a) for a in self.grid_anchors(grid_sizes, strides)]


def build_anchor_generator(cfg, input_shape: List[ShapeSpec]) -> DefaultAnchorGenerator:
    """Anchors for the feature maps ``input_shape`` (in MODEL.RPN.IN_FEATURES order)."""
    return DefaultAnchorGenerator(
        sizes=cfg.MODEL.ANCHOR_GENERATOR.SIZES,
        aspect_ratios=cfg.MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS,
        strides=[s.stride for s in input_shape],
        offset=cfg.MODEL.ANCHOR_GENERATOR.OFFSET,
        round_to_pixels=cfg.MODEL.ANCHOR_GENERATOR.ROUND_CELL_ANCHORS,
        strides_from_image_size=cfg.MODEL.ANCHOR_GENERATOR.STRIDES_FROM_IMAGE_SIZE,
    )
