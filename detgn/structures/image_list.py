"""A batch of differently sized images padded into one tensor."""
from __future__ import annotations

from typing import List, Tuple

import torch
import torch.nn.functional as F


class ImageList:
    """Padded batch ``tensor`` (N, C, H, W) plus each image's true ``(h, w)``."""

    def __init__(self, tensor: torch.Tensor, image_sizes: List[Tuple[int, int]]):
        self.tensor = tensor
        self.image_sizes = image_sizes

    def __len__(self) -> int:
        return len(self.image_sizes)

    def __getitem__(self, idx) -> torch.Tensor:
        h, w = self.image_sizes[idx]
        return self.tensor[idx, ..., :h, :w]

    def to(self, *args, **kwargs) -> "ImageList":
        return ImageList(self.tensor.to(*args, **kwargs), self.image_sizes)

    @property
    def device(self) -> torch.device:
        return self.tensor.device

    @staticmethod
    def padded_size(image_sizes: List[Tuple[int, int]], size_divisibility: int = 0) -> Tuple[int, int]:
        """(H, W) that :meth:`from_tensors` pads images of ``image_sizes`` to: the largest
        height and width, each rounded up to a multiple of ``size_divisibility`` (if > 1)."""
        max_h = max(s[0] for s in image_sizes)
        max_w = max(s[1] for s in image_sizes)
        if size_divisibility > 1:
            d = size_divisibility
            max_h = (max_h + d - 1) // d * d
            max_w = (max_w + d - 1) // d * d
        return max_h, max_w

    @staticmethod
    def from_tensors(
        tensors: List[torch.Tensor], size_divisibility: int = 0, pad_value: float = 0.0
    ) -> "ImageList":
        """Pad (C, H, W) tensors to a common size, a multiple of ``size_divisibility``."""
        assert len(tensors) > 0
        image_sizes = [(int(t.shape[-2]), int(t.shape[-1])) for t in tensors]
        max_h, max_w = ImageList.padded_size(image_sizes, size_divisibility)
        if len(tensors) == 1:
            t = tensors[0]
            pad = (0, max_w - t.shape[-1], 0, max_h - t.shape[-2])
            batched = F.pad(t, pad, value=pad_value).unsqueeze(0)
        else:
            shape = (len(tensors),) + tuple(tensors[0].shape[:-2]) + (max_h, max_w)
            batched = tensors[0].new_full(shape, pad_value)
            for i, t in enumerate(tensors):
                batched[i, ..., : t.shape[-2], : t.shape[-1]].copy_(t)
        return ImageList(batched.contiguous(), image_sizes)
