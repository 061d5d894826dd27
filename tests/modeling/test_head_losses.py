"""Exact values of the RPN, Fast R-CNN and mask losses (pure functions, no model)."""
import math

import pytest
import torch
import torch.nn.functional as F

from detgn.modeling.box_regression import Box2BoxTransform
from detgn.modeling.proposal_generator.rpn import rpn_losses
from detgn.modeling.roi_heads.fast_rcnn import fast_rcnn_inference, fast_rcnn_losses
from detgn.modeling.roi_heads.mask_head import mask_rcnn_inference, mask_rcnn_loss
from detgn.structures import Instances

RPN_T = Box2BoxTransform((1.0, 1.0, 1.0, 1.0))
ROI_T = Box2BoxTransform((10.0, 10.0, 5.0, 5.0))


def test_rpn_losses_hand_computed():
    anchors = torch.tensor([[0.0, 0, 10, 10], [0, 0, 20, 20], [10, 10, 30, 30], [5, 5, 15, 15]])
    gt_labels = torch.tensor([[1, 0, -1, 1]])
    logits = torch.tensor([[0.0, 0.0, 5.0, 2.0]], requires_grad=True)
    deltas = torch.zeros(1, 4, 4)
    deltas[0, 0] = torch.tensor([0.1, -0.2, 0.3, 0.0])
    deltas[0, 2] = 7.0  # not sampled: must not count
    gt_boxes = torch.tensor([[[0.0, 0, 10, 10], [0, 0, 1, 1], [0, 0, 1, 1], [5, 5, 25, 15]]])
    out = rpn_losses(logits, deltas, gt_labels, anchors, gt_boxes, RPN_T, 0.0)
    # cls: BCE of (0 -> 1), (0 -> 0), (2 -> 1) = 2 log 2 + log(1 + e^-2), over 3 sampled anchors.
    assert out["loss_rpn_cls"].item() == pytest.approx(0.504407457387621, abs=1e-6)
    # loc: |0.1| + |0.2| + |0.3| for anchor 0; anchor 3 -> gt has dx = 0.5, dw = log 2; over 3.
    assert out["loss_rpn_loc"].item() == pytest.approx(0.5977157268533152, abs=1e-6)
    out["loss_rpn_cls"].backward()
    assert logits.grad[0, 2] == 0  # unsampled anchors get no gradient


def test_rpn_losses_seeded_against_loop():
    torch.manual_seed(0)
    n, r = 2, 40
    anchors = torch.rand(r, 2) * 50
    anchors = torch.cat([anchors, anchors + torch.rand(r, 2) * 30 + 2], 1)
    gt = torch.rand(n, r, 2) * 50
    gt = torch.cat([gt, gt + torch.rand(n, r, 2) * 30 + 2], 2)
    labels = torch.randint(-1, 2, (n, r))
    logits, deltas = torch.randn(n, r), torch.randn(n, r, 4)
    out = rpn_losses(logits, deltas, labels, anchors, gt, RPN_T, 0.0)
    cls = loc = 0.0
    sampled = 0
    for i in range(n):
        for j in range(r):
            y = labels[i, j].item()
            if y < 0:
                continue
            sampled += 1
            p = 1 / (1 + math.exp(-logits[i, j].item()))
            cls += -math.log(p) if y == 1 else -math.log(1 - p)
            if y == 1:
                a, g = anchors[j].tolist(), gt[i, j].tolist()
                aw, ah, gw, gh = a[2] - a[0], a[3] - a[1], g[2] - g[0], g[3] - g[1]
                target = [
                    (g[0] + gw / 2 - a[0] - aw / 2) / aw,
                    (g[1] + gh / 2 - a[1] - ah / 2) / ah,
                    math.log(gw / aw),
                    math.log(gh / ah),
                ]
                loc += sum(abs(d - t) for d, t in zip(deltas[i, j].tolist(), target))
    assert out["loss_rpn_cls"].item() == pytest.approx(cls / sampled, rel=1e-5)
    assert out["loss_rpn_loc"].item() == pytest.approx(loc / sampled, rel=1e-5)


