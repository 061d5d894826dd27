"""The training/test geometry: resize by the shorter side (longer side capped), h-flip.

One :class:`ResizeFlip` describes what was done to an image so that boxes, polygons
and bitmaps follow it exactly. Coordinates are continuous pixels: pixel ``i`` covers
``[i, i + 1)``, so a resize scales x by ``new_w / w`` and a flip maps ``x -> W - x``
(the convention of ``cv2.resize`` and of ``PolygonMasks.flip_``).

Randomness comes only from the ``numpy.random.Generator`` passed to
:func:`sample_resize_flip`, so an augmentation is reproducible from its seed.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Sequence, Tuple

import cv2
import numpy as np

__all__ = ["resized_shape", "ResizeFlip", "sample_resize_flip"]


def resized_shape(height: int, width: int, short_side: int, max_size: int) -> Tuple[int, int]:
    """(new_height, new_width) with the shorter side ``short_side``, the longer <= ``max_size``.

    ``max_size <= 0`` means no cap. Sizes are rounded to the nearest integer.
    """
    if height <= 0 or width <= 0:
        raise ValueError(f"image size must be positive, got {height}x{width}")
    scale = short_side / min(height, width)
    if max_size > 0 and max(height, width) * scale > max_size:
        scale = max_size / max(height, width)
    return max(1, int(height * scale + 0.5)), max(1, int(width * scale + 0.5))


@dataclass(frozen=True)
class ResizeFlip:
    """Resize an image from ``(height, width)`` to ``(new_height, new_width)``, then
    flip it horizontally if ``flip``."""

    height: int
    width: int
    new_height: int
    new_width: int
    flip: bool = False

    @property
    def scale_x(self) -> float:
        return self.new_width / self.width

    @property
    def scale_y(self) -> float:
        return self.new_height / self.height

    def apply_image(self, image: np.ndarray) -> np.ndarray:
        """(H, W, C) uint8 -> (new_height, new_width, C) uint8, bilinear."""
        if image.shape[:2] != (self.height, self.width):
            raise ValueError(f"ResizeFlip for {self.height}x{self.width} applied to an image of {image.shape[:2]}")
        out = image
        if (self.new_height, self.new_width) != (self.height, self.width):
            out = cv2.resize(out, (self.new_width, self.new_height), interpolation=cv2.INTER_LINEAR)
        if self.flip:
            # cv2.flip is ~10x faster than copying a negative-stride numpy view.
            out = cv2.flip(np.ascontiguousarray(out), 1)
        if out.ndim == 2 and image.ndim == 3:  # cv2 drops a trailing channel axis of size 1
            out = out[:, :, None]
        return np.ascontiguousarray(out)

    def apply_boxes(self, boxes: np.ndarray) -> np.ndarray:
        """(N, 4) x1y1x2y2 float boxes in the input image -> (N, 4) in the output image."""
        b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4).copy()
        b[:, 0::2] *= self.scale_x
        b[:, 1::2] *= self.scale_y
        if self.flip:
            b[:, [0, 2]] = self.new_width - b[:, [2, 0]]
        return b

    def apply_polygons(self, polygons: Sequence[np.ndarray]) -> List[np.ndarray]:
        """Flat ``[x0, y0, x1, y1, ...]`` polygons -> new float64 arrays in the output image."""
        out = []
        for p in polygons:
            q = np.asarray(p, dtype=np.float64).copy()
            q[0::2] *= self.scale_x
            q[1::2] *= self.scale_y
            if self.flip:
                q[0::2] = self.new_width - q[0::2]
            out.append(q)
        return out

    def apply_bitmasks(self, masks: np.ndarray) -> np.ndarray:
        """(N, H, W) bool -> (N, new_height, new_width) bool (nearest neighbour)."""
        masks = np.asarray(masks, dtype=bool)
        if masks.shape[1:] != (self.height, self.width):
            raise ValueError(f"ResizeFlip for {self.height}x{self.width} applied to masks of {masks.shape[1:]}")
        out = np.zeros((masks.shape[0], self.new_height, self.new_width), dtype=bool)
        for i, m in enumerate(masks):
            r = cv2.resize(m.astype(np.uint8), (self.new_width, self.new_height), interpolation=cv2.INTER_NEAREST)
            out[i] = r.astype(bool)
        if self.flip:
            out = out[:, :, ::-1]
        return np.ascontiguousarray(out)


def sample_resize_flip(
    height: int,
    width: int,
    *,
    short_sizes: Sequence[int],
    max_size: int,
    flip_prob: float,
    rng: np.random.Generator,
) -> ResizeFlip:
    """Draw one shorter side from ``short_sizes`` and a flip with probability ``flip_prob``.

    Both draws are always made (even for one size, or p in {0, 1}) so the generator's
    stream is consumed the same way whatever the settings.
    """
    if len(short_sizes) == 0:
        raise ValueError("short_sizes is empty; give at least one shorter-side size")
    short = int(short_sizes[int(rng.integers(len(short_sizes)))])
    flip = bool(rng.random() < flip_prob)
    new_h, new_w = resized_shape(height, width, short, max_size)
    return ResizeFlip(height, width, new_h, new_w, flip)
