"""Instance masks: COCO polygons or bitmaps, and the operations the heads need.

``PolygonMasks`` keeps each instance's polygons (one or more parts) in image
coordinates; ``BitMasks`` keeps an (N, H, W) bool tensor (used for RLE
annotations). Both can produce the M x M training targets of the mask head for
given boxes: ``crop_and_resize(boxes, M)`` -> (N, M, M) float in {0, 1} (bitmap
targets are averaged by RoIAlign, so values in [0, 1]).
"""
from __future__ import annotations

from typing import List, Sequence, Union

import numpy as np
import pycocotools.mask as mask_util
import torch
from torchvision.ops import roi_align


def polygons_to_bitmask(polygons: Sequence[np.ndarray], height: int, width: int) -> np.ndarray:
    """Rasterize one instance's polygons (flat x,y arrays) into an (H, W) bool array."""
    if len(polygons) == 0:
        return np.zeros((height, width), dtype=bool)
    rles = mask_util.frPyObjects([np.asarray(p, dtype=np.float64) for p in polygons], height, width)
    return mask_util.decode(mask_util.merge(rles)).astype(bool)


def rle_to_bitmask(rle: dict, height: int, width: int) -> np.ndarray:
    """Decode a COCO RLE (compressed or uncompressed counts) into (H, W) bool."""
    if isinstance(rle.get("counts"), list):
        rle = mask_util.frPyObjects(rle, height, width)
    return mask_util.decode(rle).astype(bool)


class PolygonMasks:
    """N instances, each a list of polygons; a polygon is a flat float64 array
    ``[x0, y0, x1, y1, ...]`` with at least 3 points."""

    def __init__(self, polygons: List[List[Union[np.ndarray, list]]]):
        self.polygons: List[List[np.ndarray]] = []
        for i, polys in enumerate(polygons):
            parts = []
            for p in polys:
                p = np.asarray(p, dtype=np.float64).reshape(-1)
                if p.size < 6 or p.size % 2 != 0:
                    raise ValueError(
                        f"instance {i}: a polygon needs >= 3 (x, y) points, got {p.size} numbers"
                    )
                parts.append(p)
            self.polygons.append(parts)

    def __len__(self) -> int:
        return len(self.polygons)

    def __getitem__(self, item) -> "PolygonMasks":
        if isinstance(item, int):
            return PolygonMasks([self.polygons[item]])
        if isinstance(item, slice):
            return PolygonMasks(self.polygons[item])
        if isinstance(item, torch.Tensor):
            if item.dtype == torch.bool:
                item = item.nonzero().squeeze(1)
            item = item.tolist()
        return PolygonMasks([self.polygons[i] for i in item])

    def to(self, *args, **kwargs) -> "PolygonMasks":
        return self

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    def flip_(self, width: int) -> None:
        """Horizontal flip in place for an image of the given width."""
        for polys in self.polygons:
            for p in polys:
                p[0::2] = width - p[0::2]

    def scale_(self, scale_x: float, scale_y: float) -> None:
        for polys in self.polygons:
            for p in polys:
                p[0::2] *= scale_x
                p[1::2] *= scale_y

    def get_bounding_boxes(self) -> torch.Tensor:
        out = torch.zeros(len(self), 4)
        for i, polys in enumerate(self.polygons):
            pts = np.concatenate(polys).reshape(-1, 2)
            out[i] = torch.tensor([pts[:, 0].min(), pts[:, 1].min(), pts[:, 0].max(), pts[:, 1].max()])
        return out

    def area(self) -> torch.Tensor:
        """(N,) polygon areas by the shoelace formula (parts summed)."""
        areas = []
        for polys in self.polygons:
            a = 0.0
            for p in polys:
                x, y = p[0::2], p[1::2]
                a += 0.5 * abs(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1)))
            areas.append(a)
        return torch.tensor(areas, dtype=torch.float32)

    def to_bitmasks(self, height: int, width: int) -> "BitMasks":
        if len(self) == 0:
            return BitMasks(torch.zeros(0, height, width, dtype=torch.bool))
        arr = np.stack([polygons_to_bitmask(p, height, width) for p in self.polygons])
        return BitMasks(torch.from_numpy(arr))

    def crop_and_resize(self, boxes: torch.Tensor, mask_size: int) -> torch.Tensor:
        """Rasterize each instance inside its box at ``mask_size`` x ``mask_size``.

        Args:
            boxes: (N, 4) boxes, one per instance, in image coordinates.
        Returns:
            (N, M, M) float tensor of 0/1 on ``boxes.device``.
        """
        assert len(boxes) == len(self), f"{len(boxes)} boxes for {len(self)} masks"
        device = boxes.device
        boxes_np = boxes.detach().cpu().double().numpy()  # the host rasterises: one copy of all boxes
        out = np.zeros((len(self), mask_size, mask_size), dtype=np.float32)
        for i, (polys, box) in enumerate(zip(self.polygons, boxes_np)):
            w = max(box[2] - box[0], 0.1)
            h = max(box[3] - box[1], 0.1)
            shifted = []
            for p in polys:
                q = p.copy()
                q[0::2] = (q[0::2] - box[0]) * (mask_size / w)
                q[1::2] = (q[1::2] - box[1]) * (mask_size / h)
                shifted.append(q)
            out[i] = polygons_to_bitmask(shifted, mask_size, mask_size)
        return torch.from_numpy(out).to(device)

    @staticmethod
    def cat(masks_list: List["PolygonMasks"]) -> "PolygonMasks":
        return PolygonMasks([p for m in masks_list for p in m.polygons])


