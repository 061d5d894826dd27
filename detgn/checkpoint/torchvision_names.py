"""torchvision weights -> detgn parameter names.

Two sources:
- torchvision's detection ``maskrcnn_resnet50_fpn`` state dict -> the equivalent detgn
  model (R50-FPN, FrozenBN, 2fc box head, ``MODEL.POOLER_ALIGNED False``): full names.
- torchvision's ImageNet ``resnet*`` state dicts -> part-relative names
  (``stem.conv1.weight``, ``res2.0.conv1.norm.weight``), placed into any detgn model by
  :func:`detgn.checkpoint.c2_names.align_to_model`.

torchvision keeps the background as class 0 in ``cls_score``, ``bbox_pred`` and
``mask_fcn_logits``; detgn puts it last in ``cls_score`` and has no background rows
elsewhere. Both old (``mask_fcn1``, ``inner_blocks.0``) and current
(``mask_head.0.0``, ``inner_blocks.0.0``) torchvision layouts are accepted.
"""
from __future__ import annotations

import re
from typing import Dict, List, Optional, Tuple

import torch

_TRUNK_RULES: List[Tuple[str, str]] = [
    (r"conv1\.weight", "stem.conv1.weight"),
    (r"bn1\.(weight|bias|running_mean|running_var)", r"stem.conv1.norm.\1"),
    (r"layer(\d)\.(\d+)\.conv(\d)\.weight", "res{L}.{1}.conv{2}.weight"),
    (r"layer(\d)\.(\d+)\.bn(\d)\.(weight|bias|running_mean|running_var)", "res{L}.{1}.conv{2}.norm.{3}"),
    (r"layer(\d)\.(\d+)\.downsample\.0\.weight", "res{L}.{1}.shortcut.weight"),
    (r"layer(\d)\.(\d+)\.downsample\.1\.(weight|bias|running_mean|running_var)", "res{L}.{1}.shortcut.norm.{2}"),
]


def _rename_trunk(key: str):
    for pattern, target in _TRUNK_RULES:
        m = re.fullmatch(pattern, key)
        if m:
            if "{L}" in target:
                g = m.groups()
                return target.replace("{L}", str(int(g[0]) + 1)).format(*g)
            return m.expand(target)
    return None


def convert_torchvision_resnet(state_dict: Dict[str, torch.Tensor]) -> Tuple[Dict[str, torch.Tensor], List[str]]:
    """ImageNet ResNet (``conv1``, ``bn1``, ``layerN``, ``fc``) -> part-relative detgn names.

    Returns (converted tensors, source keys not used: ``fc.*``, ``num_batches_tracked``, unknown).
    """
    out, unused = {}, []
    for k, v in state_dict.items():
        new = None if k.endswith("num_batches_tracked") else _rename_trunk(k)
        if new is None:
            unused.append(k)
        else:
            out[new] = v
    return out, unused


# COCO's 80 category ids (1..90 with gaps), in the contiguous order of detgn's 80 classes.
COCO_CATEGORY_IDS = (
    1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 27, 28, 31, 32, 33, 34,
    35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 46, 47, 48, 49, 50, 51, 52, 53, 54, 55, 56, 57, 58, 59, 60, 61, 62, 63,
    64, 65, 67, 70, 72, 73, 74, 75, 76, 77, 78, 79, 80, 81, 82, 84, 85, 86, 87, 88, 89, 90,
)


def _coco80_rows(v: torch.Tensor, per_class: int, background_last: bool) -> torch.Tensor:
    """Rows of torchvision's 90 COCO-id classes (index = category id - 1) -> detgn's 80."""
    rows = [r for cid in COCO_CATEGORY_IDS for r in range((cid - 1) * per_class, cid * per_class)]
    if background_last:
        rows += list(range(90 * per_class, 91 * per_class))
    return v[rows]


