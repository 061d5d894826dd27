"""Conv2d bias/norm rules, init helpers, NMS/RoIAlign wrappers, ROIPooler vs torchvision."""
import math
from collections import OrderedDict

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import MultiScaleRoIAlign
from torchvision.ops import roi_align as tv_roi_align

from detgn.layers import (
    Conv2d,
    FrozenBatchNorm2d,
    Norm,
    ROIAlign,
    ROIPooler,
    assign_boxes_to_levels,
    batched_nms,
    c2_msra_fill,
    c2_xavier_fill,
    nms,
    roi_align,
)
from detgn.structures import Boxes


pytestmark = pytest.mark.usefixtures("one_thread")


def test_conv_bias_rules():
    assert Conv2d(3, 8, 3).bias is not None and Conv2d(3, 8, 3).norm is None
    assert Conv2d(3, 8, 3, norm="").bias is not None
    c = Conv2d(3, 32, 3, norm="GN")
    assert c.bias is None and isinstance(c.norm, nn.GroupNorm) and c.norm.num_groups == 32
    assert Conv2d(3, 8, 1, norm=Norm("FrozenBN")).bias is None
    assert Conv2d(3, 8, 1, bias=True, norm="BN").bias is not None
    assert isinstance(Conv2d(3, 8, 1, norm=FrozenBatchNorm2d(8)).norm, FrozenBatchNorm2d)


def test_conv_forward_is_conv_norm_activation():
    torch.manual_seed(0)
    c = Conv2d(3, 8, 3, padding=1, norm="LN", activation=F.relu)
    x = torch.randn(2, 3, 6, 6)
    ref = F.relu(c.norm(F.conv2d(x, c.weight, None, 1, 1)))
    torch.testing.assert_close(c(x), ref)
    assert (c(x) >= 0).all()


@pytest.mark.parametrize("norm", ["", "FrozenBN", "BN", "GN", "LN", "IN"])
def test_conv_empty_batch(norm):
    c = Conv2d(16, 32, 3, padding=1, norm=norm, activation=F.relu).train()
    x = torch.zeros(0, 16, 7, 7, requires_grad=True)
    y = c(x)
    assert y.shape == (0, 32, 7, 7)
    y.sum().backward()
    assert c.weight.grad is not None and c.weight.grad.abs().sum() == 0


def test_c2_init_helpers():
    torch.manual_seed(0)
    conv = nn.Conv2d(64, 256, 3, bias=True)
    nn.init.constant_(conv.bias, 1.0)
    c2_msra_fill(conv)
    assert conv.bias.abs().sum() == 0
    # kaiming normal over fan_out = 256 * 9 with ReLU gain: std = sqrt(2 / fan_out)
    assert abs(conv.weight.std().item() - math.sqrt(2 / (256 * 9))) < 0.05 * math.sqrt(2 / (256 * 9))
    conv2 = nn.Conv2d(64, 256, 3, bias=True)
    nn.init.constant_(conv2.bias, 1.0)
    c2_xavier_fill(conv2)
    bound = math.sqrt(3 / (64 * 9))  # kaiming uniform with a=1: gain 1
    assert conv2.weight.abs().max() <= bound and conv2.weight.abs().max() > 0.95 * bound
    assert conv2.bias.abs().sum() == 0


def test_nms_wrappers():
    boxes = torch.tensor([[0, 0, 10, 10], [1, 1, 10, 10], [20, 20, 30, 30], [0, 0, 10, 10.0]])
    scores = torch.tensor([0.9, 0.8, 0.7, 0.95])
    assert nms(boxes, scores, 0.5).tolist() == [3, 2]
    assert batched_nms(boxes, scores, torch.tensor([0, 0, 0, 1]), 0.5).tolist() == [3, 0, 2]
    empty = nms(torch.zeros(0, 4), torch.zeros(0), 0.5)
    assert empty.dtype == torch.int64 and empty.numel() == 0
    e2 = batched_nms(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.int64), 0.5)
    assert e2.dtype == torch.int64 and e2.numel() == 0