def test_fast_rcnn_losses_hand_computed():
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 1.0, 0.0]])  # K = 2, bg = 2
    gt_classes = torch.tensor([0, 2, 1])
    proposals = torch.tensor([[0.0, 0, 10, 10]] * 3)
    gt_boxes = torch.tensor([[1.0, 0, 11, 10], [0, 0, 5, 5], [0, 0, 20, 10]])
    deltas = torch.zeros(3, 8)
    deltas[0, 4:] = 50.0  # class 1's deltas of a class-0 RoI are ignored
    deltas[1, :] = 50.0  # background RoI: no regression loss
    deltas[2, 4:] = torch.tensor([5.0, 0.0, 3.0, 0.0])
    out = fast_rcnn_losses(logits, deltas, gt_classes, proposals, gt_boxes, ROI_T, 0.0)
    # CE: log(1 + 2 e^-2), log 3, log(1 + 2 / e), averaged.
    assert out["loss_cls"].item() == pytest.approx(0.6298672562740152, abs=1e-6)
    # RoI 0: target dx = 10 * 1/10 = 1; RoI 2: target (10 * 5/10, 0, 5 log 2, 0) vs (5, 0, 3, 0); over R = 3.
    assert out["loss_box_reg"].item() == pytest.approx(0.4885786342665755, abs=1e-6)


def test_fast_rcnn_losses_seeded_against_reference():
    torch.manual_seed(1)
    r, k = 30, 4
    logits = torch.randn(r, k + 1)
    deltas = torch.randn(r, 4 * k)
    gt_classes = torch.randint(0, k + 1, (r,))
    p = torch.rand(r, 2) * 40
    proposals = torch.cat([p, p + torch.rand(r, 2) * 20 + 1], 1)
    g = torch.rand(r, 2) * 40
    gt_boxes = torch.cat([g, g + torch.rand(r, 2) * 20 + 1], 1)
    out = fast_rcnn_losses(logits, deltas, gt_classes, proposals, gt_boxes, ROI_T, 0.0)
    ce = sum(-F.log_softmax(logits[i], 0)[gt_classes[i]].item() for i in range(r)) / r
    reg = 0.0
    for i in range(r):
        c = gt_classes[i].item()
        if c == k:
            continue
        target = ROI_T.get_deltas(proposals[i : i + 1], gt_boxes[i : i + 1])[0]
        reg += (deltas[i, 4 * c : 4 * c + 4] - target).abs().sum().item()
    assert out["loss_cls"].item() == pytest.approx(ce, rel=1e-5)
    assert out["loss_box_reg"].item() == pytest.approx(reg / r, rel=1e-5)


def test_fast_rcnn_losses_no_foreground_and_no_rois():
    logits = torch.randn(4, 3, requires_grad=True)
    deltas = torch.randn(4, 8, requires_grad=True)
    out = fast_rcnn_losses(logits, deltas, torch.full((4,), 2), torch.rand(4, 4), torch.rand(4, 4), ROI_T)
    assert out["loss_box_reg"].item() == 0.0 and out["loss_box_reg"].requires_grad
    (out["loss_cls"] + out["loss_box_reg"]).backward()
    assert deltas.grad is not None and (deltas.grad == 0).all()
    empty = fast_rcnn_losses(torch.zeros(0, 3, requires_grad=True), torch.zeros(0, 8), torch.zeros(0, dtype=torch.long),
                             torch.zeros(0, 4), torch.zeros(0, 4), ROI_T)
    assert empty["loss_cls"].item() == 0.0 and empty["loss_box_reg"].item() == 0.0


