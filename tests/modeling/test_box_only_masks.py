"""A box-only annotation (no segmentation) takes part in the box losses and never in the mask loss:
no mask target of an instance without a mask reaches the loss, and its RoIs get no mask gradient."""
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from detector_testdata import tiny_cfg  # noqa: E402

import detgn.modeling.roi_heads.mask_head as mask_head  # noqa: E402
from detgn.modeling import build_model  # noqa: E402
from detgn.modeling.roi_heads.mask_head import mask_rcnn_fg_loss, mask_rcnn_loss  # noqa: E402
from detgn.structures import Boxes, Instances, PolygonMasks  # noqa: E402

SQUARE = [[20.0, 20.0, 60.0, 20.0, 60.0, 60.0, 20.0, 60.0]]


def _fg(boxes, has_mask, polygons):
    inst = Instances((96, 128), proposal_boxes=Boxes(torch.tensor(boxes)), gt_classes=torch.tensor([1] * len(boxes)))
    inst.gt_masks = PolygonMasks(polygons)
    inst.gt_has_mask = torch.tensor(has_mask)
    return inst


def test_rois_of_box_only_instances_are_left_out():
    torch.manual_seed(0)
    fg = [_fg([[18.0, 18.0, 62.0, 62.0], [10.0, 10.0, 50.0, 70.0]], [True, False], [SQUARE, []]),
          _fg([[15.0, 25.0, 55.0, 65.0]], [False], [[]])]
    logits = torch.randn(3, 3, 28, 28, requires_grad=True)
    loss = mask_rcnn_fg_loss(logits, fg)
    loss.backward()
    # Only RoI 0 has a mask: the loss is its loss alone, and the others get no gradient.
    target = fg[0].gt_masks[[0]].crop_and_resize(fg[0].proposal_boxes.tensor[:1], 28)
    expected = mask_rcnn_loss(logits[:1].detach(), torch.tensor([1]), target)
    torch.testing.assert_close(loss.detach(), expected)
    assert logits.grad[0].abs().sum() > 0
    assert torch.equal(logits.grad[1:], torch.zeros_like(logits.grad[1:]))


def test_no_mask_at_all_gives_zero_connected_loss():
    fg = [_fg([[10.0, 10.0, 50.0, 70.0]], [False], [[]])]
    logits = torch.randn(1, 3, 28, 28, requires_grad=True)
    loss = mask_rcnn_fg_loss(logits, fg)
    loss.backward()
    assert loss.item() == 0.0 and torch.equal(logits.grad, torch.zeros_like(logits))


def test_in_the_detector_box_only_instances_reach_box_losses_not_the_mask_loss(monkeypatch):
    cfg = tiny_cfg("FPN", "GN", "2fc")
    cfg.CPU.BF16 = "off"
    torch.manual_seed(0)
    model = build_model(cfg).train()
    seen = []
    original = mask_head.mask_rcnn_loss

    def spy(logits, classes, targets, has_mask=None):
        seen.append((targets.detach().clone(), None if has_mask is None else has_mask.clone()))
        return original(logits, classes, targets, has_mask)

    monkeypatch.setattr(mask_head, "mask_rcnn_loss", spy)
    image = torch.randint(0, 255, (3, 96, 128), dtype=torch.uint8)
    inst = Instances((96, 128), gt_boxes=Boxes(torch.tensor([[18.0, 18.0, 62.0, 62.0], [70.0, 30.0, 120.0, 90.0]])),
                     gt_classes=torch.tensor([1, 2]))
    inst.gt_masks = PolygonMasks([SQUARE, []])
    inst.gt_has_mask = torch.tensor([True, False])
    losses = model([{"image": image, "height": 96, "width": 128, "instances": inst}])
    assert losses["loss_box_reg"] > 0 and losses["loss_cls"] > 0
    (targets, has_mask), = seen
    assert has_mask is not None and has_mask.any() and not has_mask.all()  # RoIs of both instances
    # Every RoI flagged without a mask had the empty target, and only those are left out.
    assert targets[~has_mask].sum() == 0 and (targets[has_mask].flatten(1).sum(1) > 0).all()
