"""Loading pre-trained or foreign weights into a model (model tensors only, never training state).

:func:`load_weights` reads a file by its suffix through :data:`WEIGHT_FORMATS`:

- ``.pth`` / ``.pt``: ``torch.load(weights_only=True)``; a detgn checkpoint (state under
  ``"model"``), a bare state dict, or a torchvision layout recognised by its keys
  (Mask R-CNN R50-FPN, ImageNet ResNet) and renamed (:mod:`.torchvision_names`);
- ``.pkl``: a Detectron (Caffe2) file, ``{"blobs": {...}}`` or a bare blob dict of numpy
  arrays, renamed by :mod:`.c2_names`. It is always read with the restricted unpickler
  of :mod:`.safe_pickle`, which rebuilds only dicts, strings, numbers and numpy arrays,
  so no code from the file can run and no flag or pinned hash is needed (the model zoo
  checks a download's sha256 where the catalog pins one: that is integrity, not what
  makes the file safe to read). ``allow_pickle=True`` (``MODEL.WEIGHTS_ALLOW_PICKLE
  True``) is only the escape hatch for a trusted file that the restricted unpickler
  refuses: it is then read with full unpickling, with a warning.

Part-relative names (ImageNet backbones, Detectron blobs) are placed with
:func:`.c2_names.align_to_model`. When the file was trained for another number of
classes, the class-dependent predictor layers are left out with a message; any
other shape difference is an error that names the key and both shapes. Every load
logs a :class:`WeightsReport`: loaded, missing and unused keys, counted and grouped.
"""
from __future__ import annotations

import logging
import os
import pickle
import re
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterable, List, Optional, Tuple, Union

import torch
from torch import nn

from .c2_names import align_to_model, convert_c2_blobs, is_weight_array
from .checkpointer import CheckpointError, load_checkpoint_file, unwrap_model
from .safe_pickle import UnsafePickleError, load_safe_pickle
from .torchvision_names import (
    convert_torchvision_maskrcnn,
    convert_torchvision_resnet,
    is_torchvision_maskrcnn,
    is_torchvision_resnet,
)

logger = logging.getLogger(__name__)

