"""Weight-file formats: each reads a file into tensors named like the model's parameters.

:data:`WEIGHT_FORMATS` maps a file suffix to a loader ``loader(path, *, model, allow_pickle)``
returning a state dict or a :class:`ConvertedWeights`:

- ``.pth`` / ``.pt``: ``torch.load(weights_only=True)``; a detgn checkpoint (state under
  ``"model"``), a bare state dict, or a torchvision layout recognised by its keys
  (Mask R-CNN R50-FPN, ImageNet ResNet) and renamed (:mod:`.torchvision_names`);
- ``.pkl``: a Detectron (Caffe2) file, ``{"blobs": {...}}`` or a bare blob dict of numpy
  arrays, renamed by :mod:`.c2_names`. It is always read with the restricted unpickler
  of :mod:`.safe_pickle`, which rebuilds only dicts, strings, numbers and numpy arrays,
  so no code from the file can run; ``allow_pickle=True`` is only the escape hatch for
  a trusted file that the restricted unpickler refuses (full unpickling, with a warning).

Part-relative names (ImageNet backbones, Detectron blobs) are placed with
:func:`.c2_names.align_to_model`. More formats with :func:`register_weight_format`.
"""
from __future__ import annotations

import logging
import os
import pickle
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Tuple, Union

import torch
from torch import nn

from .c2_names import align_to_model, convert_c2_blobs, is_weight_array
from .files import CheckpointError, load_checkpoint_file
from .safe_pickle import UnsafePickleError, load_safe_pickle
from .torchvision_names import (
    convert_torchvision_maskrcnn,
    convert_torchvision_resnet,
    is_torchvision_maskrcnn,
    is_torchvision_resnet,
)

logger = logging.getLogger(__name__)

__all__ = ["ConvertedWeights", "WEIGHT_FORMATS", "register_weight_format"]

# torchvision's ImageNet models take RGB in [0, 255] normalised by these (x 255).
_TV_MEAN, _TV_STD = (123.675, 116.28, 103.53), (58.395, 57.12, 57.375)


@dataclass
class ConvertedWeights:
    """What a format loader may return instead of a plain state dict.

    ``state`` is keyed by the model's names; ``unused`` / ``ignored`` name file entries
    that were not converted (reported as such); ``notes`` are printed with the report.
    """

    state: Dict[str, torch.Tensor]
    format: str = ""
    unused: List[str] = field(default_factory=list)
    ignored: List[str] = field(default_factory=list)
    notes: List[str] = field(default_factory=list)


def _pixel_note(model: nn.Module, what: str) -> List[str]:
    """torchvision weights expect its pixel convention; say so when the model uses another."""
    mean, std = getattr(model, "pixel_mean", None), getattr(model, "pixel_std", None)
    if not isinstance(std, torch.Tensor) or not isinstance(mean, torch.Tensor):
        return []
    if (getattr(model, "input_format", "RGB") == "RGB"
            and torch.allclose(mean.flatten().cpu(), torch.tensor(_TV_MEAN), atol=0.5)
            and torch.allclose(std.flatten().cpu(), torch.tensor(_TV_STD), atol=0.5)):
        return []
    return [f"{what} weights were trained on RGB input normalised by mean {list(_TV_MEAN)} and std "
            f"{list(_TV_STD)}; set INPUT.FORMAT RGB, MODEL.PIXEL_MEAN and MODEL.PIXEL_STD to match"]


def _torchvision_convention_note(model: nn.Module) -> List[str]:
    """torchvision Mask R-CNN weights reproduce torchvision's detections only under its conventions."""
    anchors = getattr(getattr(model, "proposal_generator", None), "anchor_generator", None)
    differ = []
    if anchors is not None and not getattr(anchors, "round_to_pixels", False):
        differ.append("unrounded anchors")
    if getattr(model, "mask_paste", "torchvision") != "torchvision":
        differ.append(f"the {model.mask_paste} mask paste")
    if not differ:
        return []
    return [f"these are torchvision Mask R-CNN weights but the model uses {' and '.join(differ)}: set "
            "MODEL.CONVENTION torchvision to get torchvision's detections (it also sets its pixel statistics, "
            "RoIAlign and losses; see detgn/config/conventions.py)"]


