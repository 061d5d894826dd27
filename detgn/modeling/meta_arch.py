"""GeneralizedRCNN: backbone -> RPN -> RoI heads, with input normalisation and output resizing.

Input: a batch is a ``list[dict]`` of mapper outputs (``image`` uint8 (3, H', W') in
INPUT.FORMAT order, ``height``/``width`` of the original image, ``instances`` in
training). Output: a loss dict in training; per image ``{"instances": Instances}``
at the original (height, width) in inference.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from detgn.layers.auxiliary import pop_aux_losses
from detgn.layers.mask_ops import paste_masks_in_image
from detgn.structures import Boxes, ImageList, Instances
from detgn.utils.cpu import bf16_autocast, log_bf16_choice, resolve_bf16


def detector_postprocess(
    results: Instances, output_height: int, output_width: int, mask_threshold: float = 0.5,
    mask_paste: str = "grid_sample",
) -> Instances:
    """Rescale detections from the network's input size to the original image size.

    Boxes are scaled and clipped, detections whose box became empty are dropped, and
    ``pred_masks`` (D, 1, M, M) probabilities are pasted into (D, H, W) bool masks.

    Args:
        results: detections at ``results.image_size`` (the resized image).
        output_height, output_width: the original image size.
        mask_threshold: probability at which a mask pixel is on.
        mask_paste: "grid_sample", "detectron" or "torchvision" (see :mod:`detgn.layers.mask_ops`).
    Returns:
        Instances of image size (output_height, output_width).
    """
    in_h, in_w = results.image_size
    scale_x, scale_y = output_width / in_w, output_height / in_h
    out = Instances((output_height, output_width), **results.get_fields())
    boxes = out.pred_boxes.clone()
    boxes.scale(scale_x, scale_y)
    boxes.clip(out.image_size)
    out.pred_boxes = boxes
    out = out[boxes.nonempty()]
    if out.has("pred_masks"):
        out.pred_masks = paste_masks_in_image(
            out.pred_masks, out.pred_boxes, out.image_size, threshold=mask_threshold, method=mask_paste
        )
    return out


def resize_like_torchvision(image: torch.Tensor, min_size: int, max_size: int) -> torch.Tensor:
    """(C, H, W) float image resized as torchvision's ``GeneralizedRCNNTransform`` resizes at test
    time: scale = min(min_size / short side, max_size / long side), bilinear ``interpolate`` with
    ``recompute_scale_factor`` (sides floored: 480x640 -> 800x1066), on the normalised image."""
    h, w = image.shape[-2:]
    scale = min(min_size / min(h, w), max_size / max(h, w))
    return F.interpolate(image[None], scale_factor=scale, mode="bilinear", recompute_scale_factor=True,
                         align_corners=False)[0]


class GeneralizedRCNN(nn.Module):
    """Mask R-CNN / Faster R-CNN.

    Args:
        backbone: ResNet(-FPN) returning named feature maps, with ``size_divisibility``.
        proposal_generator: the RPN.
        roi_heads: ``StandardROIHeads`` (FPN) or ``Res5ROIHeads`` (C4).
        pixel_mean, pixel_std: per-channel statistics in ``input_format`` order.
        input_format: "BGR" or "RGB", the channel order of ``image``.
        mask_on: whether ``roi_heads`` predicts masks (checked against it).
        mask_paste: how masks are pasted into the image ("grid_sample", "detectron",
            "torchvision"; MODEL.ROI_MASK_HEAD.PASTE_METHOD).
        test_resize: (min_size, max_size) to resize test images inside the model, after
            normalisation, as torchvision's GeneralizedRCNNTransform does (INPUT.RESIZE_TEST
            "torchvision"); None: the mapper has resized them.
        inference_bf16: run inference on the CPU under bfloat16 autocast (CPU.BF16, resolved by
            :func:`detgn.utils.cpu.resolve_bf16`); proposals, scores, boxes and mask
            probabilities are still computed in float32 from the network's outputs.
        inference_amp: run inference on CUDA under float16 autocast (TEST.AMP), likewise.
    """

    def __init__(
        self,
        *,
        backbone: nn.Module,
        proposal_generator: nn.Module,
        roi_heads: nn.Module,
        pixel_mean: Sequence[float],
        pixel_std: Sequence[float],
        input_format: str = "BGR",
        mask_on: bool = True,
        mask_paste: str = "grid_sample",
        inference_bf16: bool = False,
        inference_amp: bool = False,
        test_resize: Optional[Tuple[int, int]] = None,
    ):
        super().__init__()
        self.test_resize = tuple(test_resize) if test_resize else None
        self.inference_bf16 = bool(inference_bf16)
        self.inference_amp = bool(inference_amp)
        from detgn.layers.mask_ops import PASTE_METHODS

        if mask_paste not in PASTE_METHODS:
            raise ValueError(f"MODEL.ROI_MASK_HEAD.PASTE_METHOD must be one of {PASTE_METHODS}, got {mask_paste!r}")
        self.mask_paste = mask_paste
        if input_format not in ("BGR", "RGB"):
            raise ValueError(f"input_format (INPUT.FORMAT) must be 'BGR' or 'RGB', got {input_format!r}")
        if len(pixel_mean) != len(pixel_std):
            raise ValueError(f"MODEL.PIXEL_MEAN {list(pixel_mean)} and MODEL.PIXEL_STD {list(pixel_std)} differ in length")
        if bool(getattr(roi_heads, "mask_on", False)) != bool(mask_on):
            raise ValueError(f"mask_on={mask_on} but the RoI heads were built with mask_on={roi_heads.mask_on}")
        self.backbone = backbone
        self.proposal_generator = proposal_generator
        self.roi_heads = roi_heads
        self.input_format = input_format
        self.mask_on = mask_on
        # Not saved: they come from the config, and old checkpoints must still load.
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean, dtype=torch.float32).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std, dtype=torch.float32).view(-1, 1, 1), False)

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    @property
    def size_divisibility(self) -> int:
        """Padded inputs are a multiple of this (32, or more if the backbone needs it)."""
        return max(32, int(getattr(self.backbone, "size_divisibility", 0) or 0))

    def preprocess_image(self, batched_inputs: List[Dict]) -> ImageList:
        """Normalise each image and pad the batch to ``size_divisibility``."""
        images = []
        for i, x in enumerate(batched_inputs):
            if "image" not in x:
                raise ValueError(f"batch item {i} ({x.get('file_name', 'no file_name')}) has no 'image' tensor")
            img = x["image"]
            if img.dim() != 3 or img.shape[0] != self.pixel_mean.shape[0]:
                raise ValueError(
                    f"batch item {i} ({x.get('file_name', 'no file_name')}): 'image' must be "
                    f"({self.pixel_mean.shape[0]}, H, W), got {tuple(img.shape)}"
                )
            x = (img.to(self.device, non_blocking=True).to(self.pixel_mean.dtype) - self.pixel_mean) / self.pixel_std
            if self.test_resize is not None and not self.training:
                x = resize_like_torchvision(x, *self.test_resize)
            images.append(x)
        return ImageList.from_tensors(images, self.size_divisibility, pad_value=0.0)

    def _gt_instances(self, batched_inputs: List[Dict]) -> List[Instances]:
        out = []
        for i, x in enumerate(batched_inputs):
            if "instances" not in x:
                raise ValueError(
                    f"training batch item {i} ({x.get('file_name', 'no file_name')}) has no 'instances'; "
                    "use a training mapper (is_train=True)"
                )
            inst = x["instances"]
            if len(inst) == 0 and not inst.has("gt_boxes"):
                # An image without annotations may come with a field-less Instances.
                inst = Instances(inst.image_size, gt_boxes=Boxes(torch.zeros(0, 4)),
                                 gt_classes=torch.zeros(0, dtype=torch.int64))
            for field in ("gt_boxes", "gt_classes"):
                if not inst.has(field):
                    raise ValueError(f"training batch item {i}: 'instances' has no '{field}'")
            if self.mask_on and len(inst) > 0 and not inst.has("gt_masks"):
                raise ValueError(
                    f"training batch item {i} ({x.get('file_name', 'no file_name')}): MODEL.MASK_ON is set "
                    "but 'instances' has no 'gt_masks'; load the dataset with segmentations"
                )
            out.append(inst.to(self.device))
        return out

    def forward(self, batched_inputs: List[Dict]):
        """Training: ``{loss_rpn_cls, loss_rpn_loc, loss_cls, loss_box_reg[, loss_mask][, loss_evalnorm]}``.
        Inference: per image ``{"instances": Instances}`` at the original size."""
        if not self.training:
            return self.inference(batched_inputs)
        images = self.preprocess_image(batched_inputs)
        gt_instances = self._gt_instances(batched_inputs)
        features = self.backbone(images.tensor)
        proposals, proposal_losses = self.proposal_generator(images, features, gt_instances)
        _, detector_losses = self.roi_heads(images, features, proposals, gt_instances)
        losses = dict(proposal_losses)
        losses.update(detector_losses)
        losses.update(pop_aux_losses(self))  # what layers record beside the model (e.g. EvalNorm fitted online)
        return losses

    def inference(self, batched_inputs: List[Dict], do_postprocess: bool = True) -> List:
        """Detections per image; ``do_postprocess=False`` keeps them at the network's input size
        (masks as (D, 1, M, M) probabilities) and returns the Instances themselves."""
        images = self.preprocess_image(batched_inputs)
        with self._inference_autocast():
            features = self.backbone(images.tensor)
            proposals, _ = self.proposal_generator(images, features, None)
            results, _ = self.roi_heads(images, features, proposals, None)
        if not do_postprocess:
            return results
        processed = []
        for res, x, size in zip(results, batched_inputs, images.image_sizes):
            height = int(x.get("height", size[0]))
            width = int(x.get("width", size[1]))
            processed.append({"instances": detector_postprocess(res, height, width, mask_paste=self.mask_paste)})
        return processed

    def _inference_autocast(self):
        if self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.float16, enabled=self.inference_amp)
        return bf16_autocast(self.inference_bf16 and self.device.type == "cpu")

    @classmethod
    def from_config(cls, cfg) -> "GeneralizedRCNN":
        """Build every part from the config (see :func:`detgn.modeling.build_model`)."""
        # Imported here so that importing detgn.modeling (which a backbone module's
        # import does first) never pulls in, or cycles through, the backbone package.
        from detgn.modeling.backbone import build_backbone
        from detgn.modeling.proposal_generator import build_proposal_generator
        from detgn.modeling.roi_heads import build_roi_heads

        backbone = build_backbone(cfg)
        shapes = backbone.output_shape()
        bf16 = resolve_bf16(cfg.CPU.BF16, cfg.MODEL.DEVICE)
        log_bf16_choice(bf16, "inference")
        return cls(
            backbone=backbone,
            proposal_generator=build_proposal_generator(cfg, shapes),
            roi_heads=build_roi_heads(cfg, shapes),
            pixel_mean=cfg.MODEL.PIXEL_MEAN,
            pixel_std=cfg.MODEL.PIXEL_STD,
            input_format=cfg.INPUT.FORMAT,
            mask_on=cfg.MODEL.MASK_ON,
            mask_paste=cfg.MODEL.ROI_MASK_HEAD.PASTE_METHOD,
            inference_bf16=bf16.enabled,
            inference_amp=bool(cfg.TEST.AMP),
            test_resize=((cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST)
                         if cfg.INPUT.RESIZE_TEST == "torchvision" else None),
        )
