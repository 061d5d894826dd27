"""``build_model(cfg)``: the detector of a config, on its device, in its memory format.

Every path that makes a model from a config (training, ``--eval-only``, the
:class:`detgn.engine.Predictor`, the zoo's ``get``, the tools) goes through
:func:`build_model`, so device placement and ``CPU.CHANNELS_LAST`` apply to all of
them. :func:`build_model_without_weights` builds a config by name for counting and
inspection (``tools/model_info.py``, the golden parameter-count test).
"""
from __future__ import annotations

import logging
import os
from typing import Optional, Sequence

import torch
from torch import nn

from detgn.config import ConfigError, load_config
from detgn.layers.evalnorm_setup import EVALNORM_MODES, configure_evalnorm

from .classifier import ImageClassifier
from .describe import describe_model
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
        a ``GeneralizedRCNN`` (or an ``ImageClassifier``) in training mode, weights freshly
        initialised (load MODEL.WEIGHTS with :func:`detgn.checkpoint.load_weights`), its conv
        weights channels-last when ``CPU.CHANNELS_LAST`` is set, its BN layers set up for
        ``MODEL.EVALNORM``.
    """
    name = cfg.MODEL.META_ARCHITECTURE
    if name not in META_ARCH_REGISTRY:
        raise ValueError(f"MODEL.META_ARCHITECTURE = {name!r} is unknown; choose one of {sorted(META_ARCH_REGISTRY)}")
    model = META_ARCH_REGISTRY[name].from_config(cfg)
    model.to(resolve_device(cfg.MODEL.DEVICE))
    if cfg.CPU.CHANNELS_LAST:
        # Conv weights in NHWC make the convs' outputs NHWC too, so the activations follow.
        model.to(memory_format=torch.channels_last)
    _configure_evalnorm(cfg, model)
    _compile_parts(cfg, model)
    if cfg.VERBOSE_STARTUP:
        logger.info("Model:\n%s", describe_model(model))
    return model


COMPILE_PARTS = ("", "backbone")


def _compile_parts(cfg, model: nn.Module) -> None:
    """MODEL.COMPILE: ``torch.compile`` the named part in place (``nn.Module.compile``: the
    parameters and the state dict keep their names, so checkpoints are unchanged)."""
    part = cfg.MODEL.COMPILE
    if part not in COMPILE_PARTS:
        raise ConfigError(f"MODEL.COMPILE = {part!r}; choose one of {list(COMPILE_PARTS)}")
    if part:
        if _inductor_vec_isa() == "avx2":
            raise ConfigError(
                f"MODEL.COMPILE = {part!r}: torch.compile would generate AVX2 code here (the CPU or "
                "ATEN_CPU_CAPABILITY), and that code gave NaN backbone features with torch 2.14.1 "
                "(AMD EPYC Zen 5 under ATEN_CPU_CAPABILITY=avx2, 2026-12-07). Use MODEL.COMPILE \"\" (eager).")
        getattr(model, part).compile()


def _inductor_vec_isa() -> str:
    """The vector ISA inductor generates CPU code for ("avx2", "avx512", ...; "" if unknown)."""
    try:
        from torch._inductor.cpu_vec_isa import pick_vec_isa
    except ImportError:
        return ""
    return str(pick_vec_isa())


def _configure_evalnorm(cfg, model: nn.Module) -> None:
    """MODEL.EVALNORM on the model's BN layers (after ``.to(device)``: online alpha/beta become parameters)."""
    e = cfg.MODEL.EVALNORM
    if e.MODE not in EVALNORM_MODES:
        raise ConfigError(f"MODEL.EVALNORM.MODE = {e.MODE!r}; choose one of {list(EVALNORM_MODES)}")
    count = configure_evalnorm(model, enabled=e.ENABLED, mode=e.MODE, loss_weight=e.LOSS_WEIGHT,
                               lr_factor=e.LR_FACTOR)
    if e.ENABLED and count == 0:
        logger.warning("MODEL.EVALNORM.ENABLED is True but the model has no BN layer (norm 'BN'): nothing to do")
    elif e.ENABLED:
        logger.info("EvalNorm (%s) in %d BN layer(s)%s", e.MODE, count,
                    ": alpha and beta are fitted by loss_evalnorm during training" if e.MODE == "online" else "")


def build_model_without_weights(name: str, opts: Sequence[str] = (), *, device: Optional[str] = "meta"):
    """Load the config ``name`` with ``opts``, clear MODEL.WEIGHTS and build the model.

    Args:
        name: config name or path (resolved like ``--config`` everywhere).
        opts: ``KEY VALUE`` overrides.
        device: ``"meta"`` builds shapes only (no memory, no initialisation: for
            counting); None keeps MODEL.DEVICE and builds real, randomly initialised weights.

    Returns:
        (cfg, model, weights) where ``weights`` is the MODEL.WEIGHTS that was ignored.
    """
    cfg = load_config(name, opts, freeze=False)
    weights = cfg.MODEL.WEIGHTS
    cfg.MODEL.WEIGHTS = ""
    cfg.VERBOSE_STARTUP = False  # the caller prints describe_model itself
    if device is not None:
        cfg.MODEL.DEVICE = device
    cfg.freeze()
    if device == "meta":
        # Parameters created inside this context are meta tensors: no memory, init is a no-op.
        with torch.device("meta"):
            return cfg, build_model(cfg), weights
    return cfg, build_model(cfg), weights
