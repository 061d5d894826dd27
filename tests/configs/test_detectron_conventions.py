"""configs/gn_paper/* carry Detectron's effective hyper-parameters, key by key.

``DETECTRON_TABLE`` is written by hand from Detectron's source (facebookresearch/Detectron:
``detectron/core/config.py`` defaults, ``configs/04_2018_gn_baselines/*.yaml``, the modules
named in each row). Every row is checked against every shipped GN-paper config after
loading (``MODEL.CONVENTION detectron`` plus the files' own keys) and the table is the one
configs/gn_paper/README.md prints. Values are per image where Detectron's are per batch of
its 2 images per GPU; the LR is Detectron's 0.02 for 16 images, which the linear rule
rescales to the images per iteration actually used.
"""
from __future__ import annotations

import math
from pathlib import Path

import pytest

from detgn.config import load_config
from detgn.config.conventions import CONVENTIONS

REPO = Path(__file__).resolve().parents[2]
PAPER_DIR = REPO / "detgn" / "configs" / "gn_paper"  # configs/ at the root links there
CONFIGS = sorted(p.name for p in PAPER_DIR.glob("*.yaml"))

# fmt: off
# (detgn key, Detectron's effective value, Detectron's setting, where it is)
DETECTRON_TABLE = (
    ("SOLVER.BASE_LR", 0.02, "SOLVER.BASE_LR: 0.02 (8 GPUs x 2 images)", "configs/04_2018_gn_baselines/*.yaml"),
    ("SOLVER.REFERENCE_IMS_PER_BATCH", 16, "NUM_GPUS 8 x TRAIN.IMS_PER_BATCH 2", "gn baselines yaml; core/config.py"),
    ("SOLVER.MOMENTUM", 0.9, "SOLVER.MOMENTUM", "core/config.py"),
    ("SOLVER.WEIGHT_DECAY", 1e-4, "SOLVER.WEIGHT_DECAY: 0.0001", "gn baselines yaml"),
    ("SOLVER.WEIGHT_DECAY_NORM", 0.0, "SOLVER.WEIGHT_DECAY_GN = 0.0", "core/config.py"),
    ("SOLVER.WEIGHT_DECAY_BIAS", 0.0, "biases: no weight decay", "modeling/optimizer.py"),
    ("SOLVER.BIAS_LR_FACTOR", 2.0, "biases: gradient x 2 (2x LR)", "modeling/optimizer.py"),
    ("SOLVER.GAMMA", 0.1, "SOLVER.GAMMA: 0.1", "gn baselines yaml"),
    ("SOLVER.WARMUP_ITERS", 500, "SOLVER.WARM_UP_ITERS = 500", "core/config.py"),
    ("SOLVER.WARMUP_FACTOR", 1.0 / 3.0, "SOLVER.WARM_UP_FACTOR = 1/3, WARM_UP_METHOD linear (detgn: always linear)", "core/config.py"),
    ("INPUT.MIN_SIZE_TRAIN", (800,), "TRAIN.SCALES: (800,)", "gn baselines yaml"),
    ("INPUT.MAX_SIZE_TRAIN", 1333, "TRAIN.MAX_SIZE: 1333", "gn baselines yaml"),
    ("INPUT.MIN_SIZE_TEST", 800, "TEST.SCALE: 800", "gn baselines yaml"),
    ("INPUT.MAX_SIZE_TEST", 1333, "TEST.MAX_SIZE: 1333", "gn baselines yaml"),
    ("INPUT.RANDOM_FLIP", 0.5, "TRAIN.USE_FLIPPED = True", "core/config.py"),
    ("MODEL.PIXEL_MEAN", [102.9801, 115.9465, 122.7717], "PIXEL_MEANS (BGR)", "core/config.py"),
    ("MODEL.ANCHOR_GENERATOR.SIZES", [[32], [64], [128], [256], [512]], "FPN.RPN_ANCHOR_START_SIZE = 32, levels 2-6", "core/config.py"),
    ("MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS", [[0.5, 1.0, 2.0]], "FPN.RPN_ASPECT_RATIOS = (0.5, 1, 2)", "core/config.py"),
    ("MODEL.RPN.BOUNDARY_THRESH", 0, "TRAIN.RPN_STRADDLE_THRESH = 0", "core/config.py; roi_data/rpn.py"),
    ("MODEL.RPN.IOU_THRESHOLDS", [0.3, 0.7], "TRAIN.RPN_NEGATIVE_OVERLAP 0.3, RPN_POSITIVE_OVERLAP 0.7", "core/config.py"),
    ("MODEL.RPN.BATCH_SIZE_PER_IMAGE", 256, "TRAIN.RPN_BATCH_SIZE_PER_IM = 256", "core/config.py"),
    ("MODEL.RPN.POSITIVE_FRACTION", 0.5, "TRAIN.RPN_FG_FRACTION = 0.5", "core/config.py"),
    ("MODEL.RPN.SMOOTH_L1_BETA", 1.0 / 9.0, "SmoothL1Loss(beta=1/9)", "modeling/FPN.py (add_fpn_rpn_losses)"),
    ("MODEL.RPN.PRE_NMS_TOPK_TRAIN", 2000, "TRAIN.RPN_PRE_NMS_TOP_N: 2000 per level", "gn baselines yaml"),
    ("MODEL.RPN.PRE_NMS_TOPK_TEST", 1000, "TEST.RPN_PRE_NMS_TOP_N: 1000 per level", "gn baselines yaml"),
    ("MODEL.RPN.POST_NMS_TOPK_TRAIN", 1000, "TRAIN.RPN_POST_NMS_TOP_N = 2000 per batch of 2 images", "core/config.py; ops/collect_and_distribute_fpn_rpn_proposals.py"),
    ("MODEL.RPN.POST_NMS_TOPK_TEST", 1000, "TEST.RPN_POST_NMS_TOP_N: 1000", "gn baselines yaml"),
    ("MODEL.RPN.NMS_THRESH", 0.7, "TRAIN/TEST.RPN_NMS_THRESH = 0.7", "core/config.py"),
    ("MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", 512, "TRAIN.BATCH_SIZE_PER_IM: 512", "gn baselines yaml"),
    ("MODEL.ROI_HEADS.POSITIVE_FRACTION", 0.25, "TRAIN.FG_FRACTION = 0.25", "core/config.py"),
    ("MODEL.ROI_HEADS.IOU_THRESHOLDS", [0.5], "TRAIN.FG_THRESH 0.5, BG_THRESH_HI 0.5, BG_THRESH_LO 0.0", "core/config.py"),
    ("MODEL.ROI_HEADS.SCORE_THRESH_TEST", 0.05, "TEST.SCORE_THRESH = 0.05", "core/config.py"),
    ("MODEL.ROI_HEADS.NMS_THRESH_TEST", 0.5, "TEST.NMS: 0.5", "gn baselines yaml"),
    ("TEST.DETECTIONS_PER_IMAGE", 100, "TEST.DETECTIONS_PER_IM = 100", "core/config.py"),
    ("MODEL.POOLER_ALIGNED", False, "Caffe2 RoIAlign (no half-pixel shift)", "caffe2 roi_align_op"),
    ("MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION", 7, "FAST_RCNN.ROI_XFORM_RESOLUTION: 7", "gn baselines yaml"),
    ("MODEL.ROI_BOX_HEAD.POOLER_SAMPLING_RATIO", 2, "FAST_RCNN.ROI_XFORM_SAMPLING_RATIO: 2", "gn baselines yaml"),
    ("MODEL.ROI_BOX_HEAD.BBOX_REG_WEIGHTS", (10.0, 10.0, 5.0, 5.0), "MODEL.BBOX_REG_WEIGHTS", "core/config.py"),
    ("MODEL.ROI_BOX_HEAD.SMOOTH_L1_BETA", 1.0, "SmoothL1Loss (default beta 1)", "modeling/fast_rcnn_heads.py"),
    ("MODEL.ROI_MASK_HEAD.POOLER_RESOLUTION", 14, "MRCNN.ROI_XFORM_RESOLUTION: 14 (mask 28)", "gn baselines yaml"),
    ("MODEL.ROI_MASK_HEAD.POOLER_SAMPLING_RATIO", 2, "MRCNN.ROI_XFORM_SAMPLING_RATIO: 2", "gn baselines yaml"),
    ("MODEL.ROI_MASK_HEAD.CONV_DIM", 256, "MRCNN.DIM_REDUCED = 256", "core/config.py"),
    ("MODEL.ROI_MASK_HEAD.PREDICTOR_INIT", "msra", "MRCNN.CONV_INIT: MSRAFill (mask_fcn_logits)", "gn baselines yaml; modeling/mask_rcnn_heads.py"),
    ("MODEL.ROI_MASK_HEAD.PASTE_METHOD", "detectron", "segm_results: padded mask, expanded int box, cv2.resize, > 0.5", "core/test.py; MRCNN.THRESH_BINARIZE"),
    ("MODEL.RESNETS.CONV_INIT", "xavier", "ConvGN passes no weight_init: Caffe2's XavierFill", "modeling/detector.py (ConvGN)"),
    ("MODEL.GROUP_NORM.NUM_GROUPS", 32, "GROUP_NORM.NUM_GROUPS = 32", "core/config.py"),
    ("MODEL.GROUP_NORM.EPSILON", 1e-5, "GROUP_NORM.EPSILON = 1e-5", "core/config.py"),
)
# The C4 rows (Table 4) follow Detectron's C4 baseline, configs/12_2017_baselines/
# e2e_mask_rcnn_R-50-C4_2x.yaml (LR 0.01 for 8 GPUs x 1 image = 0.02 for 16), where it differs.
C4_TABLE = {
    "MODEL.ANCHOR_GENERATOR.SIZES": ([[32, 64, 128, 256, 512]], "RPN.SIZES: (32, 64, 128, 256, 512), stride 16", "C4 baseline yaml"),
    "MODEL.RPN.PRE_NMS_TOPK_TRAIN": (12000, "TRAIN.RPN_PRE_NMS_TOP_N = 12000", "core/config.py"),
    "MODEL.RPN.PRE_NMS_TOPK_TEST": (6000, "TEST.RPN_PRE_NMS_TOP_N: 6000", "C4 baseline yaml"),
    "MODEL.RPN.POST_NMS_TOPK_TRAIN": (2000, "TRAIN.RPN_POST_NMS_TOP_N = 2000 per batch of 1 image", "core/config.py; C4 yaml IMS_PER_BATCH 1"),
    "MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION": (14, "FAST_RCNN.ROI_XFORM_RESOLUTION = 14", "core/config.py"),
    "MODEL.ROI_BOX_HEAD.POOLER_SAMPLING_RATIO": (0, "FAST_RCNN.ROI_XFORM_SAMPLING_RATIO = 0 (adaptive)", "core/config.py"),
    "MODEL.ROI_MASK_HEAD.POOLER_SAMPLING_RATIO": (0, "MRCNN.ROI_XFORM_SAMPLING_RATIO = 0 (adaptive)", "core/config.py"),
}
# fmt: on