def _load_pth(path: str, *, model: nn.Module, allow_pickle: bool) -> ConvertedWeights:
    """A detgn checkpoint (state under ``"model"``), a bare state dict saved with torch.save,
    or a torchvision Mask R-CNN / ImageNet ResNet state dict (recognised by its keys)."""
    obj = load_checkpoint_file(path, allow_pickle=allow_pickle)
    kind = "state dict"
    own = model.state_dict()
    if isinstance(obj, dict) and isinstance(obj.get("trunk"), dict):  # a pre-trained trunk export
        return _classifier_trunk(path, obj["trunk"], own, meta=obj.get("meta"), model=model,
                                 what="detgn pre-trained trunk")
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        obj, kind = obj["model"], "detgn checkpoint"
    elif isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path} holds a {type(obj).__name__}, not a state dict (name -> tensor)")
    state = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not state:
        raise CheckpointError(f"{path} holds no tensors; keys: {list(obj)[:10]}")
    if all(k.startswith("module.") for k in state):  # saved from a DDP-wrapped model
        state = {k[len("module."):]: v for k, v in state.items()}
    if _is_classifier_state(state) and not any(k.startswith(_TRUNK_PREFIX) for k in own):
        trunk = {k[len(_TRUNK_PREFIX):]: v for k, v in state.items() if k.startswith(_TRUNK_PREFIX)}
        return _classifier_trunk(path, trunk, own, meta=None, model=model, what="detgn classifier checkpoint",
                                 ignored=[k for k in state if not k.startswith(_TRUNK_PREFIX)])
    # A torchvision layout is converted unless the model itself uses those names.
    if is_torchvision_maskrcnn(state) and not any(k.startswith("backbone.body.") for k in own):
        cls_score = own.get("roi_heads.box_predictor.cls_score.bias")
        num_classes = None if cls_score is None else cls_score.numel() - 1
        converted, unused = convert_torchvision_maskrcnn(state, num_classes=num_classes)
        notes = _pixel_note(model, "torchvision") + _torchvision_convention_note(model)
        if num_classes == 80 and state.get("roi_heads.box_predictor.cls_score.bias", torch.zeros(0)).numel() == 91:
            notes.append("torchvision's 91 outputs (background + COCO category ids 1..90) mapped onto the 80 "
                         "contiguous COCO classes")
        return ConvertedWeights(converted, format="torchvision Mask R-CNN", unused=unused, notes=notes)
    if is_torchvision_resnet(state) and "conv1.weight" not in own:
        converted, unused = convert_torchvision_resnet(state)
        placed, unmatched = _align(path, converted, own)
        return ConvertedWeights(placed, format="torchvision ImageNet ResNet", unused=unused + unmatched,
                                notes=_pixel_note(model, "torchvision ImageNet"))
    return ConvertedWeights(state, format=kind)


_TRUNK_PREFIX = "trunk."


def _is_classifier_state(state: Dict[str, torch.Tensor]) -> bool:
    """An ImageClassifier's state dict: its trunk and the linear layer, nothing else."""
    return any(k.startswith(_TRUNK_PREFIX) for k in state) and all(k.startswith((_TRUNK_PREFIX, "fc.")) for k in state)


def _classifier_trunk(path: str, trunk: Dict, own, *, meta, model: nn.Module, what: str,
                      ignored: Optional[List[str]] = None) -> ConvertedWeights:
    """A pre-trained trunk (part-relative names, tools/pretrain_backbone.py) placed into any model with a ResNet."""
    tensors = {k: v for k, v in trunk.items() if isinstance(v, torch.Tensor)}
    placed, unmatched = _align(path, tensors, own)
    notes = []
    mean = meta.get("pixel_mean") if isinstance(meta, dict) else None
    own_mean = getattr(model, "pixel_mean", None)
    if mean is not None and isinstance(own_mean, torch.Tensor) and not torch.allclose(
            own_mean.flatten().cpu().float(), torch.tensor(mean, dtype=torch.float32), atol=1e-3):
        notes.append(f"the trunk was pre-trained with MODEL.PIXEL_MEAN {list(mean)} (and PIXEL_STD "
                     f"{meta.get('pixel_std')}); this model uses {own_mean.flatten().tolist()}: set them to match")
    return ConvertedWeights(placed, format=what, unused=unmatched, ignored=list(ignored or []), notes=notes)


def _align(path: str, converted: Dict[str, torch.Tensor], own) -> Tuple[Dict[str, torch.Tensor], List[str]]:
    try:
        return align_to_model(converted, own)
    except ValueError as e:
        raise CheckpointError(f"{path}: {e}") from None


def _read_pickle(path: str, allow_pickle: bool):
    """A ``.pkl`` through the restricted unpickler; with ``allow_pickle``, a file it refuses
    is read again with full unpickling (trusted files only: that can run code)."""
    try:
        try:
            return load_safe_pickle(path)  # latin1: Detectron wrote them with Python 2
        except UnsafePickleError as e:
            if not allow_pickle:
                raise CheckpointError(
                    f"{e} On the command line: python tools/train_net.py --config NAME MODEL.WEIGHTS {path} "
                    "MODEL.WEIGHTS_ALLOW_PICKLE True. Nothing was loaded."
                ) from None
            logger.warning(
                "%s asks for %s, which the restricted unpickler refuses; MODEL.WEIGHTS_ALLOW_PICKLE is True "
                "(allow_pickle=True), so it is read with full unpickling, which runs any code it holds",
                path, e.global_name or "a persistent id or extension code",
            )
            with open(path, "rb") as f:
                return pickle.load(f, encoding="latin1")
    except CheckpointError:
        raise
    except Exception as e:  # EOFError, UnpicklingError, ValueError, ...: all mean a bad file
        raise CheckpointError(
            f"Cannot read the Detectron weights file {path} ({os.path.getsize(path)} bytes): it is "
            f"truncated or not a pickle ({type(e).__name__}: {e}). Download it again (for a model-zoo "
            "file, delete it from the cache and rerun) or check that it is a Detectron .pkl."
        ) from None


