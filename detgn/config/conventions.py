"""Conventions: the keys on which detectron2, Detectron and torchvision differ.

``MODEL.CONVENTION`` names one of :data:`CONVENTIONS`; :func:`apply_convention` (called by
``load_config`` after the file and the overrides are merged) gives each of its keys the
convention's value unless the config file (or a ``_BASE_`` of it) or a command-line
override sets that key: an explicit choice always wins.

The Detectron values are those of its ``core/config.py`` and the GN baselines'
``configs/04_2018_gn_baselines/*.yaml``; tests/configs/test_detectron_conventions.py
states each with its source. The torchvision values are those of
``torchvision.models.detection.maskrcnn_resnet50_fpn``.
"""
from __future__ import annotations

import logging
from typing import Any, Dict, Iterable, List, Tuple

from .errors import ConfigError

logger = logging.getLogger(__name__)

__all__ = ["CONVENTIONS", "apply_convention", "convention_keys"]

_TV_MEAN = [123.675, 116.28, 103.53]  # torchvision's image_mean x 255, RGB
_TV_STD = [58.395, 57.12, 57.375]

CONVENTIONS: Dict[str, Dict[str, Any]] = {
    # detgn's defaults are detectron2's.
    "detectron2": {},
    "detectron": {
        "MODEL.RPN.SMOOTH_L1_BETA": 1.0 / 9.0,  # RPN: smooth L1, sigma 3 (beta = 1/sigma^2)
        "MODEL.ROI_BOX_HEAD.SMOOTH_L1_BETA": 1.0,  # Fast R-CNN head: smooth L1, beta 1
        "MODEL.RPN.BOUNDARY_THRESH": 0,  # TRAIN.RPN_STRADDLE_THRESH: anchors crossing the border dropped
        "MODEL.POOLER_ALIGNED": False,  # Caffe2 RoIAlign without the half-pixel shift
        "SOLVER.BIAS_LR_FACTOR": 2.0,  # Caffe2 biases: 2x LR ...
        "SOLVER.WEIGHT_DECAY_BIAS": 0.0,  # ... and no weight decay
        "MODEL.ROI_MASK_HEAD.PREDICTOR_INIT": "msra",  # MRCNN.CONV_INIT: MSRAFill
        "MODEL.ROI_MASK_HEAD.PASTE_METHOD": "detectron",  # core/test.py segm_results
        "MODEL.RESNETS.CONV_INIT": "xavier",  # ConvGN -> Caffe2's default XavierFill
    },
    "torchvision": {
        "INPUT.FORMAT": "RGB",
        "MODEL.PIXEL_MEAN": _TV_MEAN,
        "MODEL.PIXEL_STD": _TV_STD,
        "MODEL.RESNETS.STRIDE_IN_1X1": False,  # stride on the 3x3 conv
        "MODEL.POOLER_ALIGNED": False,  # MultiScaleRoIAlign, aligned=False
        "MODEL.ANCHOR_GENERATOR.ROUND_CELL_ANCHORS": True,  # base_anchors.round()
        "MODEL.RPN.SMOOTH_L1_BETA": 1.0 / 9.0,
        "MODEL.ROI_BOX_HEAD.SMOOTH_L1_BETA": 1.0 / 9.0,
        "MODEL.RPN.POST_NMS_TOPK_TRAIN": 2000,
        "MODEL.ROI_MASK_HEAD.PREDICTOR_INIT": "msra",
        "MODEL.ROI_MASK_HEAD.PASTE_METHOD": "torchvision",
        "INPUT.RESIZE_TEST": "torchvision",  # GeneralizedRCNNTransform: float interpolate, floored sides
        "MODEL.ANCHOR_GENERATOR.STRIDES_FROM_IMAGE_SIZE": True,  # padded size // feature map size
    },
}


def convention_keys() -> List[str]:
    """Every key some convention sets."""
    return sorted({k for c in CONVENTIONS.values() for k in c})


def _node(cfg, key: str) -> Tuple[Any, str]:
    *parents, leaf = key.split(".")
    node = cfg
    for p in parents:
        node = node[p]
    return node, leaf


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, float) or isinstance(b, float):
        return isinstance(a, (int, float)) and isinstance(b, (int, float)) and abs(a - b) <= 1e-12 * max(1, abs(b))
    return a == b


def apply_convention(cfg, explicit: Iterable[str] = ()) -> List[str]:
    """Give ``cfg`` the keys of ``cfg.MODEL.CONVENTION`` except those in ``explicit`` (the
    full key names a config file or override set).

    Returns the explicit keys whose value differs from the convention's.
    """
    name = cfg.MODEL.CONVENTION
    if not name:
        return []
    if name not in CONVENTIONS:
        raise ConfigError(f"MODEL.CONVENTION = {name!r}; choose '' or one of {sorted(CONVENTIONS)}")
    explicit = set(explicit)
    kept = []
    for key, value in CONVENTIONS[name].items():
        node, leaf = _node(cfg, key)
        if key not in explicit:
            old = node[leaf]
            node[leaf] = type(old)(value) if isinstance(old, (tuple, list)) else value
        elif not _same(node[leaf], value):
            kept.append(f"{key} = {node[leaf]!r} (the {name} convention has {value!r})")
    if kept:
        logger.info("MODEL.CONVENTION %s: keeping explicit %s", name, "; ".join(kept))
    return kept