def test_mask_loss_hand_computed_and_seeded():
    logits = torch.full((2, 3, 2, 2), 100.0)  # other classes' channels must be ignored
    logits[0, 2] = torch.tensor([[0.0, 1.0], [-1.0, 2.0]])
    logits[1, 0] = 0.0
    targets = torch.tensor([[[1.0, 0.0], [0.0, 1.0]], [[1.0, 1.0], [0.0, 0.0]]])
    loss = mask_rcnn_loss(logits, torch.tensor([2, 0]), targets)
    assert loss.item() == pytest.approx(0.652398411109893, abs=1e-6)

    torch.manual_seed(2)
    logits = torch.randn(5, 4, 6, 6)
    classes = torch.randint(0, 4, (5,))
    targets = (torch.rand(5, 6, 6) > 0.5).float()
    total = 0.0
    for i in range(5):
        for y in range(6):
            for x in range(6):
                p = 1 / (1 + math.exp(-logits[i, classes[i], y, x].item()))
                total += -math.log(p) if targets[i, y, x] > 0 else -math.log(1 - p)
    assert mask_rcnn_loss(logits, classes, targets).item() == pytest.approx(total / (5 * 36), rel=1e-5)
    zero = mask_rcnn_loss(torch.zeros(0, 4, 6, 6, requires_grad=True), classes[:0], targets[:0])
    assert zero.item() == 0.0 and zero.requires_grad


def test_fast_rcnn_inference_threshold_nms_topk():
    # Two RoIs, K = 2. RoI 0 and 1 give overlapping class-0 boxes (NMS keeps the best);
    # RoI 1's class-1 box is kept; a score <= 0.05 is dropped.
    boxes = torch.tensor([[0.0, 0, 10, 10, 50, 50, 60, 60], [1.0, 0, 11, 10, 0, 0, 30, 30]])
    scores = torch.tensor([[0.9, 0.04, 0.06], [0.8, 0.15, 0.05]])
    (res,), (rois,) = fast_rcnn_inference([boxes], [scores], [(25, 40)], 0.05, 0.5, 100)
    assert res.pred_classes.tolist() == [0, 1]
    torch.testing.assert_close(res.scores, torch.tensor([0.9, 0.15]))
    torch.testing.assert_close(res.pred_boxes.tensor, torch.tensor([[0.0, 0, 10, 10], [0, 0, 30, 25]]))  # clipped
    assert rois.tolist() == [0, 1]
    (res,), _ = fast_rcnn_inference([boxes], [scores], [(25, 40)], 0.05, 0.5, 1)
    assert len(res) == 1
    (res,), _ = fast_rcnn_inference([torch.zeros(0, 8)], [torch.zeros(0, 3)], [(25, 40)], 0.05, 0.5, 100)
    assert len(res) == 0 and res.pred_boxes.tensor.shape == (0, 4)


def test_mask_inference_picks_predicted_class():
    logits = torch.zeros(3, 2, 4, 4)
    logits[:, 1] = 5.0
    a = Instances((8, 8), pred_classes=torch.tensor([1, 0]))
    b = Instances((8, 8), pred_classes=torch.tensor([1]))
    mask_rcnn_inference(logits, [a, b])
    assert a.pred_masks.shape == (2, 1, 4, 4) and b.pred_masks.shape == (1, 1, 4, 4)
    assert a.pred_masks[0].min() > 0.99 and a.pred_masks[1].max() == 0.5


def test_subnormal_scores_are_never_detections():
    """With SCORE_THRESH_TEST 0, a probability below the smallest normal float32 (which some CPU
    kernels flush to 0 and others keep) is not a detection: the count does not depend on the CPU."""
    boxes = torch.tensor([[0.0, 0, 10, 10, 20, 20, 30, 30]])
    scores = torch.tensor([[0.9, 1e-40, 0.1 - 1e-40]])
    assert scores[0, 1] > 0  # a subnormal, not zero
    (res,), _ = fast_rcnn_inference([boxes], [scores], [(40, 40)], 0.0, 0.5, 100)
    assert res.pred_classes.tolist() == [0]
    scores[0, 1] = 2e-38  # the smallest normal is 1.18e-38
    (res,), _ = fast_rcnn_inference([boxes], [scores], [(40, 40)], 0.0, 0.5, 100)
    assert res.pred_classes.tolist() == [0, 1]
