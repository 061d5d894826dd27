"""Detectron (Caffe2) ``.pkl`` weights -> detgn parameter names.

A Detectron file is a pickled dict ``{"blobs": {name: ndarray}}`` (latin1). Names use
``_`` separators (REFERENCE.md §5). This module renames blobs to detgn's module names
*relative to the part they belong to* (``res2.0.conv1.weight``, ``fpn_lateral5.bias``,
``box_predictor.cls_score.weight``); :func:`align_to_model` then places each one into
the model by unique suffix match, so one converter serves FPN (``backbone.bottom_up.res2``)
and C4 (``backbone.res2`` and ``roi_heads.res5``) models alike.

Conventions bridged here:
- Detectron folds BN* into an affine ``_bn_s``/``_bn_b``; detgn's FrozenBN keeps
  mean/var buffers, so mean = 0 and var = 1 - eps make its scale exactly ``_bn_s``.
- Detectron puts the background class first (``cls_score`` row 0, ``bbox_pred`` rows 0-3,
  ``mask_fcn_logits`` channel 0); detgn puts it last in ``cls_score`` and has no background
  rows in ``bbox_pred`` / ``mask_fcn_logits``.
"""
from __future__ import annotations

import re
from typing import Dict, Iterable, List, Optional, Tuple

import numpy as np
import torch

# Blobs that carry no model weights (ImageNet classifier, solver state).
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
        return f"res{stage}.{block}.{conv}.{_PARAM[p]}"
    return None


def _rename_detection(name: str) -> Optional[str]:
    """FPN, RPN, box head and mask head blobs of a Detectron detection checkpoint."""
    rules: List[Tuple[str, str]] = [
        (r"^fpn_inner_res(\d)_\d+_sum(?:_lateral)?(?:_(gn))?_([wbs])$", "fpn_lateral{0}"),
        (r"^fpn_res(\d)_\d+_sum(?:_(gn))?_([wbs])$", "fpn_output{0}"),
        (r"^rpn_conv_fpn\d()()_([wb])$", "rpn_head.conv"),
        (r"^conv_rpn()()_([wb])$", "rpn_head.conv"),
        (r"^rpn_cls_logits(?:_fpn\d)?()()_([wb])$", "rpn_head.objectness_logits"),
        (r"^rpn_bbox_pred(?:_fpn\d)?()()_([wb])$", "rpn_head.anchor_deltas"),
        (r"^head_conv(\d)(?:_(gn))?_([wbs])$", "box_head.conv{0}"),
        (r"^fc(6|7)()_([wb])$", "box_head.fc{0}"),
        (r"^cls_score()()_([wb])$", "box_predictor.cls_score"),
        (r"^bbox_pred()()_([wb])$", "box_predictor.bbox_pred"),
        (r"^_\[mask\]_fcn(\d)(?:_(gn))?_([wbs])$", "mask_head.mask_fcn{0}"),
        (r"^conv5_mask()()_([wb])$", "mask_head.conv5_mask"),
        (r"^mask_fcn_logits()()_([wb])$", "mask_head.mask_fcn_logits"),
    ]
    for pattern, target in rules:
        m = re.match(pattern, name)
        if m:
            idx, norm, p = m.groups()
            base = target.format(idx)
            if norm:
                return f"{base}." + _norm_param(p)
            return f"{base}.{_PARAM[p]}"
    return None


def convert_c2_blobs(blobs: Dict[str, np.ndarray], *, eps: float = 1e-5) -> Tuple[Dict[str, torch.Tensor], List[str]]:
    """Rename Detectron blobs to part-relative detgn names.

    Returns:
        (tensors by detgn name, names of blobs that were not recognised). Class-dependent
        predictor tensors are returned with the background already moved/dropped.
    """
    out: Dict[str, torch.Tensor] = {}
    unknown: List[str] = []
    for name, value in blobs.items():
        if _IGNORED.match(name):
            continue
        if not isinstance(value, np.ndarray):
            unknown.append(name)
            continue
        new = _rename_resnet(name) or _rename_detection(name)
        if new is None:
            unknown.append(name)
            continue
        t = torch.from_numpy(np.ascontiguousarray(value)).float()
        if new.endswith("box_predictor.cls_score.weight") or new.endswith("box_predictor.cls_score.bias"):
            t = torch.cat([t[1:], t[:1]], dim=0)  # background first -> last
        elif new.endswith("box_predictor.bbox_pred.weight") or new.endswith("box_predictor.bbox_pred.bias"):
            # Detectron keeps 4 rows for the background (class-agnostic: 8 rows -> 4).
            t = t[4:]
        elif new.endswith("mask_fcn_logits.weight") or new.endswith("mask_fcn_logits.bias"):
            if t.shape[0] > 1:
                t = t[1:]  # drop the background mask channel
        out[new] = t
        if name.endswith("_bn_s"):  # a folded BN*: give FrozenBN neutral statistics
            prefix = new[: -len("weight")]
            out[prefix + "running_mean"] = torch.zeros_like(t)
            out[prefix + "running_var"] = torch.full_like(t, 1.0 - eps)
    return out, unknown


def align_to_model(
    converted: Dict[str, torch.Tensor], model_keys: Iterable[str]
) -> Tuple[Dict[str, torch.Tensor], List[str]]:
    """Place part-relative names into the model's full key space by unique suffix match.

    Returns:
        (state dict keyed by model keys, converted names that matched no model key).
    """
    model_keys = list(model_keys)
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
            # homes for one blob means the model is ambiguous for this file: say so.
            raise ValueError(
                f"Detectron blob for '{name}' matches several model parameters: {candidates}"
            )
        else:
            unused.append(name)
    return placed, unused
