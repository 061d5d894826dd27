"""``torchvision.ops`` wrapped once: NMS and RoIAlign, safe on empty inputs.

Everything else in detgn calls these, so a change of backend or a workaround for
an op happens here only.
"""
from __future__ import annotations

from typing import Tuple, Union

import torch
from torch import nn
from torchvision.ops import batched_nms as _tv_batched_nms
from torchvision.ops import nms as _tv_nms
from torchvision.ops import roi_align as _tv_roi_align


def at_least_fp32(x: torch.Tensor) -> torch.Tensor:
    """``x`` in float32 if it is in a 16-bit float type (bf16 / fp16 autocast outputs), else unchanged
    (float64 stays float64)."""
    return x.float() if x.dtype in (torch.bfloat16, torch.float16) else x


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Indices (int64, by decreasing score) of the boxes kept by NMS.

    Args:
        boxes: (N, 4) x1y1x2y2. scores: (N,).
    Returns:
        (K,) int64, K <= N (empty when N = 0).
    """
    if boxes.numel() == 0:
        return torch.empty(0, dtype=torch.int64, device=boxes.device)
    return _tv_nms(boxes.float(), scores.float(), iou_threshold)


def batched_nms(
    boxes: torch.Tensor, scores: torch.Tensor, idxs: torch.Tensor, iou_threshold: float
) -> torch.Tensor:
    """NMS done independently per category ``idxs``.

    Args:
        boxes: (N, 4) x1y1x2y2. scores: (N,). idxs: (N,) int category (or level) ids.
    Returns:
        (K,) int64 indices of kept boxes, by decreasing score (empty when N = 0).
    """
    if boxes.numel() == 0:
        return torch.empty(0, dtype=torch.int64, device=boxes.device)
    # float32: the coordinate offset trick inside batched NMS loses boxes in fp16.
    return _tv_batched_nms(boxes.float(), scores.float(), idxs, iou_threshold)


def _pair(size: Union[int, Tuple[int, int]]) -> Tuple[int, int]:
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


_EXECUTOR = None


def _map_threads(fn, parts):
    """``[fn(p) for p in parts]`` on a pool of threads (torch's kernels release the GIL)."""
    global _EXECUTOR
    if _EXECUTOR is None or _EXECUTOR._max_workers < len(parts):
        from concurrent.futures import ThreadPoolExecutor

        _EXECUTOR = ThreadPoolExecutor(max_workers=max(len(parts), 2), thread_name_prefix="detgn-roi-align")
    return list(_EXECUTOR.map(fn, parts))


class _ThreadedRoIAlign(torch.autograd.Function):
    """torchvision's CPU RoIAlign kernels run on one thread each. This runs the forward on
    ``parts`` slices of the RoIs and the backward on ``parts`` slices of the channels, at once,
    so each output value is computed by the same code in the same order: bit-identical to
    one call (``tests/layers/test_roi_align_threads.py``), 1.4-2x faster on 2 threads."""

    @staticmethod
    def forward(ctx, input, rois, output_size, spatial_scale, sampling_ratio, aligned, parts):
        input = input.contiguous()
        ctx.save_for_backward(rois)
        ctx.args = (input.shape, output_size, spatial_scale, sampling_ratio, aligned, parts)

        def run(r):
            return torch.ops.torchvision.roi_align(input, r, spatial_scale, output_size[0], output_size[1],
                                                   sampling_ratio, aligned)

        return torch.cat(_map_threads(run, rois.tensor_split(parts)))

    @staticmethod
    def backward(ctx, grad):
        (rois,) = ctx.saved_tensors
        (b, c, h, w), (ph, pw), spatial_scale, sampling_ratio, aligned, parts = ctx.args

        def run(g):
            g = g.contiguous()
            return torch.ops.torchvision._roi_align_backward(g, rois, spatial_scale, ph, pw, b, g.shape[1], h, w,
                                                            sampling_ratio, aligned)

        return torch.cat(_map_threads(run, grad.tensor_split(parts, dim=1)), dim=1), None, None, None, None, None, None


def _roi_align_op(input, rois, output_size, spatial_scale, sampling_ratio, aligned):
    parts = min(torch.get_num_threads(), 8)
    # Plain tensors only: a tracer's (torch.export, torch.compile) fake or functional tensors take
    # torchvision's op, which those tracers know.
    if (parts > 1 and type(input) is torch.Tensor and type(rois) is torch.Tensor and input.device.type == "cpu"
            and rois.shape[0] >= 2 * parts and input.shape[1] >= parts and not torch.compiler.is_compiling()):
        return _ThreadedRoIAlign.apply(input, rois, output_size, spatial_scale, sampling_ratio, aligned, parts)
    return _tv_roi_align(input, rois, output_size, spatial_scale, sampling_ratio, aligned)


def roi_align(
    input: torch.Tensor,
    rois: torch.Tensor,
    output_size: Union[int, Tuple[int, int]],
    spatial_scale: float,
    sampling_ratio: int,
    aligned: bool,
) -> torch.Tensor:
    """RoIAlign of boxes given in image pixels.

    Args:
        input: (B, C, H, W) features.
        rois: (R, 5) rows ``(batch_index, x1, y1, x2, y2)`` in input-image pixels.
        output_size: int or (h, w).
        spatial_scale: feature pixels per image pixel (1 / stride).
        sampling_ratio: samples per bin side (0: adaptive).
        aligned: True shifts box coordinates by -0.5 pixel (pixel centres at +0.5, the
            corrected convention); False is the legacy Detectron/torchvision one.
    Returns:
        (R, C, h, w); (0, C, h, w) when R = 0.
    """
    # torchvision returns (0, C, h, w) for zero rois, still attached to the graph
    # (a zero gradient for ``input``), which a loss over no RoIs needs.
    if input.dtype in (torch.bfloat16, torch.float16):
        # Box coordinates in bf16 (8-bit mantissa) would be off by up to 4 px at x ~ 1000:
        # sample in float32, return the features in the input's precision (what torchvision's
        # own autocast wrapper does), never rounding the boxes.
        out = _roi_align_op(input.float(), rois.float().reshape(-1, 5), _pair(output_size), spatial_scale,
                            sampling_ratio, aligned)
        return out.to(input.dtype)
    rois = rois.to(input.dtype).reshape(-1, 5)
    return _roi_align_op(input, rois, _pair(output_size), spatial_scale, sampling_ratio, aligned)


class ROIAlign(nn.Module):
    """Module form of :func:`roi_align` with fixed settings; ``forward(input, rois)``."""

    def __init__(
        self,
        output_size: Union[int, Tuple[int, int]],
        spatial_scale: float,
        sampling_ratio: int,
        aligned: bool = True,
    ):
        super().__init__()
        self.output_size = _pair(output_size)
        self.spatial_scale = spatial_scale
        self.sampling_ratio = sampling_ratio
        self.aligned = aligned

    def forward(self, input: torch.Tensor, rois: torch.Tensor) -> torch.Tensor:
        """input (B, C, H, W), rois (R, 5) -> (R, C, h, w)."""
        if input.dim() != 4 or rois.dim() != 2 or rois.shape[-1] != 5:
            raise ValueError(
                f"ROIAlign expects (B, C, H, W) features and (R, 5) rois, got "
                f"{tuple(input.shape)} and {tuple(rois.shape)}"
            )
        return roi_align(
            input, rois, self.output_size, self.spatial_scale, self.sampling_ratio, self.aligned
        )

    def extra_repr(self) -> str:
        return (
            f"output_size={self.output_size}, spatial_scale={self.spatial_scale}, "
            f"sampling_ratio={self.sampling_ratio}, aligned={self.aligned}"
        )
