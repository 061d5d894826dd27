"""Box coding, the matcher (with low-quality matches) and the balanced sampler."""
import math

import pytest
import torch

from detgn.modeling.box_regression import DEFAULT_SCALE_CLAMP, Box2BoxTransform, smooth_l1_loss
from detgn.modeling.matcher import Matcher
from detgn.modeling.sampling import subsample_labels


def _random_boxes(n, seed):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * 100
    wh = torch.rand(n, 2, generator=g) * 50 + 1
    return torch.cat([xy, xy + wh], dim=1)


@pytest.mark.parametrize("weights", [(1.0, 1.0, 1.0, 1.0), (10.0, 10.0, 5.0, 5.0)])
def test_box_coding_round_trip(weights):
    t = Box2BoxTransform(weights)
    src, dst = _random_boxes(50, 0), _random_boxes(50, 1)
    deltas = t.get_deltas(src, dst)
    assert deltas.shape == (50, 4)
    back = t.apply_deltas(deltas, src)
    torch.testing.assert_close(back, dst, rtol=0, atol=1e-4)


def test_box_coding_known_values():
    t = Box2BoxTransform((10.0, 10.0, 5.0, 5.0))
    src = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    dst = torch.tensor([[5.0, 0.0, 25.0, 10.0]])  # centre moves by 10, width doubles
    d = t.get_deltas(src, dst)
    torch.testing.assert_close(d, torch.tensor([[10.0 * 10 / 10, 0.0, 5.0 * math.log(2.0), 0.0]]))


def test_apply_deltas_class_specific_layout_and_clamp():
    t = Box2BoxTransform((1.0, 1.0, 1.0, 1.0))
    boxes = torch.tensor([[0.0, 0.0, 16.0, 16.0]])
    deltas = torch.tensor([[0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 100.0, 0.0]])  # two classes
    out = t.apply_deltas(deltas, boxes)
    assert out.shape == (1, 8)
    torch.testing.assert_close(out[0, :4], boxes[0])
    # dw = 100 is clamped to log(1000/16): width 16 * 1000/16 = 1000, centre shifted by 16.
    assert DEFAULT_SCALE_CLAMP == pytest.approx(math.log(1000 / 16))
    torch.testing.assert_close(out[0, 4:], torch.tensor([24.0 - 500.0, 0.0, 24.0 + 500.0, 16.0]))
    assert t.apply_deltas(torch.zeros(0, 4), torch.zeros(0, 4)).shape == (0, 4)


def test_smooth_l1_beta_zero_is_l1():
    a, b = torch.tensor([0.0, 1.0, -3.0]), torch.tensor([0.5, 1.0, 0.0])
    assert smooth_l1_loss(a, b, 0.0).item() == pytest.approx(3.5)
    # beta 1: 0.5 * 0.5^2 / 1 + 0 + (3 - 0.5)
    assert smooth_l1_loss(a, b, 1.0).item() == pytest.approx(0.125 + 2.5)


def test_matcher_thresholds_and_low_quality():
    iou = torch.tensor(
        [
            # pred: 0     1     2     3     4
            [0.10, 0.05, 0.60, 0.60, 0.20],  # gt0: best 0.6 (tie of pred 2 and 3), none >= 0.7
            [0.80, 0.10, 0.30, 0.00, 0.50],  # gt1
        ]
    )
    m = Matcher([0.3, 0.7], [0, -1, 1], allow_low_quality_matches=False)
    matches, labels = m(iou)
    assert matches.tolist() == [1, 1, 0, 0, 1]
    assert labels.tolist() == [1, 0, -1, -1, -1]
    m = Matcher([0.3, 0.7], [0, -1, 1], allow_low_quality_matches=True)
    matches, labels = m(iou)
    assert matches.tolist() == [1, 1, 0, 0, 1]
    assert labels.tolist() == [1, 0, 1, 1, -1]  # both tied best anchors of gt0 become positive


def test_matcher_low_quality_ignores_gt_without_overlap():
    iou = torch.tensor([[0.0, 0.0, 0.0], [0.1, 0.2, 0.9]])
    _, labels = Matcher([0.3, 0.7], [0, -1, 1], allow_low_quality_matches=True)(iou)
    assert labels.tolist() == [0, 0, 1]


def test_matcher_no_ground_truth_and_roi_labels():
    matches, labels = Matcher([0.5], [0, 1])(torch.zeros(0, 4))
    assert matches.tolist() == [0, 0, 0, 0] and labels.tolist() == [0, 0, 0, 0]
    _, labels = Matcher([0.5], [0, 1])(torch.tensor([[0.49, 0.5, 0.51]]))
    assert labels.tolist() == [0, 1, 1]
    with pytest.raises(ValueError, match="len\\(thresholds\\) \\+ 1"):
        Matcher([0.3, 0.7], [0, 1])


@pytest.mark.parametrize("num_pos, num_neg, exp_pos, exp_neg", [(200, 1000, 128, 128), (100, 1000, 100, 156), (10, 1000, 10, 246), (300, 20, 128, 20)])
def test_sampler_fractions(num_pos, num_neg, exp_pos, exp_neg):
    torch.manual_seed(0)
    labels = torch.cat([torch.ones(num_pos), torch.zeros(num_neg), torch.full((50,), -1.0)]).long()
    labels = labels[torch.randperm(len(labels))]
    pos, neg = subsample_labels(labels, 256, 0.5, bg_label=0)
    assert len(pos) == exp_pos and len(neg) == exp_neg
    assert (labels[pos] == 1).all() and (labels[neg] == 0).all()
    assert len(set(pos.tolist())) == len(pos) and len(set(neg.tolist())) == len(neg)


def test_sampler_roi_labels_background_is_k():
    k = 3
    labels = torch.tensor([0, 1, 2, k, k, k, k, -1])
    pos, neg = subsample_labels(labels, 4, 0.25, bg_label=k, generator=torch.Generator().manual_seed(0))
    assert len(pos) == 1 and labels[pos].item() in (0, 1, 2)
    assert len(neg) == 3 and (labels[neg] == k).all()
