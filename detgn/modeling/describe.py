"""What a model is made of: parameter counts, the norm and freezing of each part, FLOPs.

:func:`describe_model` is logged by :func:`detgn.modeling.build_model` (with
``VERBOSE_STARTUP``) and printed by ``tools/model_info.py``, so the resolved norm of
every part of a run is on record. :func:`count_flops` counts one inference pass with
fvcore (imported on use: an optional dependency).
"""
from __future__ import annotations

from collections import Counter
from typing import Dict, List, Tuple

import torch
from torch import nn

from detgn.layers.norm import FrozenBatchNorm2d, norm_label

from .classifier import ImageClassifier, describe_classifier

__all__ = ["count_flops", "count_parameters", "describe_model", "format_model_info"]


def count_parameters(model: nn.Module) -> Tuple[int, int]:
    """(total, trainable) parameter counts; FrozenBN statistics are buffers and count in neither."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return total, trainable


def _norms(module: nn.Module) -> str:
    counts = Counter(lab for lab in map(norm_label, module.modules()) if lab)
    return ", ".join(f"{lab} x{n}" for lab, n in sorted(counts.items())) or "no norm"


def _params(module: nn.Module) -> Tuple[int, int]:
    total = sum(p.numel() for p in module.parameters())
    frozen = sum(p.numel() for p in module.parameters() if not p.requires_grad)
    return total, frozen


def _frozen_children(module: nn.Module) -> List[str]:
    """Children whose parameters are all frozen (e.g. ``stem``, ``res2``)."""
    names = []
    for name, child in module.named_children():
        total, frozen = _params(child)
        if total > 0 and frozen == total:
            names.append(name)
    return names


def _parts(model: nn.Module) -> List[Tuple[str, List[nn.Module]]]:
    """(label, modules) of the parts whose norm the config chooses separately."""
    if isinstance(model, ImageClassifier):
        return describe_classifier(model)
    parts = []
    backbone = model.backbone
    bottom_up = getattr(backbone, "bottom_up", None)
    if bottom_up is not None:
        parts.append((f"backbone ({type(bottom_up).__name__})", [bottom_up]))
        fpn = [m for n, m in backbone.named_children() if n != "bottom_up"]
        parts.append(("FPN", fpn))
    else:
        parts.append((f"backbone ({type(backbone).__name__})", [backbone]))
    parts.append(("RPN head", [model.proposal_generator.rpn_head]))
    heads = model.roi_heads
    if hasattr(heads, "res5"):
        parts.append(("res5 head (C4)", [heads.res5]))
    if hasattr(heads, "box_head"):
        names = getattr(heads.box_head, "conv_names", []) + getattr(heads.box_head, "fc_names", [])
        parts.append((f"box head ({', '.join(names)})", [heads.box_head]))
    parts.append(("box predictor", [heads.box_predictor]))
    if getattr(heads, "mask_on", False):
        parts.append(("mask head", [heads.mask_head]))
    return parts


def describe_model(model: nn.Module) -> str:
    """A few lines saying which norm each part got and what is frozen.

    Example::

        backbone (ResNet): FrozenBN x53 | 23,454,912 params, 225,344 frozen (stem, res2)
        FPN: GN(G=32) x8 | 3,344,384 params
        ...
    """
    lines = []
    for label, modules in _parts(model):
        wrapper = nn.ModuleList(modules)
        total, frozen = _params(wrapper)
        text = f"{label}: {_norms(wrapper)} | {total:,} params"
        if frozen:
            where = [n for m in modules for n in _frozen_children(m)]
            text += f", {frozen:,} frozen" + (f" ({', '.join(where)})" if where else "")
        lines.append(text)
    total, frozen = _params(model)
    if any(isinstance(m, FrozenBatchNorm2d) for m in model.modules()):
        lines.append("FrozenBN layers are fixed per-channel affines (buffers, never trained)")
    lines.append(f"total: {total:,} params, {total - frozen:,} trainable, {frozen:,} frozen")
    return "\n".join(lines)


class _InferenceOutputs(nn.Module):
    """The detector as a function of one image tensor, returning its detections' tensors (for tracing)."""

    def __init__(self, model: nn.Module, inputs: Dict):
        super().__init__()
        self.model = model
        self.inputs = inputs

    def forward(self, image: torch.Tensor):
        out = self.model([dict(self.inputs, image=image)])[0]["instances"]
        fields = [out.pred_boxes.tensor, out.scores, out.pred_classes]
        if out.has("pred_masks"):
            fields.append(out.pred_masks)
        return tuple(fields)


def count_flops(model: nn.Module, inputs: Dict) -> float:
    """GFLOPs of one inference pass (fvcore; one multiply-add counted as one flop).

    Args:
        model: the detector (put in eval mode here).
        inputs: one model input, ``{"image": (3, H, W) uint8 tensor, "height", "width"}``.
    """
    from fvcore.nn import FlopCountAnalysis

    with torch.no_grad():
        fca = FlopCountAnalysis(_InferenceOutputs(model, inputs).eval(), (inputs["image"],))
        fca.unsupported_ops_warnings(False)
        fca.uncalled_modules_warnings(False)
        return fca.total() / 1e9


def format_model_info(info: Dict[str, object]) -> str:
    """The human-readable block of one config's counts (see ``tools/model_info.py``).

    ``info`` has ``config``, ``path``, ``weights_ignored``, ``params``, ``trainable``,
    ``description`` and optionally ``gflops`` with ``flops_input`` ("HxW").
    """
    total, trainable = int(info["params"]), int(info["trainable"])
    shown = str(info["config"])
    lines = [f"== {shown}" + ("" if shown == info["path"] else f" ({info['path']})")]
    if info["weights_ignored"]:
        lines.append(f"MODEL.WEIGHTS {info['weights_ignored']!r} not loaded (set to \"\"): counts do not depend on it")
    else:
        lines.append("MODEL.WEIGHTS is \"\" (no weights loaded)")
    lines.append(f"parameters: {total:,} total, {trainable:,} trainable, {total - trainable:,} frozen")
    lines.append(str(info["description"]))
    if "gflops" in info:
        lines.append(
            f"inference GFLOPs (fvcore, one {info['flops_input']} image, random weights, "
            f"mask head on TEST.DETECTIONS_PER_IMAGE boxes): {info['gflops']:.1f}"
        )
    return "\n".join(lines)
