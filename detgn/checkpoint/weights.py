"""Loading pre-trained or foreign weights into a model (model tensors only, never training state).

:func:`load_weights` resolves ``MODEL.WEIGHTS`` (a file, or a ``detgn://`` zoo name or URL
that :func:`detgn.model_zoo.download.download` fetches, sha256 checked where the catalog
pins one), reads it with the loader of its suffix (:mod:`.weight_formats`: ``.pth``,
``.pt``, Detectron ``.pkl`` through the restricted unpickler), and copies the tensors
whose names and shapes match. When the file was trained for another number of
classes, the class-dependent predictor layers are left out with a message; any other
shape difference is an error that names the key and both shapes. Every load logs a
:class:`~.weights_report.WeightsReport`: loaded, missing and unused keys, counted and grouped.
"""
from __future__ import annotations

import logging
import os
import re
from typing import Dict, Optional

import torch
from torch import nn

from detgn.model_zoo.download import download

from .files import CheckpointError, unwrap_model
from .weight_formats import WEIGHT_FORMATS, ConvertedWeights, register_weight_format
from .weights_report import WeightsReport, format_key_groups, group_keys

logger = logging.getLogger(__name__)

__all__ = [
    "CLASS_DEPENDENT_PREFIXES",
    "ConvertedWeights",
    "WEIGHT_FORMATS",
    "WeightsReport",
    "group_keys",
    "load_weights",
    "register_weight_format",
]

# Layers whose shape follows the number of classes: left out (not an error) when the
# file was trained for another class count.
CLASS_DEPENDENT_PREFIXES = (
    "roi_heads.box_predictor.cls_score.",
    "roi_heads.box_predictor.bbox_pred.",
    "roi_heads.mask_head.mask_fcn_logits.",
)


def _resolve_weights(path_or_name: str) -> str:
    """Local path of the weights (zoo names and URLs are downloaded, sha256 checked where pinned)."""
    if path_or_name.startswith("detgn://") or re.match(r"^https?://", path_or_name):
        return download(path_or_name)
    path = os.path.expanduser(path_or_name)
    if not os.path.isfile(path):
        raise CheckpointError(
            f"Weights file {path_or_name!r} does not exist. Give a path to a .pth or Detectron .pkl "
            "file, a model-zoo name (detgn://...), or MODEL.WEIGHTS '' to train from scratch."
        )
    return path


def _num_classes(state: Dict[str, torch.Tensor]) -> Optional[int]:
    """Foreground classes of a predictor in ``state`` (None if it has no class-dependent layer)."""
    for key in ("roi_heads.box_predictor.cls_score.weight", "roi_heads.box_predictor.cls_score.bias"):
        if key in state:
            return int(state[key].shape[0]) - 1
    for key in ("roi_heads.mask_head.mask_fcn_logits.weight", "roi_heads.mask_head.mask_fcn_logits.bias"):
        if key in state and state[key].shape[0] > 1:
            return int(state[key].shape[0])
    return None


def _class_dependent(key: str) -> bool:
    return key.startswith(CLASS_DEPENDENT_PREFIXES)


def load_weights(model: nn.Module, path_or_name: str, *, allow_pickle: bool = False) -> WeightsReport:
    """Load matching tensors of a weights file into ``model`` (nothing else: no iteration,
    optimizer or RNG state), report what was loaded, missing or unused.

    Args:
        model: the model (DDP wrappers are unwrapped; a ``module.`` prefix in the file is stripped).
        path_or_name: a file whose suffix is in :data:`WEIGHT_FORMATS` (``.pth``, ``.pt``,
            Detectron ``.pkl``), or ``detgn://...`` / a URL resolved by :func:`detgn.model_zoo.download`.
        allow_pickle: let loaders fall back to full unpickling for a file their safe
            reader refuses (``.pth``: ``weights_only``; ``.pkl``: the restricted unpickler
            of :mod:`.safe_pickle`). Trusted files only: full unpickling runs code. Not
            needed for Detectron ``.pkl`` weights or model-zoo files.

    Returns:
        a :class:`WeightsReport`, also logged.

    Raises:
        CheckpointError: missing, corrupt or refused (a pickle asking for more than
            weights) file, unknown format, or a shape mismatch outside the
            class-dependent predictor layers.
    """
    model = unwrap_model(model)
    path = _resolve_weights(path_or_name)
    suffix = os.path.splitext(path)[1].lower()
    loader = WEIGHT_FORMATS.get(suffix)
    if loader is None:
        raise CheckpointError(
            f"No loader for {suffix!r} files ({path}); known formats: {sorted(WEIGHT_FORMATS)}. "
            "Convert the file to a .pth state dict, or register a loader with register_weight_format."
        )
    result = loader(path, model=model, allow_pickle=allow_pickle)
    conv = result if isinstance(result, ConvertedWeights) else ConvertedWeights(dict(result))
    state = conv.state
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    own = model.state_dict()
    notes = list(conv.notes)

    dropped = []
    file_k, model_k = _num_classes(state), _num_classes(own)
    if file_k is not None and model_k is not None and file_k != model_k:
        dropped = [(k, tuple(v.shape), tuple(own[k].shape)) for k, v in state.items() if _class_dependent(k) and k in own]
        state = {k: v for k, v in state.items() if not _class_dependent(k)}
        msg = f"checkpoint has {file_k} classes, model {model_k}: predictor layers not loaded"
        notes.insert(0, msg + f" ({format_key_groups([k for k, _, _ in dropped])}); they keep their initialisation")
        logger.warning("%s: %s", path_or_name, msg)

    mismatch = [(k, tuple(v.shape), tuple(own[k].shape)) for k, v in state.items()
                if k in own and tuple(v.shape) != tuple(own[k].shape)]
    if mismatch:
        listing = "\n  ".join(f"{k}: file {a} vs model {b}" for k, a, b in mismatch[:10])
        more = f"\n  ... and {len(mismatch) - 10} more" if len(mismatch) > 10 else ""
        raise CheckpointError(
            f"Weights {path_or_name} do not fit the model: {len(mismatch)} tensor(s) have another shape:\n  "
            f"{listing}{more}\nThe file was made for another architecture (depth, widths, FPN/head "
            "dimensions, class-agnostic box regression...). Use the config it was trained with, or a file "
            "made for this one. Nothing was loaded."
        )
    loaded = {k: v for k, v in state.items() if k in own}
    model.load_state_dict(loaded, strict=False)
    dropped_keys = {k for k, _, _ in dropped}
    report = WeightsReport(
        source=path_or_name,
        format=conv.format,
        loaded=[k for k in own if k in loaded],
        missing=[k for k in own if k not in loaded and k not in dropped_keys],
        unused=list(conv.unused) + [k for k in state if k not in own],
        ignored=list(conv.ignored),
        dropped=dropped,
        notes=notes,
    )
    logger.info("%s", report)
    return report