class BitMasks:
    """N instance bitmaps as an (N, H, W) bool tensor."""

    def __init__(self, tensor: Union[torch.Tensor, np.ndarray]):
        tensor = torch.as_tensor(tensor, dtype=torch.bool)
        if tensor.dim() != 3:
            raise ValueError(f"BitMasks expects (N, H, W), got {tuple(tensor.shape)}")
        self.tensor = tensor

    @property
    def image_size(self):
        return tuple(self.tensor.shape[1:])

    def __len__(self) -> int:
        return self.tensor.shape[0]

    def __getitem__(self, item) -> "BitMasks":
        if isinstance(item, int):
            return BitMasks(self.tensor[item].unsqueeze(0))
        return BitMasks(self.tensor[item])

    def to(self, *args, **kwargs) -> "BitMasks":
        return BitMasks(self.tensor.to(*args, **kwargs))

    @property
    def device(self) -> torch.device:
        return self.tensor.device

    def area(self) -> torch.Tensor:
        return self.tensor.flatten(1).sum(1).float()

    def get_bounding_boxes(self) -> torch.Tensor:
        boxes = torch.zeros(len(self), 4)
        xs = self.tensor.any(dim=1)
        ys = self.tensor.any(dim=2)
        for i in range(len(self)):
            x = torch.where(xs[i])[0]
            y = torch.where(ys[i])[0]
            if len(x) and len(y):
                boxes[i] = torch.tensor([x[0], y[0], x[-1] + 1, y[-1] + 1], dtype=torch.float32)
        return boxes

    def crop_and_resize(self, boxes: torch.Tensor, mask_size: int) -> torch.Tensor:
        """(N, M, M) float targets: each bitmap RoIAligned inside its box."""
        assert len(boxes) == len(self), f"{len(boxes)} boxes for {len(self)} masks"
        device = self.tensor.device
        n = len(boxes)
        if n == 0:
            return torch.zeros(0, mask_size, mask_size, device=device)
        rois = torch.cat(
            [torch.arange(n, device=device, dtype=torch.float32)[:, None], boxes.to(device).float()], 1
        )
        out = roi_align(
            self.tensor[:, None].float(), rois, (mask_size, mask_size), 1.0, 0, aligned=True
        )
        return (out.squeeze(1) >= 0.5).float()

    @staticmethod
    def cat(masks_list: List["BitMasks"]) -> "BitMasks":
        return BitMasks(torch.cat([m.tensor for m in masks_list], dim=0))