def _load_c2_pkl(path: str, *, model: nn.Module, allow_pickle: bool) -> ConvertedWeights:
    """A Detectron ``.pkl``: blob names converted and placed into ``model``'s keys."""
    with open(path, "rb") as f:
        if f.read(4) == b"PK\x03\x04":  # a torch zip file named .pkl: no unpickling needed
            return _load_pth(path, model=model, allow_pickle=allow_pickle)
    obj = _read_pickle(path, allow_pickle)
    blobs = obj.get("blobs", obj) if isinstance(obj, dict) else None
    if not isinstance(blobs, dict) or not any(is_weight_array(v) for v in blobs.values()):
        raise CheckpointError(
            f"{path} is not a Detectron weights file: expected {{'blobs': {{name: array}}}} or a dict of "
            f"numeric numpy arrays, got {type(obj).__name__}"
            + (f" with keys {sorted(map(str, obj))[:10]}" if isinstance(obj, dict) else "")
        )
    conv = convert_c2_blobs(blobs)
    placed, unmatched = _align(path, conv.tensors, model.state_dict())
    notes = _fix_norms(model, placed, conv.sources) + _stride_note(path, model)
    # Report the file's own names; the statistics made up for a BN* layer are not file entries.
    unused = [conv.sources[n] for n in unmatched if not n.endswith(("running_mean", "running_var"))]
    return ConvertedWeights(placed, format="Detectron .pkl", unused=conv.unknown + unused,
                            ignored=conv.ignored, notes=notes)


def _stride_note(path: str, model: nn.Module) -> List[str]:
    """MSRA's ResNets (the zoo's BN* R-50/R-101) stride on the 1x1 conv; Detectron's GN ones on the 3x3."""
    if "msra" not in path.lower():
        return []
    for name, mod in model.named_modules():
        if name.endswith("res3.0.conv1") and tuple(getattr(mod, "stride", (2, 2))) == (1, 1):
            return [f"{os.path.basename(path)} looks like an MSRA ResNet, trained with the stride on the 1x1 "
                    "conv of each block; set MODEL.RESNETS.STRIDE_IN_1X1 True to compute what it was trained for"]
    return []


def _fix_norms(model: nn.Module, placed: Dict[str, torch.Tensor], sources: Dict[str, str]) -> List[str]:
    """Set each folded BN*'s ``running_var`` to 1 - eps of its own layer (in place), and
    return a note when the file's norms (``_bn_`` / ``_gn_``) are not the model's."""
    modules = dict(model.named_modules())
    mixed: List[Tuple[str, str, str]] = []
    for key in list(placed):
        parts = key.split(".")
        rel = next((".".join(parts[i:]) for i in range(len(parts)) if ".".join(parts[i:]) in sources), None)
        mod = modules.get(key.rsplit(".", 1)[0])
        if rel is None or mod is None:
            continue
        src = sources[rel]
        if key.endswith("running_var") and isinstance(getattr(mod, "eps", None), float):
            placed[key] = torch.full_like(placed[key], 1.0 - mod.eps)  # exact for this layer's eps
        if key.endswith("norm.weight") and src.endswith(("_bn_s", "_gn_s")):
            file_gn = src.endswith("_gn_s")
            if file_gn != isinstance(mod, nn.GroupNorm):
                mixed.append((key, "GN" if file_gn else "BN*", type(mod).__name__))
    if not mixed:
        return []
    key, file_kind, model_kind = mixed[0]
    return [f"{len(mixed)} norm layers get a {file_kind} scale/bias from the file but are {model_kind} "
            f"in the model (e.g. {key}): the file's norm does not match the config's NORM keys"]


# Format (file suffix) -> loader(path, *, model, allow_pickle) returning a state dict in
# ``model``'s parameter names, or a :class:`ConvertedWeights` (the model lets a
# converter place renamed keys, e.g. by suffix). More with :func:`register_weight_format`.
WEIGHT_FORMATS: Dict[str, Callable[..., Union[Dict[str, torch.Tensor], ConvertedWeights]]] = {
    ".pth": _load_pth,
    ".pt": _load_pth,
    ".pkl": _load_c2_pkl,
}


def register_weight_format(suffix: str, loader: Callable[..., Union[Dict[str, torch.Tensor], ConvertedWeights]]) -> None:
    """Make :func:`load_weights` read files ending in ``suffix`` with ``loader(path, *, model, allow_pickle)``."""
    WEIGHT_FORMATS[suffix.lower()] = loader