def test_roi_align_conventions_and_empty():
    torch.manual_seed(0)
    feat = torch.randn(2, 3, 16, 16, requires_grad=True)
    rois = torch.tensor([[0, 2.0, 3.0, 20.0, 25.0], [1, 0.0, 0.0, 31.0, 31.0]])
    for aligned in (True, False):
        ours = ROIAlign(7, 0.5, 2, aligned=aligned)(feat, rois)
        ref = tv_roi_align(feat, rois, (7, 7), 0.5, 2, aligned)
        torch.testing.assert_close(ours, ref)
    # aligned=True equals the legacy op on boxes shifted by half a feature pixel
    shifted = rois.clone()
    shifted[:, 1:] -= 0.5 / 0.5
    torch.testing.assert_close(
        roi_align(feat, rois, 7, 0.5, 2, True), roi_align(feat, shifted, 7, 0.5, 2, False)
    )
    out = roi_align(feat, torch.zeros(0, 5), (7, 5), 0.5, 2, True)
    assert out.shape == (0, 3, 7, 5)
    out.sum().backward()
    assert feat.grad.abs().sum() == 0


def _random_boxes(g, n, size):
    xy = torch.rand(n, 2, generator=g) * size * 0.8
    wh = torch.rand(n, 2, generator=g) ** 2 * size * 0.9 + 2
    return Boxes(torch.cat([xy, (xy + wh).clamp(max=size)], dim=1))


def test_pooler_matches_torchvision_multiscale_roialign():
    g = torch.Generator().manual_seed(0)
    img = 512
    strides = [4, 8, 16, 32]
    feats = [torch.randn(2, 8, img // s, img // s, generator=g) for s in strides]
    boxes = [_random_boxes(g, 60, img), _random_boxes(g, 45, img)]
    # boxes exactly at level boundaries (sides 112, 224, 448) and tiny/huge ones
    boxes[0] = Boxes.cat([boxes[0], Boxes(torch.tensor([[0, 0, 112, 112], [10, 10, 234, 234],
                                                        [0, 0, 448.0, 448], [5, 5, 6, 6], [0, 0, 511, 511]]))])
    pooler = ROIPooler(7, scales=[1 / s for s in strides], sampling_ratio=2, aligned=False)
    ours = pooler(feats, boxes)
    tv = MultiScaleRoIAlign(["p2", "p3", "p4", "p5"], output_size=7, sampling_ratio=2)
    ref = tv(OrderedDict(zip(["p2", "p3", "p4", "p5"], feats)), [b.tensor for b in boxes], [(img, img)] * 2)
    assert ours.shape == (110, 8, 7, 7)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
    levels = assign_boxes_to_levels([boxes[0][-5:]], 2, 5, 224, 4).tolist()
    assert levels == [1, 2, 3, 0, 3]


def test_pooler_single_level_empty_and_grad():
    g = torch.Generator().manual_seed(1)
    feat = torch.randn(2, 4, 16, 16, generator=g, requires_grad=True)
    pooler = ROIPooler((14, 14), scales=[1 / 16], sampling_ratio=0, aligned=True)
    boxes = [_random_boxes(g, 3, 256), Boxes(torch.zeros(0, 4))]
    out = pooler([feat], boxes)
    rois = torch.cat([torch.zeros(3, 1), boxes[0].tensor], dim=1)
    torch.testing.assert_close(out, tv_roi_align(feat, rois, (14, 14), 1 / 16, 0, True))
    out.sum().backward()
    assert feat.grad[0].abs().sum() > 0 and feat.grad[1].abs().sum() == 0
    multi = ROIPooler(7, scales=[1 / 4, 1 / 8], sampling_ratio=2, aligned=True)
    feats = [torch.randn(1, 4, 32, 32), torch.randn(1, 4, 16, 16)]
    assert multi(feats, [Boxes(torch.zeros(0, 4))]).shape == (0, 4, 7, 7)


def test_pooler_clear_errors():
    with pytest.raises(ValueError, match="consecutive"):
        ROIPooler(7, scales=[1 / 4, 1 / 16], sampling_ratio=2, aligned=True)
    pooler = ROIPooler(7, scales=[1 / 4, 1 / 8], sampling_ratio=2, aligned=True)
    with pytest.raises(ValueError, match="built for 2 feature maps"):
        pooler([torch.zeros(1, 4, 8, 8)], [Boxes(torch.zeros(0, 4))])
    with pytest.raises(ValueError, match="boxes for 2 images"):
        pooler([torch.zeros(1, 4, 8, 8), torch.zeros(1, 4, 4, 4)], [Boxes(torch.zeros(0, 4))] * 2)
