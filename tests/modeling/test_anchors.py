"""Anchors: counts per level, centres, sizes, aspect ratios, ratio-major order."""
import math

import pytest
import torch

from detgn.modeling.proposal_generator.anchors import DefaultAnchorGenerator, generate_cell_anchors


def _wh(a):
    return a[:, 2] - a[:, 0], a[:, 3] - a[:, 1]


def test_fpn_anchor_counts_centres_sizes_ratios():
    sizes = [[32], [64], [128], [256], [512]]
    strides = [4, 8, 16, 32, 64]
    gen = DefaultAnchorGenerator(sizes=sizes, aspect_ratios=[[0.5, 1.0, 2.0]], strides=strides, offset=0.0)
    assert gen.num_anchors == [3] * 5
    feats = [torch.zeros(1, 8, 128 // s, 160 // s) for s in strides]
    anchors = gen(feats)
    for level, (boxes, s, size) in enumerate(zip(anchors, strides, sizes)):
        h, w = 128 // s, 160 // s
        a = boxes.tensor
        assert a.shape == (h * w * 3, 4), level
        a = a.view(h, w, 3, 4)
        centres = (a[..., :2] + a[..., 2:]) / 2
        # Location-major: anchor (y, x, k) is centred on (x * stride, y * stride).
        expected_x = (torch.arange(w) * s).float().view(1, w, 1).expand(h, w, 3)
        expected_y = (torch.arange(h) * s).float().view(h, 1, 1).expand(h, w, 3)
        torch.testing.assert_close(centres[..., 0], expected_x)
        torch.testing.assert_close(centres[..., 1], expected_y)
        bw, bh = _wh(a.reshape(-1, 4))
        torch.testing.assert_close((bw * bh).sqrt(), torch.full_like(bw, float(size[0])))
        torch.testing.assert_close((bh / bw).view(-1, 3)[0], torch.tensor([0.5, 1.0, 2.0]))


def test_offset_half_moves_centres():
    gen = DefaultAnchorGenerator(sizes=[[32]], aspect_ratios=[[1.0]], strides=[16], offset=0.5)
    a = gen([torch.zeros(1, 1, 2, 3)])[0].tensor
    centres = (a[:, :2] + a[:, 2:]) / 2
    torch.testing.assert_close(centres, torch.tensor([[8.0, 8], [24, 8], [40, 8], [8, 24], [24, 24], [40, 24]]))


def test_c4_cell_anchors_ratio_major():
    sizes = [32, 64, 128, 256, 512]
    cell = generate_cell_anchors(sizes, [0.5, 1.0, 2.0])
    assert cell.shape == (15, 4)
    w, h = _wh(cell)
    for r_idx, ratio in enumerate([0.5, 1.0, 2.0]):
        for s_idx, size in enumerate(sizes):
            a = r_idx * len(sizes) + s_idx
            assert math.sqrt(w[a] * h[a]) == pytest.approx(size, rel=1e-5)
            assert h[a] / w[a] == pytest.approx(ratio, rel=1e-5)
    torch.testing.assert_close((cell[:, :2] + cell[:, 2:]) / 2, torch.zeros(15, 2))
    gen = DefaultAnchorGenerator(sizes=[sizes], aspect_ratios=[[0.5, 1.0, 2.0]], strides=[16])
    assert gen.num_anchors == [15]
    assert len(gen([torch.zeros(2, 4, 5, 6)])[0]) == 5 * 6 * 15


def test_mismatched_level_counts_are_clear_errors():
    with pytest.raises(ValueError, match="MODEL.ANCHOR_GENERATOR.SIZES"):
        DefaultAnchorGenerator(sizes=[[32], [64]], aspect_ratios=[[1.0]], strides=[4, 8, 16])
