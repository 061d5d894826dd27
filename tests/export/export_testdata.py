"""Shared pieces of the export tests: tiny configs, decisive weights, and the equality check.

Random weights give every class a probability near 1/(K+1) and every mask pixel near 0.5, so
scores tie and masks sit on the threshold, and the smallest float difference reorders them.
:func:`decisive_weights` scales the class and mask logits (and tames unnormalised frozen-BN
activations) so that detections are distinct, as a trained model's are.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "modeling"))
from detector_testdata import tiny_cfg  # noqa: E402

from detgn.benchmark.backends import make_random_weights_decisive  # noqa: E402
from detgn.export.compare import match_detections, rules_of_model  # noqa: E402
from detgn.layers import FrozenBatchNorm2d  # noqa: E402
from detgn.modeling import build_model  # noqa: E402

# (height, width) of the test images: each resizes to a size other than the export's
# tracing sizes, one is square before the resize, one portrait, one very wide.
IMAGE_SIZES = [(120, 150), (200, 133), (90, 200), (300, 300)]


def export_cfg(arch: str = "FPN", norm: str = "GN", head: str = "4conv1fc", *opts):
    cfg = tiny_cfg(arch, norm, head)
    cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST = 96, 160
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 0.0  # every image has TEST.DETECTIONS_PER_IMAGE detections
    cfg.CPU.BF16 = "off"  # equality is with the fp32 model
    cfg.merge_from_list(list(opts))
    return cfg


def decisive_weights(cfg, path, seed: int = 3) -> str:
    """Save a seeded model whose scores and masks are far from ties; returns the path."""
    torch.manual_seed(seed)
    model = build_model(cfg)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (FrozenBatchNorm2d, torch.nn.modules.batchnorm._BatchNorm)):
                m.running_var.fill_(4.0)  # random convs without normalisation would blow up
    make_random_weights_decisive(model)
    torch.save({"model": model.state_dict()}, path)
    return str(path)


def make_image(h: int, w: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed + h * 1000 + w)
    img = rng.integers(0, 80, (h, w, 3), dtype=np.uint8)
    img[h // 5: h // 2, w // 4: 3 * w // 4] = (40, 200, 230)
    img[h // 2: 4 * h // 5, w // 8: w // 3] = (220, 60, 90)
    return img


def assert_same_detections(ref, other, predictor):
    """The export's equality (:mod:`detgn.export.compare`) under ``predictor``'s inference thresholds."""
    m = match_detections(ref.pred_boxes.tensor, ref.scores, ref.pred_classes, other.pred_boxes.tensor,
                         other.scores, other.pred_classes,
                         ref.pred_masks if ref.has("pred_masks") else None,
                         other.pred_masks if other.has("pred_masks") else None, rules=rules_of_model(predictor.model))
    assert m.ok, m.summary()
    assert other.image_size == ref.image_size
    if ref.has("pred_masks"):
        assert other.pred_masks.shape == ref.pred_masks.shape and other.pred_masks.dtype == torch.bool
    return m
