"""Axis-aligned boxes in (x1, y1, x2, y2) absolute pixel coordinates.

Width is ``x2 - x1`` (no legacy +1): a box from 0 to 10 covers 10 pixels.
"""
from __future__ import annotations

from typing import List, Tuple, Union

import torch
from torchvision.ops import box_iou


class Boxes:
    """A list of N boxes stored as an (N, 4) float tensor ``x1, y1, x2, y2``."""

    def __init__(self, tensor: Union[torch.Tensor, list, tuple]):
        device = tensor.device if isinstance(tensor, torch.Tensor) else torch.device("cpu")
        tensor = torch.as_tensor(tensor, dtype=torch.float32, device=device)
        if tensor.numel() == 0:
            tensor = tensor.reshape(0, 4)
        if tensor.dim() != 2 or tensor.shape[-1] != 4:
            raise ValueError(f"Boxes expects an (N, 4) tensor, got shape {tuple(tensor.shape)}")
        self.tensor = tensor

    def clone(self) -> "Boxes":
        return Boxes(self.tensor.clone())

    def to(self, device) -> "Boxes":
        return Boxes(self.tensor.to(device))

    @property
    def device(self) -> torch.device:
        return self.tensor.device

    def area(self) -> torch.Tensor:
        """(N,) areas; a degenerate box has area 0 (never negative)."""
        b = self.tensor
        return (b[:, 2] - b[:, 0]).clamp(min=0) * (b[:, 3] - b[:, 1]).clamp(min=0)

    def clip(self, image_size: Tuple[int, int]) -> None:
        """Clip in place to an image of size (height, width)."""
        h, w = image_size
        self.tensor[:, 0].clamp_(min=0, max=w)
        self.tensor[:, 1].clamp_(min=0, max=h)
        self.tensor[:, 2].clamp_(min=0, max=w)
        self.tensor[:, 3].clamp_(min=0, max=h)

    def nonempty(self, threshold: float = 0.0) -> torch.Tensor:
        """(N,) bool: boxes whose width and height both exceed ``threshold``."""
        b = self.tensor
        return ((b[:, 2] - b[:, 0]) > threshold) & ((b[:, 3] - b[:, 1]) > threshold)

    def scale(self, scale_x: float, scale_y: float) -> None:
        """Scale coordinates in place (e.g. after an image resize)."""
        self.tensor[:, 0::2] *= scale_x
        self.tensor[:, 1::2] *= scale_y

    def get_centers(self) -> torch.Tensor:
        return (self.tensor[:, :2] + self.tensor[:, 2:]) / 2

    def __getitem__(self, item) -> "Boxes":
        if isinstance(item, int):
            return Boxes(self.tensor[item].view(1, -1))
        b = self.tensor[item]
        return Boxes(b.reshape(-1, 4))

    def __len__(self) -> int:
        return self.tensor.shape[0]

    def __iter__(self):
        yield from self.tensor

    def __repr__(self) -> str:
        return f"Boxes({self.tensor})"

    @staticmethod
    def cat(boxes_list: List["Boxes"]) -> "Boxes":
        if len(boxes_list) == 0:
            return Boxes(torch.empty(0, 4))
        return Boxes(torch.cat([b.tensor for b in boxes_list], dim=0))


def pairwise_iou(boxes1: Boxes, boxes2: Boxes) -> torch.Tensor:
    """(N, M) IoU between every pair of boxes."""
    if len(boxes1) == 0 or len(boxes2) == 0:
        return boxes1.tensor.new_zeros((len(boxes1), len(boxes2)))
    return box_iou(boxes1.tensor, boxes2.tensor)