def convert_torchvision_maskrcnn(state_dict: Dict[str, torch.Tensor],
                                 num_classes: Optional[int] = None) -> Tuple[Dict[str, torch.Tensor], List[str]]:
    """torchvision Mask R-CNN R50-FPN state dict -> detgn full names.

    torchvision's COCO models predict 91 classes (background and COCO category ids 1..90,
    10 of them unused); with ``num_classes`` 80 their rows are mapped onto detgn's 80
    contiguous COCO classes (:data:`COCO_CATEGORY_IDS`).

    Returns (converted tensors, source keys that have no detgn counterpart).
    """
    coco80 = num_classes == 80 and state_dict.get("roi_heads.box_predictor.cls_score.bias", torch.zeros(0)).numel() == 91
    out: Dict[str, torch.Tensor] = {}
    unused: List[str] = []
    for k, v in state_dict.items():
        if k.endswith("num_batches_tracked"):
            unused.append(k)
            continue
        new = None
        if k.startswith("backbone.body."):
            rel = _rename_trunk(k[len("backbone.body."):])
            new = "backbone.bottom_up." + rel if rel else None
        elif m := re.fullmatch(r"backbone\.fpn\.(inner|layer)_blocks\.(\d)(?:\.0)?\.(weight|bias)", k):
            kind = "fpn_lateral" if m.group(1) == "inner" else "fpn_output"
            new = f"backbone.{kind}{int(m.group(2)) + 2}.{m.group(3)}"
        elif m := re.fullmatch(r"rpn\.head\.conv(?:\.0\.0)?\.(weight|bias)", k):
            new = f"proposal_generator.rpn_head.conv.{m.group(1)}"
        elif m := re.fullmatch(r"rpn\.head\.(cls_logits|bbox_pred)\.(weight|bias)", k):
            part = {"cls_logits": "objectness_logits", "bbox_pred": "anchor_deltas"}[m.group(1)]
            new = f"proposal_generator.rpn_head.{part}.{m.group(2)}"
        elif m := re.fullmatch(r"roi_heads\.box_head\.(fc6|fc7)\.(weight|bias)", k):
            new = k
        elif m := re.fullmatch(r"roi_heads\.box_predictor\.cls_score\.(weight|bias)", k):
            new, v = k, torch.cat([v[1:], v[:1]], dim=0)  # background first -> last
            v = _coco80_rows(v, 1, True) if coco80 else v
        elif m := re.fullmatch(r"roi_heads\.box_predictor\.bbox_pred\.(weight|bias)", k):
            new, v = k, v[4:]  # no regression rows for the background
            v = _coco80_rows(v, 4, False) if coco80 else v
        elif m := re.fullmatch(r"roi_heads\.mask_head\.mask_fcn(\d)\.(weight|bias)", k):
            new = k
        elif m := re.fullmatch(r"roi_heads\.mask_head\.(\d)\.0\.(weight|bias)", k):
            new = f"roi_heads.mask_head.mask_fcn{int(m.group(1)) + 1}.{m.group(2)}"
        elif m := re.fullmatch(r"roi_heads\.mask_predictor\.conv5_mask\.(weight|bias)", k):
            new = f"roi_heads.mask_head.conv5_mask.{m.group(1)}"
        elif m := re.fullmatch(r"roi_heads\.mask_predictor\.mask_fcn_logits\.(weight|bias)", k):
            new, v = f"roi_heads.mask_head.mask_fcn_logits.{m.group(1)}", v[1:]
            v = _coco80_rows(v, 1, False) if coco80 else v
        if new is None:
            unused.append(k)
        else:
            out[new] = v
    return out, unused


def is_torchvision_maskrcnn(state_dict: Dict[str, torch.Tensor]) -> bool:
    return any(k.startswith("backbone.body.") for k in state_dict) and any(k.startswith("rpn.head.") for k in state_dict)


def is_torchvision_resnet(state_dict: Dict[str, torch.Tensor]) -> bool:
    return "conv1.weight" in state_dict and any(k.startswith("layer1.") for k in state_dict)