__all__ = [
    "CLASS_DEPENDENT_PREFIXES",
    "ConvertedWeights",
    "WEIGHT_FORMATS",
    "WeightsReport",
    "group_keys",
    "is_trusted_zoo_file",
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
_MAX_GROUPS = 30
# torchvision's ImageNet models take RGB in [0, 255] normalised by these (x 255).
_TV_MEAN, _TV_STD = (123.675, 116.28, 103.53), (58.395, 57.12, 57.375)


# ---------------------------------------------------------------------------- #
# Report
# ---------------------------------------------------------------------------- #
def _token(part: str):
    """``"res2"`` -> ``("res", {2})``; text without a trailing number stays a string."""
    m = re.fullmatch(r"(\D*?)(\d+)", part)
    return (m.group(1), frozenset([int(m.group(2))])) if m else part


def _render_ints(nums: Iterable[int]) -> str:
    nums = sorted(nums)
    if len(nums) == 1:
        return str(nums[0])
    runs, start = [], nums[0]
    for prev, cur in zip(nums, nums[1:] + [None]):
        if cur != prev + 1:
            runs.append(f"{start}..{prev}" if prev - start >= 2 else ",".join(map(str, range(start, prev + 1))))
            start = cur
    return "{" + ",".join(runs) + "}"


def group_keys(keys: Iterable[str]) -> List[str]:
    """Collapse keys that differ only in numbers or in their last name into patterns.

    ``res2.0.conv1.weight``, ``res2.1.conv1.weight``, ``res2.2.conv1.weight`` ->
    ``res2.{0..2}.conv1.weight``; ``fpn_lateral2.bias``, ``fpn_lateral2.weight`` ->
    ``fpn_lateral2.{bias,weight}``. Works on ``.`` (detgn) and ``_`` (Detectron) names.
    A pattern stands for exactly the keys it replaces (a product of its sets), in the
    order of first appearance.
    """
    leaves: Dict[tuple, set] = {}
    first: Dict[tuple, int] = {}
    for i, key in enumerate(keys):
        # detgn names split on ".", Detectron blob names (no ".") on "_".
        parts = re.split(r"(\.)" if "." in key else r"(_)", key)
        path = tuple(_token(p) for p in parts[:-1])
        leaves.setdefault(path, set()).add(parts[-1])
        first.setdefault(path, i)
    items = [(path, frozenset(ls), first[path]) for path, ls in leaves.items()]
    changed = True
    while changed:
        changed = False
        for pos in range(max((len(p) for p, _, _ in items), default=0) - 1, -1, -1):
            merged: Dict[tuple, list] = {}
            rest = []
            for path, ls, order in items:
                if pos < len(path) and isinstance(path[pos], tuple):
                    k = (path[:pos], path[pos][0], path[pos + 1:], ls)
                    slot = merged.setdefault(k, [set(), order])
                    slot[0].update(path[pos][1])
                    slot[1] = min(slot[1], order)
                else:
                    rest.append((path, ls, order))
            new = rest + [(pre + ((stem, frozenset(nums)),) + post, ls, order)
                          for (pre, stem, post, ls), (nums, order) in merged.items()]
            changed |= len(new) < len(items)
            items = new
    out = []
    for path, ls, order in sorted(items, key=lambda t: t[2]):
        text = "".join(p if isinstance(p, str) else p[0] + _render_ints(p[1]) for p in path)
        out.append((order, text + (next(iter(ls)) if len(ls) == 1 else "{" + ",".join(sorted(ls)) + "}")))
    return [t for _, t in out]


def _grouped(keys: List[str], limit: int = _MAX_GROUPS) -> str:
    groups = group_keys(keys)
    shown = ", ".join(groups[:limit])
    return shown + (f", ... ({len(groups) - limit} more groups)" if len(groups) > limit else "")


@dataclass
class WeightsReport:
    """What :func:`load_weights` did with each key (``str()`` gives the logged summary)."""

    source: str
    loaded: List[str]
    missing: List[str]  # in the model, not in the file: keep their initialisation
    unused: List[str]  # in the file, not in the model (file names where renamed)
    ignored: List[str] = field(default_factory=list)  # in the file, hold no model weights
    dropped: List[Tuple[str, Tuple[int, ...], Tuple[int, ...]]] = field(default_factory=list)  # class count
    notes: List[str] = field(default_factory=list)
    format: str = ""

    def __str__(self) -> str:
        fmt = f" ({self.format})" if self.format else ""
        head = (f"Weights from {self.source}{fmt}: {len(self.loaded)} tensors loaded, {len(self.missing)} "
                f"missing in the file, {len(self.unused)} unused")
        head += f", {len(self.ignored)} ignored" if self.ignored else ""
        head += f", {len(self.dropped)} not loaded (class count)" if self.dropped else ""
        lines = [head]
        if self.loaded:
            lines.append("  loaded: " + _grouped(self.loaded))
        if self.missing:
            lines.append("  missing (keep their initialisation): " + _grouped(self.missing))
        if self.unused:
            lines.append("  unused (in the file, not in the model): " + _grouped(self.unused))
        if self.ignored:
            lines.append("  ignored (no model weights: classifier, solver state, non-array entries): "
                         + _grouped(self.ignored))
        if self.dropped:
            lines.append("  not loaded (class count): " + ", ".join(
                f"{k} file {tuple(a)} vs model {tuple(b)}" for k, a, b in self.dropped))
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


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


# ---------------------------------------------------------------------------- #
# Formats
# ---------------------------------------------------------------------------- #
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
        converted, unused = convert_torchvision_maskrcnn(state)
        return ConvertedWeights(converted, format="torchvision Mask R-CNN", unused=unused,
                                notes=_pixel_note(model, "torchvision"))
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
    """A pre-trained trunk (part-relative names) placed into any model that has a ResNet."""
    tensors = {k: v for k, v in trunk.items() if isinstance(v, torch.Tensor)}
    placed, unmatched = _align(path, tensors, own)
    notes = []
    mean = (meta or {}).get("pixel_mean") if isinstance(meta, dict) else None
    own_mean = getattr(model, "pixel_mean", None)
    if mean is not None and isinstance(own_mean, torch.Tensor) and not torch.allclose(
            own_mean.flatten().cpu().float(), torch.tensor(mean, dtype=torch.float32), atol=1e-3):
        notes.append(f"the trunk was pre-trained with MODEL.PIXEL_MEAN {list(mean)} (and PIXEL_STD "
                     f"{(meta or {}).get('pixel_std')}); this model uses {own_mean.flatten().tolist()}: set them to match")
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


# ---------------------------------------------------------------------------- #
# Trust and resolution
# ---------------------------------------------------------------------------- #
def is_trusted_zoo_file(path: str) -> bool:
    """True if ``path`` passed a model-zoo sha256 check and that hash is pinned in the catalog.

    Kept as API for callers that want to know whether a file is a verified zoo file;
    loading does not depend on it (a ``.pkl`` is always read with the restricted
    unpickler, whatever its origin, and full unpickling needs ``allow_pickle``).
    :func:`detgn.model_zoo.is_verified` re-hashes the file against its ``<file>.sha256``
    sidecar; requiring the recorded hash to be one the catalog pins as well means a
    sidecar written next to some other file does not make it trusted.
    """
    try:
        from detgn.model_zoo import MODEL_ZOO, is_verified
    except ImportError:
        return False
    if not is_verified(path):
        return False
    pinned = {str(e.get("sha256")).lower() for e in MODEL_ZOO.values() if e.get("sha256")}
    try:
        with open(str(path) + ".sha256") as f:  # sha256sum format: "<hex>  <name>"
            recorded = f.read().split()[0].lower()
    except (OSError, IndexError, UnicodeDecodeError):
        return False
    return recorded in pinned


def _resolve_weights(path_or_name: str) -> str:
    """Local path of the weights (zoo names and URLs are downloaded, sha256 checked where pinned)."""
    if path_or_name.startswith("detgn://") or re.match(r"^https?://", path_or_name):
        # Lazily: the model zoo is optional at import time and may touch the network.
        from detgn.model_zoo import download

        return download(path_or_name)
    path = os.path.expanduser(path_or_name)
    if not os.path.isfile(path):
        raise CheckpointError(
            f"Weights file {path_or_name!r} does not exist. Give a path to a .pth or Detectron .pkl "
            "file, a model-zoo name (detgn://...), or MODEL.WEIGHTS '' to train from scratch."
        )
    return path


# ---------------------------------------------------------------------------- #
# Loading
# ---------------------------------------------------------------------------- #
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
        notes.insert(0, msg + f" ({_grouped([k for k, _, _ in dropped])}); they keep their initialisation")
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