def _rows(cfg):
    c4 = cfg.MODEL.ROI_HEADS.NAME == "Res5ROIHeads"
    for key, value, setting, source in DETECTRON_TABLE:
        if c4 and key in C4_TABLE:
            value, setting, source = C4_TABLE[key]
        yield key, value, setting, source


def _value(cfg, key):
    node = cfg
    for part in key.split("."):
        node = node[part]
    return node


def _same(a, b):
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, float) or isinstance(b, float):
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)
    return a == b


@pytest.mark.parametrize("name", CONFIGS)
def test_config_has_detectron_values(name):
    cfg = load_config(str(PAPER_DIR / name))
    assert cfg.MODEL.CONVENTION == "detectron"
    wrong = [f"{key} = {_value(cfg, key)!r}, Detectron {value!r} ({setting}; {source})"
             for key, value, setting, source in _rows(cfg) if not _same(_value(cfg, key), value)]
    assert not wrong, f"{name}:\n" + "\n".join(wrong)


def test_convention_keys_are_in_the_table():
    """Every key MODEL.CONVENTION detectron sets is stated (with its source) in the table."""
    stated = {row[0] for row in DETECTRON_TABLE}
    assert set(CONVENTIONS["detectron"]) <= stated, set(CONVENTIONS["detectron"]) - stated


