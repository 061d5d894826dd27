"""Detectron (Caffe2) ``.pkl`` weights -> detgn parameter names.

A Detectron file is a pickled dict ``{"blobs": {name: ndarray}}`` (latin1). Names use
``_`` separators (REFERENCE.md §5). This module renames blobs to detgn's module names
*relative to the part they belong to* (``res2.0.conv1.weight``, ``fpn_lateral5.bias``,
``box_predictor.cls_score.weight``); :func:`align_to_model` then places each one into
the model by unique suffix match, so one converter serves FPN (``backbone.bottom_up.res2``)
and C4 (``backbone.res2`` and ``roi_heads.res5``) models alike.

Names handled (``{w,b}`` = conv/fc weight and bias; ``{gn,bn}_{s,b}`` = norm scale/bias):

- stem ``conv1_w`` + ``conv1_gn_{s,b}`` (GN) or ``res_conv1_bn_{s,b}`` (BN*);
  blocks ``res{2..5}_{i}_branch{2a,2b,2c,1}_w`` + ``_gn_{s,b}`` / ``_bn_{s,b}``;
- FPN ``fpn_inner_res5_{n}_sum`` (top lateral), ``fpn_inner_res{2..4}_{n}_sum_lateral``,
  ``fpn_res{2..5}_{n}_sum`` (outputs), each ``_{w,b}`` or ``_w`` + ``_gn_{s,b}``; ``n`` is
  the stage's last block index, so it depends on the depth and is not checked;
- RPN ``rpn_conv_fpn2``, ``rpn_cls_logits_fpn2``, ``rpn_bbox_pred_fpn2`` (FPN; the other
  levels share these blobs) or ``conv_rpn``, ``rpn_cls_logits``, ``rpn_bbox_pred`` (C4);
- box head ``fc6``, ``fc7`` or ``head_conv{1..4}`` (+ ``_gn``) + ``fc6``; ``cls_score``,
  ``bbox_pred``; mask head ``_[mask]_fcn{1..4}`` (Detectron's plain head) or
  ``_mask_fcn{1..4}`` + ``_gn`` (its GN head), ``conv5_mask``, ``mask_fcn_logits``.

Conventions bridged here:
- Detectron folds BN* into an affine ``_bn_s``/``_bn_b``; detgn's FrozenBN keeps
  mean/var buffers, so mean = 0 and var = 1 - eps make its scale exactly ``_bn_s``.
- Detectron puts the background class first (``cls_score`` row 0, ``bbox_pred`` rows 0-3,
  ``mask_fcn_logits`` channel 0); detgn puts it last in ``cls_score`` and has no background
  rows in ``bbox_pred`` / ``mask_fcn_logits``.
- RPN anchors need no permutation: Detectron orders a location's anchors ratio-major
  over sizes and its deltas as (anchor, dx/dy/dw/dh), exactly as
  ``detgn/modeling/proposal_generator/anchors.py`` and the RPN head do.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Optional, Tuple

import numpy as np
import torch

__all__ = ["C2Conversion", "convert_c2_blobs", "align_to_model", "is_weight_array", "rename_c2_blob"]

# Blobs that carry no model weights (ImageNet classifier, solver state, BN statistics
# of a non-folded SpatialBN that Detectron never uses at fine-tuning).
_IGNORED = re.compile(r"^(pred_[wb]|fc1000_[wb]|.*_momentum|.*_riv|.*_rm|lr|weight_order|model_iter)$")

_PARAM = {"w": "weight", "b": "bias", "s": "weight"}


def _norm_param(sb: str) -> str:
    """The ``s``/``b`` of ``_bn_s`` / ``_gn_b`` -> the norm parameter name."""
    return "norm.weight" if sb == "s" else "norm.bias"


def _rename_resnet(name: str) -> Optional[str]:
    """ResNet trunk blobs (stem and res2..res5 blocks) -> ``stem.conv1.*`` / ``resK.i.convJ.*``."""
    m = re.match(r"^conv1_([wb])$", name)
    if m:
        return f"stem.conv1.{_PARAM[m.group(1)]}"
    m = re.match(r"^(?:res_conv1_bn|conv1_gn|res_conv1_gn|conv1_bn)_([sb])$", name)
    if m:
        return "stem.conv1." + _norm_param(m.group(1))
    m = re.match(r"^res(\d)_(\d+)_branch(1|2[abc])(?:_(bn|gn))?_([wbs])$", name)
    if m:
        stage, block, branch, norm, p = m.groups()
        conv = {"1": "shortcut", "2a": "conv1", "2b": "conv2", "2c": "conv3"}[branch]
        if norm:
            return f"res{stage}.{block}.{conv}." + _norm_param(p)
        if p == "s":
            return None
        return f"res{stage}.{block}.{conv}.{_PARAM[p]}"
    return None


# (pattern, target): groups are (index used in the target, "gn" or empty, parameter letter).
_DETECTION_RULES: List[Tuple[str, str]] = [
    (r"^fpn_inner_res(\d)_\d+_sum(?:_lateral)?(?:_(gn))?_([wbs])$", "fpn_lateral{0}"),
    (r"^fpn_res(\d)_\d+_sum(?:_(gn))?_([wbs])$", "fpn_output{0}"),
    # Only the finest level holds the shared RPN weights; other levels reuse them.
    (r"^rpn_conv_fpn2()()_([wb])$", "rpn_head.conv"),
    (r"^conv_rpn()()_([wb])$", "rpn_head.conv"),
    (r"^rpn_cls_logits(?:_fpn2)?()()_([wb])$", "rpn_head.objectness_logits"),
    (r"^rpn_bbox_pred(?:_fpn2)?()()_([wb])$", "rpn_head.anchor_deltas"),
    (r"^head_conv(\d)(?:_(gn))?_([wbs])$", "box_head.conv{0}"),
    (r"^fc(6|7)()_([wb])$", "box_head.fc{0}"),
    (r"^cls_score()()_([wb])$", "box_predictor.cls_score"),
    (r"^bbox_pred()()_([wb])$", "box_predictor.bbox_pred"),
    (r"^_(?:\[mask\]|mask)_fcn(\d)(?:_(gn))?_([wbs])$", "mask_head.mask_fcn{0}"),
    (r"^conv5_mask()()_([wb])$", "mask_head.conv5_mask"),
    (r"^mask_fcn_logits()()_([wb])$", "mask_head.mask_fcn_logits"),
]


def _rename_detection(name: str) -> Optional[str]:
    """FPN, RPN, box head and mask head blobs of a Detectron detection checkpoint."""
    for pattern, target in _DETECTION_RULES:
        m = re.match(pattern, name)
        if m:
            idx, norm, p = m.groups()
            base = target.format(idx)
            if norm:
                return f"{base}." + _norm_param(p)
            if p == "s":
                return None  # a scale without a norm is not a Detectron name
            return f"{base}.{_PARAM[p]}"
    return None


def is_weight_array(value: object) -> bool:
    """A numpy array of numbers (bool, int, float): what a blob holding weights is.

    Strings, numbers and object or string arrays next to the blobs (``"__author__"``,
    ``"cfg"``) hold no weights.
    """
    return isinstance(value, np.ndarray) and value.dtype.kind in "biuf"


def rename_c2_blob(name: str) -> Optional[str]:
    """The part-relative detgn name of one Detectron blob, or None if it is not one detgn knows."""
    return _rename_resnet(name) or _rename_detection(name)


def _move_background(new: str, t: torch.Tensor) -> torch.Tensor:
    """Detectron's background-first predictor rows -> detgn's layout."""
    if new.startswith("box_predictor.cls_score."):
        return torch.cat([t[1:], t[:1]], dim=0)  # background first -> last
    if new.startswith("box_predictor.bbox_pred."):
        # Detectron keeps 4 rows for the background (class-agnostic: 8 rows -> 4).
        return t[4:]
    if new.startswith("mask_head.mask_fcn_logits.") and t.shape[0] > 1:
        return t[1:]  # drop the background mask channel (class-agnostic heads have 1)
    return t


@dataclass
class C2Conversion:
    """Result of :func:`convert_c2_blobs`."""

    tensors: Dict[str, torch.Tensor] = field(default_factory=dict)  # part-relative name -> tensor
    sources: Dict[str, str] = field(default_factory=dict)  # part-relative name -> Detectron blob
    unknown: List[str] = field(default_factory=list)  # blobs no rule recognises (or duplicates)
    ignored: List[str] = field(default_factory=list)  # no model weights (classifier, solver, non-arrays)


def convert_c2_blobs(blobs: Dict[str, np.ndarray], *, eps: float = 1e-5) -> C2Conversion:
    """Rename Detectron blobs to part-relative detgn names.

    Args:
        blobs: blob name -> array, as in a Detectron ``.pkl`` (``{"blobs": ...}`` unwrapped).
        eps: the FrozenBN epsilon of the target model: a folded ``_bn_s`` gets
            ``running_var = 1 - eps`` so that ``s / sqrt(var + eps) == s``.

    Returns:
        a :class:`C2Conversion`; entries that are not numeric arrays (strings, numbers,
        object arrays) are listed as ignored. Class-dependent predictor tensors already
        have the background moved (``cls_score``) or dropped (``bbox_pred``,
        ``mask_fcn_logits``).
        The ``running_mean`` / ``running_var`` made for a ``_bn_s`` blob name it as source.
    """
    out = C2Conversion()
    for name, value in blobs.items():
        name = str(name)
        if _IGNORED.match(name) or not is_weight_array(value):  # also strings, object arrays
            out.ignored.append(name)
            continue
        new = rename_c2_blob(name)
        if new is None or new in out.tensors:
            out.unknown.append(name)
            continue
        t = _move_background(new, torch.from_numpy(np.ascontiguousarray(value)).float())
        out.tensors[new] = t
        out.sources[new] = name
        if name.endswith("_bn_s"):  # a folded BN*: give FrozenBN neutral statistics
            prefix = new[: -len("weight")]
            out.tensors[prefix + "running_mean"] = torch.zeros_like(t)
            out.tensors[prefix + "running_var"] = torch.full_like(t, 1.0 - eps)
            out.sources[prefix + "running_mean"] = out.sources[prefix + "running_var"] = name
    return out


def align_to_model(
    converted: Dict[str, torch.Tensor], model_keys: Iterable[str]
) -> Tuple[Dict[str, torch.Tensor], List[str]]:
    """Place part-relative names into the model's full key space by unique suffix match.

    A suffix is matched on whole ``.``-separated components, so ``res5.0.conv1.weight``
    lands in ``backbone.bottom_up.res5.0.conv1.weight`` (FPN) or ``roi_heads.res5.0.conv1.weight``
    (C4, where res5 is the RoI head).

    Returns:
        (state dict keyed by model keys, converted names that matched no model key).

    Raises:
        ValueError: a name that fits several model keys (the model is ambiguous for it).
    """
    by_suffix: Dict[str, List[str]] = {}
    for mk in model_keys:
        parts = mk.split(".")
        for i in range(len(parts)):
            by_suffix.setdefault(".".join(parts[i:]), []).append(mk)
    placed: Dict[str, torch.Tensor] = {}
    unused: List[str] = []
    for name, t in converted.items():
        candidates = by_suffix.get(name, [])
        if len(candidates) == 1:
            placed[candidates[0]] = t
        elif len(candidates) > 1:
            # A C4 model has res5 only in the RoI head; FPN only in the backbone. Two
            # homes for one tensor means the model is ambiguous for this file: say so.
            raise ValueError(
                f"Converted weight '{name}' matches several model parameters: {candidates}; "
                "the file cannot be placed unambiguously in this model"
            )
        else:
            unused.append(name)
    return placed, unused
