"""FPN over ResNet: levels, strides, names, norm/bias rules, top-down wiring, odd sizes."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from detgn.config import ConfigError, get_cfg
from detgn.layers import Conv2d
from detgn.modeling.backbone import FPN, BACKBONE_REGISTRY, LastLevelMaxPool, ResNet, build_backbone


pytestmark = pytest.mark.usefixtures("one_thread")


LEVELS = ["p2", "p3", "p4", "p5", "p6"]


def _cfg(depth=18, fpn_norm="", out_channels=32):
    cfg = get_cfg()
    cfg.MODEL.BACKBONE.NAME = "build_resnet_fpn_backbone"
    cfg.MODEL.RESNETS.DEPTH = depth
    cfg.MODEL.FPN.NORM = fpn_norm
    cfg.MODEL.FPN.OUT_CHANNELS = out_channels
    return cfg


@pytest.mark.parametrize("depth", [18, 34, 50, 101, 152])
def test_levels_and_strides_every_depth(depth):
    torch.manual_seed(0)
    fpn = build_backbone(_cfg(depth)).eval()
    shapes = fpn.output_shape()
    assert list(shapes) == LEVELS
    assert [s.stride for s in shapes.values()] == [4, 8, 16, 32, 64]
    assert all(s.channels == 32 for s in shapes.values())
    assert fpn.size_divisibility == 32
    assert [s.stride for s in fpn.bottom_up.output_shape().values()] == [4, 8, 16, 32]
    with torch.no_grad():
        out = fpn(torch.randn(1, 3, 64, 128))
    assert list(out) == LEVELS
    for name, spec in shapes.items():
        assert out[name].shape == (1, 32, 64 // spec.stride, 128 // spec.stride)


def test_module_names_norm_and_bias_rules():
    fpn = build_backbone(_cfg(fpn_norm="GN", out_channels=64))
    names = {n for n, _ in fpn.named_children()}
    assert {f"fpn_lateral{k}" for k in range(2, 6)} <= names
    assert {f"fpn_output{k}" for k in range(2, 6)} <= names
    assert "bottom_up" in names and isinstance(fpn.bottom_up, ResNet)
    for k in range(2, 6):
        for conv in (getattr(fpn, f"fpn_lateral{k}"), getattr(fpn, f"fpn_output{k}")):
            assert isinstance(conv, Conv2d) and conv.bias is None
            assert isinstance(conv.norm, nn.GroupNorm) and conv.norm.num_groups == 32
    assert fpn.fpn_lateral2.kernel_size == (1, 1) and fpn.fpn_output2.kernel_size == (3, 3)
    assert fpn.fpn_lateral5.in_channels == 512 and fpn.fpn_lateral2.in_channels == 64
    plain = build_backbone(_cfg(fpn_norm=""))
    assert plain.fpn_output3.norm is None and plain.fpn_output3.bias is not None
    # Xavier (kaiming uniform a=1) init: within +-sqrt(3 / fan_in), bias 0
    w = plain.fpn_output3.weight
    assert w.abs().max() <= math.sqrt(3 / (32 * 9)) and plain.fpn_output3.bias.abs().sum() == 0
    lines = fpn.describe_norms()
    assert any(line.startswith("fpn_lateral2: GN(G=32) x1") for line in lines)


def test_top_down_wiring_with_odd_sizes():
    """Recompute P2..P6 by hand from the ResNet features on a non-multiple-of-32 image."""
    torch.manual_seed(0)
    fpn = build_backbone(_cfg(fpn_norm="")).eval()
    x = torch.randn(1, 3, 100, 76)
    with torch.no_grad():
        out = fpn(x)
        feats = fpn.bottom_up(x)
        prev = fpn.fpn_lateral5(feats["res5"])
        expected = {"p5": fpn.fpn_output5(prev)}
        for k in (4, 3, 2):
            lateral = getattr(fpn, f"fpn_lateral{k}")(feats[f"res{k}"])
            prev = lateral + F.interpolate(prev, size=lateral.shape[-2:], mode="nearest")
            expected[f"p{k}"] = getattr(fpn, f"fpn_output{k}")(prev)
        expected["p6"] = F.max_pool2d(expected["p5"], kernel_size=1, stride=2)
    for name in LEVELS:
        torch.testing.assert_close(out[name], expected[name])
    assert out["p2"].shape[-2:] == feats["res2"].shape[-2:] == (25, 19)
    assert out["p6"].shape[-2:] == (2, 2)


def test_fuse_avg_and_custom_fpn():
    trunk = ResNet(depth=18, norm="GN", out_features=["res3", "res4", "res5"])
    fpn = FPN(bottom_up=trunk, in_features=["res3", "res4", "res5"], out_channels=16,
              norm="", top_block=LastLevelMaxPool(), fuse_type="avg").eval()
    assert list(fpn.output_shape()) == ["p3", "p4", "p5", "p6"]
    with torch.no_grad():
        out = fpn(torch.randn(1, 3, 64, 64))
    assert out["p3"].shape == (1, 16, 8, 8)
    with pytest.raises(ValueError, match="fuse_type"):
        FPN(bottom_up=trunk, in_features=["res3"], fuse_type="max")
    with pytest.raises(ValueError, match="missing"):
        FPN(bottom_up=trunk, in_features=["res2", "res3"])


def test_fpn_config_errors():
    cfg = _cfg()
    cfg.MODEL.RESNETS.OUT_FEATURES = ["res3", "res4", "res5"]
    with pytest.raises(ConfigError, match="MODEL.RESNETS.OUT_FEATURES"):
        build_backbone(cfg)
    cfg = _cfg()
    cfg.MODEL.RESNETS.RES5_DILATION = 2
    with pytest.raises(ConfigError, match="RES5_DILATION"):
        build_backbone(cfg)
    cfg = _cfg(fpn_norm="GN", out_channels=48)
    with pytest.raises(ValueError, match="divisible by MODEL.GROUP_NORM.NUM_GROUPS"):
        build_backbone(cfg)
    assert sorted(BACKBONE_REGISTRY) == ["build_resnet_c4_backbone", "build_resnet_fpn_backbone"]
