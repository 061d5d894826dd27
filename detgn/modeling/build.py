"""``build_model(cfg)`` and ``describe_model(model)``: what was built, with which norms, what is frozen."""
from __future__ import annotations

import logging
import os
from collections import Counter
from typing import List, Optional, Tuple

import torch
from torch import nn

from detgn.config import ConfigError
from detgn.layers.batch_norm import EVALNORM_MODES, configure_evalnorm
from detgn.layers.norm import FrozenBatchNorm2d, norm_label

from .classifier import ImageClassifier, describe_classifier
from .meta_arch import GeneralizedRCNN

logger = logging.getLogger(__name__)

META_ARCH_REGISTRY = {"GeneralizedRCNN": GeneralizedRCNN, "ImageClassifier": ImageClassifier}


def resolve_device(name: str) -> torch.device:
    """MODEL.DEVICE as a device; plain "cuda" under torchrun means this process's LOCAL_RANK GPU."""
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError(
                f"MODEL.DEVICE is {name!r} but CUDA is not available on this machine; "
                "set MODEL.DEVICE cpu (or install a CUDA build of torch)"
            )
        if device.index is None and "LOCAL_RANK" in os.environ:
            device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    return device


def build_model(cfg) -> nn.Module:
    """Build the model of MODEL.META_ARCHITECTURE on MODEL.DEVICE and log its description.

    Returns:
        a ``GeneralizedRCNN`` (or an ``ImageClassifier``) in training mode, weights freshly initialised (load
        MODEL.WEIGHTS with the checkpointer).
    """
    name = cfg.MODEL.META_ARCHITECTURE
    if name not in META_ARCH_REGISTRY:
        raise ValueError(f"MODEL.META_ARCHITECTURE = {name!r} is unknown; choose one of {sorted(META_ARCH_REGISTRY)}")
    model = META_ARCH_REGISTRY[name].from_config(cfg)
    model.to(resolve_device(cfg.MODEL.DEVICE))
    _configure_evalnorm(cfg, model)
    if cfg.VERBOSE_STARTUP:
        logger.info("Model:\n%s", describe_model(model))
    return model


def _configure_evalnorm(cfg, model: nn.Module) -> None:
    """MODEL.EVALNORM on the model's BN layers (after ``.to(device)``: online alpha/beta become parameters)."""
    e = cfg.MODEL.EVALNORM
    if e.MODE not in EVALNORM_MODES:
        raise ConfigError(f"MODEL.EVALNORM.MODE = {e.MODE!r}; choose one of {list(EVALNORM_MODES)}")
    count = configure_evalnorm(model, enabled=e.ENABLED, mode=e.MODE, loss_weight=e.LOSS_WEIGHT)
    if e.ENABLED and count == 0:
        logger.warning("MODEL.EVALNORM.ENABLED is True but the model has no BN layer (norm 'BN'): nothing to do")
    elif e.ENABLED:
        logger.info("EvalNorm (%s) in %d BN layer(s)%s", e.MODE, count,
                    ": alpha and beta are fitted by loss_evalnorm during training" if e.MODE == "online" else "")


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
