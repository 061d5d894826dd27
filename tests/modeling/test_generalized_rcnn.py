"""GeneralizedRCNN end to end: zero-instance images, R50-FPN GN, pre/post-processing,
RPN proposals, RoI sampling, describe_model and clear errors."""
import math

import pytest
import torch
from detector_testdata import check_predictions, empty_batch, make_sample, tiny_batch, tiny_cfg

from detgn.modeling import build_model, describe_model, detector_postprocess
from detgn.modeling.matcher import Matcher
from detgn.modeling.proposal_generator.rpn import StandardRPNHead, find_top_rpn_proposals
from detgn.modeling.roi_heads.roi_heads import GT_PROPOSAL_LOGIT, ROIHeads
from detgn.structures import Boxes, Instances, PolygonMasks


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.mark.parametrize("arch, norm, box_head", [("FPN", "GN", "4conv1fc"), ("FPN", "FrozenBN", "2fc"), ("C4", "BN", None)])
def test_zero_instance_images_train(arch, norm, box_head):
    torch.manual_seed(0)
    model = build_model(tiny_cfg(arch, norm, box_head))
    for batch in (empty_batch(), [tiny_batch()[0], empty_batch()[1]]):
        model.zero_grad(set_to_none=True)
        losses = model(batch)
        assert all(torch.isfinite(v) for v in losses.values())
        if len(batch[0]["instances"]) == 0:
            assert losses["loss_box_reg"].item() == 0.0 and losses["loss_mask"].item() == 0.0
            assert losses["loss_rpn_loc"].item() == 0.0
            assert losses["loss_rpn_cls"].item() > 0 and losses["loss_cls"].item() > 0
        sum(losses.values()).backward()
        # DDP needs every trainable parameter in the graph, even with nothing to regress.
        unused = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
        assert unused == []


def test_zero_rois_in_heads_do_not_crash():
    """No proposals and no ground truth: the heads see 0 RoIs in training and inference."""
    torch.manual_seed(0)
    model = build_model(tiny_cfg("FPN", "GN", "4conv1fc"))
    heads = model.roi_heads
    heads.proposal_append_gt = False
    images = model.preprocess_image(empty_batch())
    features = model.backbone(images.tensor)
    proposals = [Instances(s, proposal_boxes=Boxes(torch.zeros(0, 4)), objectness_logits=torch.zeros(0)) for s in images.image_sizes]
    targets = [b["instances"] for b in empty_batch()]
    _, losses = heads(images, features, proposals, targets)
    assert {k: v.item() for k, v in losses.items()} == {"loss_cls": 0.0, "loss_box_reg": 0.0, "loss_mask": 0.0}
    sum(losses.values()).backward()
    heads.eval()
    with torch.no_grad():
        results, _ = heads(images, features, proposals)
    assert [len(r) for r in results] == [0, 0] and results[0].pred_masks.shape[0] == 0


def test_r50_fpn_gn_4conv1fc_forward_backward_128px():
    torch.manual_seed(0)
    cfg = tiny_cfg("FPN", "GN", "4conv1fc", depth=50, small=False)
    model = build_model(cfg)
    batch = tiny_batch(128)
    losses = model(batch)
    assert set(losses) == {"loss_rpn_cls", "loss_rpn_loc", "loss_cls", "loss_box_reg", "loss_mask"}
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert model.roi_heads.box_head.conv4.norm.num_groups == 32
    model.eval()
    with torch.no_grad():
        check_predictions(model(batch), batch, cfg.MODEL.ROI_HEADS.NUM_CLASSES)


def test_preprocess_pads_to_32_and_normalises():
    model = build_model(tiny_cfg("C4", "GN", None))
    batch = [make_sample(100, 70, [], seed=0), make_sample(64, 90, [], seed=1)]
    images = model.preprocess_image(batch)
    assert images.tensor.shape == (2, 3, 128, 96) and images.image_sizes == [(100, 70), (64, 90)]
    mean = torch.tensor([102.9801, 115.9465, 122.7717]).view(3, 1, 1)  # Detectron's BGR means, std 1
    torch.testing.assert_close(images.tensor[0, :, :100, :70], batch[0]["image"].float() - mean)
    assert (images.tensor[1, :, 64:, :] == 0).all()
    assert "pixel_mean" not in model.state_dict()


