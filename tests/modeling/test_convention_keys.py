"""The model-side keys that MODEL.CONVENTION sets, each against its peer's definition."""
import math

import pytest
import torch
from torchvision.models.detection.anchor_utils import AnchorGenerator

from detgn.config import load_config
from detgn.modeling import build_model
from detgn.modeling.proposal_generator.anchors import generate_cell_anchors

TINY = ["MODEL.RESNETS.DEPTH", "18", "MODEL.RESNETS.STEM_OUT_CHANNELS", "16", "MODEL.RESNETS.RES2_OUT_CHANNELS", "16",
        "MODEL.FPN.OUT_CHANNELS", "32", "MODEL.GROUP_NORM.NUM_GROUPS", "8", "MODEL.ROI_BOX_HEAD.CONV_DIM", "32",
        "MODEL.ROI_BOX_HEAD.FC_DIM", "64", "MODEL.ROI_MASK_HEAD.CONV_DIM", "32", "VERBOSE_STARTUP", "False"]


def test_rounded_cell_anchors_are_torchvisions():
    sizes, ratios = (32.0, 64.0, 128.0, 256.0, 512.0), (0.5, 1.0, 2.0)
    tv = AnchorGenerator(sizes=tuple((s,) for s in sizes), aspect_ratios=(ratios,) * 5)
    for size in sizes:
        ours = generate_cell_anchors([size], ratios, round_to_pixels=True)
        theirs = tv.generate_anchors([size], list(ratios))
        assert torch.equal(ours, theirs), (size, ours, theirs)
    assert generate_cell_anchors([32.0], [0.5], round_to_pixels=True).tolist() == [[-23.0, -11.0, 23.0, 11.0]]
    exact = generate_cell_anchors([32.0], [0.5])[0]
    assert exact[0] == pytest.approx(-22.627, abs=1e-3) and exact[1] == pytest.approx(-11.314, abs=1e-3)


def _model(*opts):
    torch.manual_seed(0)
    return build_model(load_config("synthetic/demo_gn_scratch.yaml", TINY + list(opts)))


def test_resnet_conv_init_xavier_is_caffe2_xavierfill():
    m = _model("MODEL.RESNETS.CONV_INIT", "xavier")
    w = m.backbone.bottom_up.res3[0].conv2.weight
    bound = math.sqrt(3.0 / (w.shape[1] * w.shape[2] * w.shape[3]))
    assert w.abs().max() <= bound and w.abs().max() > 0.95 * bound  # uniform in +-sqrt(3 / fan_in)
    assert w.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.1)
    msra = _model().backbone.bottom_up.res3[0].conv2.weight  # normal, std sqrt(2 / fan_out)
    assert msra.std().item() == pytest.approx(math.sqrt(2.0 / (msra.shape[0] * 9)), rel=0.1)


def test_mask_predictor_init():
    gauss = _model().roi_heads.mask_head.mask_fcn_logits.weight
    msra = _model("MODEL.ROI_MASK_HEAD.PREDICTOR_INIT", "msra").roi_heads.mask_head.mask_fcn_logits.weight
    assert gauss.std().item() == pytest.approx(0.001, rel=0.2)
    assert msra.std().item() == pytest.approx(math.sqrt(2.0 / msra.shape[0]), rel=0.2)  # fan_out = K x 1 x 1


def test_paste_method_reaches_the_output():
    m = _model("MODEL.ROI_MASK_HEAD.PASTE_METHOD", "detectron")
    assert m.mask_paste == "detectron"
    with pytest.raises(Exception, match="PASTE_METHOD"):
        _model("MODEL.ROI_MASK_HEAD.PASTE_METHOD", "nearest")