def test_readme_prints_the_table():
    text = (PAPER_DIR / "README.md").read_text()
    for key, value, setting, source in DETECTRON_TABLE:
        assert f"`{key}`" in text and setting in text, f"configs/gn_paper/README.md lacks the row of {key}"
    for key, (value, setting, source) in C4_TABLE.items():
        assert setting in text, f"configs/gn_paper/README.md lacks the C4 row of {key}"


def test_an_explicit_key_wins_over_the_convention():
    cfg = load_config(str(PAPER_DIR / "mask_rcnn_R_50_FPN_GN_2x.yaml"), ["MODEL.POOLER_ALIGNED", "True"])
    assert cfg.MODEL.POOLER_ALIGNED is True and cfg.MODEL.RPN.SMOOTH_L1_BETA == pytest.approx(1 / 9)
    # On the command line the convention applies over every file's keys but not over other overrides.
    cfg = load_config("synthetic/demo_gn_scratch.yaml", ["MODEL.CONVENTION", "torchvision", "MODEL.PIXEL_STD",
                                                          "[1.0, 1.0, 1.0]"])
    assert list(cfg.MODEL.PIXEL_STD) == [1.0, 1.0, 1.0] and cfg.INPUT.FORMAT == "RGB"
    assert cfg.MODEL.ANCHOR_GENERATOR.ROUND_CELL_ANCHORS is True


def test_unknown_convention_is_a_config_error():
    from detgn.config import ConfigError

    with pytest.raises(ConfigError, match="MODEL.CONVENTION"):
        load_config("synthetic/demo_gn_scratch.yaml", ["MODEL.CONVENTION", "caffe"])