def test_input_errors_name_the_item():
    model = build_model(tiny_cfg("FPN", "FrozenBN", "2fc"))
    batch = tiny_batch()
    del batch[1]["instances"]
    with pytest.raises(ValueError, match="training batch item 1 .*synthetic_2.png.* no 'instances'"):
        model(batch)
    with pytest.raises(ValueError, match="'image' must be \\(3, H, W\\)"):
        model([{"image": torch.zeros(1, 32, 32, dtype=torch.uint8), "file_name": "gray.png"}])
    cfg = tiny_cfg("FPN", "FrozenBN", "2fc")
    cfg.MODEL.ROI_HEADS.NAME = "CascadeROIHeads"
    with pytest.raises(ValueError, match="MODEL.ROI_HEADS.NAME.*Res5ROIHeads"):
        build_model(cfg)
    cfg = tiny_cfg("FPN", "FrozenBN", "2fc")
    cfg.MODEL.RPN.IN_FEATURES = ["p2", "p9"]
    with pytest.raises(ValueError, match="MODEL.RPN.IN_FEATURES.*p9"):
        build_model(cfg)


def test_inference_at_original_size_and_postprocess():
    model = build_model(tiny_cfg("FPN", "IN", "2fc")).eval()
    batch = tiny_batch()
    with torch.no_grad():
        out = model(batch)
        raw = model.inference(batch, do_postprocess=False)
    check_predictions(out, batch, 3)
    assert out[0]["instances"].image_size == (192, 192) and out[1]["instances"].image_size == (48, 80)
    assert raw[0].image_size == (128, 128) and raw[0].pred_masks.shape[1:] == (1, 28, 28)

    inst = Instances((100, 100), pred_boxes=Boxes(torch.tensor([[10.0, 10, 20, 30], [150.0, 0, 160, 10]])),
                     scores=torch.tensor([0.9, 0.8]), pred_classes=torch.tensor([1, 2]),
                     pred_masks=torch.ones(2, 1, 28, 28))
    r = detector_postprocess(inst, 200, 300)
    assert r.image_size == (200, 300) and len(r) == 1  # the box outside the image is dropped
    torch.testing.assert_close(r.pred_boxes.tensor, torch.tensor([[30.0, 20, 60, 60]]))
    assert r.pred_masks.shape == (1, 200, 300) and r.pred_masks.sum().item() == 30 * 40
    assert inst.pred_boxes.tensor[0, 2].item() == 20.0  # the input is not modified


def test_find_top_rpn_proposals():
    # Level 0 has 4 boxes, level 1 has 2; pre-NMS top 3 per level, post-NMS top 3.
    boxes0 = torch.tensor([[[0.0, 0, 10, 10], [1, 0, 11, 10], [50, 50, 60, 60], [5, 5, 5.5, 30]]])
    logits0 = torch.tensor([[3.0, 2.0, 1.0, 5.0]])
    boxes1 = torch.tensor([[[0.0, 0, 10, 10], [-20, -20, 200, 200]]])
    logits1 = torch.tensor([[0.5, 4.0]])
    (p,) = find_top_rpn_proposals([boxes0, boxes1], [logits0, logits1], [(64, 80)], 0.7, 3, 3, min_box_size=1.0)
    # Level 0: top 3 = [5.0 tiny (dropped), 3.0, 2.0 (NMS with 3.0)] -> [3.0]; level 1: [4.0 clipped, 0.5].
    # The same box on two levels survives: NMS is per level.
    assert p.objectness_logits.tolist() == [4.0, 3.0, 0.5]
    torch.testing.assert_close(p.proposal_boxes.tensor, torch.tensor([[0.0, 0, 80, 64], [0, 0, 10, 10], [0, 0, 10, 10]]))


def test_rpn_head_shapes_and_init():
    head = StandardRPNHead(in_channels=16, num_anchors=3)
    logits, deltas = head([torch.randn(2, 16, 8, 10), torch.randn(2, 16, 4, 5)])
    assert [t.shape for t in logits] == [(2, 3, 8, 10), (2, 3, 4, 5)]
    assert [t.shape for t in deltas] == [(2, 12, 8, 10), (2, 12, 4, 5)]
    for layer in (head.conv, head.objectness_logits, head.anchor_deltas):
        assert layer.bias.abs().max() == 0 and 0.005 < layer.weight.std() < 0.015


def test_label_and_sample_proposals():
    torch.manual_seed(0)
    heads = ROIHeads(num_classes=5, batch_size_per_image=8, positive_fraction=0.25,
                     proposal_matcher=Matcher([0.5], [0, 1]), proposal_append_gt=True)
    gt = Instances((100, 100), gt_boxes=Boxes(torch.tensor([[10.0, 10, 50, 50], [60, 60, 90, 90]])),
                   gt_classes=torch.tensor([3, 1]),
                   gt_masks=PolygonMasks([[[10, 10, 50, 10, 50, 50]], [[60, 60, 90, 60, 90, 90]]]))
    boxes = torch.tensor([[12.0, 12, 50, 50], [60, 61, 90, 90], [0, 0, 5, 5], [70, 0, 99, 20], [30, 30, 70, 70],
                          [11.0, 10, 50, 50], [0, 50, 10, 60], [20, 80, 30, 99], [80, 80, 99, 99], [40, 0, 60, 10]])
    props = Instances((100, 100), proposal_boxes=Boxes(boxes), objectness_logits=torch.zeros(10))
    (s,) = heads.label_and_sample_proposals([props], [gt])
    assert len(s) == 8
    fg = s.gt_classes < 5
    assert fg.sum().item() == 2  # 25% of 8, out of 5 foreground candidates (3 + 2 appended GT)
    assert set(s.gt_classes[~fg].tolist()) == {5}  # background is class K
    for i in torch.nonzero(fg).squeeze(1).tolist():
        j = 0 if s.gt_classes[i].item() == 3 else 1
        torch.testing.assert_close(s.gt_boxes.tensor[i], gt.gt_boxes.tensor[j])
        assert s.gt_masks.polygons[i][0][0] == [10.0, 60.0][j]
    assert len(s.gt_masks) == 8
    # GT appended with a near-certain objectness logit
    assert math.isclose(GT_PROPOSAL_LOGIT, math.log(1e10), rel_tol=1e-6)
    # No ground truth: everything is background, gt_boxes zero.
    empty = Instances((100, 100), gt_boxes=Boxes(torch.zeros(0, 4)), gt_classes=torch.zeros(0, dtype=torch.long))
    (s,) = heads.label_and_sample_proposals([props], [empty])
    assert len(s) == 8 and (s.gt_classes == 5).all() and (s.gt_boxes.tensor == 0).all()


def test_describe_model_reports_norms_and_freezing():
    text = describe_model(build_model(tiny_cfg("FPN", "FrozenBN", "2fc")))
    assert "backbone (ResNet): FrozenBN x20" in text and "frozen (stem, res2)" in text
    assert "FPN: no norm" in text and "box head (fc6, fc7): no norm" in text and "mask head: no norm" in text
    text = describe_model(build_model(tiny_cfg("FPN", "GN", "4conv1fc")))
    for part in ("backbone (ResNet)", "FPN", "box head (conv1, conv2, conv3, conv4, fc6)", "mask head"):
        line = next(l for l in text.splitlines() if l.startswith(part))
        assert "GN(G=8)" in line and "frozen" not in line, line
    assert "0 frozen" in text.splitlines()[-1]
    text = describe_model(build_model(tiny_cfg("C4", "LN", None)))
    assert "res5 head (C4): LN x" in text


def test_class_agnostic_box_regression_and_mask():
    """CLS_AGNOSTIC_BBOX_REG + CLS_AGNOSTIC_MASK: one box and one mask per RoI, trained and
    used for every class at inference."""
    from detector_testdata import assert_learns, train_steps

    torch.manual_seed(0)
    cfg = tiny_cfg("FPN", "GN", "4conv1fc")
    cfg.MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG = True
    cfg.MODEL.ROI_MASK_HEAD.CLS_AGNOSTIC_MASK = True
    model = build_model(cfg)
    assert model.roi_heads.box_predictor.bbox_pred.out_features == 4
    assert model.roi_heads.mask_head.mask_fcn_logits.out_channels == 1
    batch = tiny_batch()
    assert_learns(train_steps(model, batch), "class-agnostic FPN GN 4conv1fc")
    model.eval()
    with torch.no_grad():
        check_predictions(model(batch), batch, cfg.MODEL.ROI_HEADS.NUM_CLASSES)
