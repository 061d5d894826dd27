"""torchvision's Mask R-CNN and detgn under ``MODEL.CONVENTION torchvision`` give the same
detections end to end: the same image through both whole models (RPN, NMS, box head,
post-processing, mask paste) gives the same boxes, scores, labels and masks.

No pretrained weights can be downloaded here, so the torchvision model gets seeded random
weights scaled so that its outputs are decisive (distinct objectness, class scores spread
over [0, 1]) and it returns a full set of detections (the 100-per-image cap is reached, so
NMS, thresholds and the top-k cut all act). The image needs no resize (torchvision's
transform is set to its size), is normalised by mean 0 / std 1 and has sides divisible
by 32, so neither model pads or rescales it.
"""
import pytest
import torch

from tv_weights import NUM_FG, decisive_torchvision_maskrcnn

from detgn.checkpoint import load_weights
from detgn.config import load_config
from detgn.modeling import build_model

H, W = 256, 320


def _torchvision_model():
    return decisive_torchvision_maskrcnn(min_size=H, max_size=W, image_mean=[0.0, 0.0, 0.0],
                                         image_std=[1.0, 1.0, 1.0])


@pytest.fixture(scope="module")
def outputs(tmp_path_factory):
    tv = _torchvision_model()
    path = tmp_path_factory.mktemp("tv") / "maskrcnn_tv.pth"
    torch.save(tv.state_dict(), path)
    cfg = load_config("gn_paper/mask_rcnn_R_50_FPN_BNstar_2x.yaml", [
        "MODEL.WEIGHTS", "", "MODEL.CONVENTION", "torchvision", "MODEL.ROI_HEADS.NUM_CLASSES", str(NUM_FG),
        "MODEL.PIXEL_MEAN", "[0.0, 0.0, 0.0]", "MODEL.PIXEL_STD", "[1.0, 1.0, 1.0]", "VERBOSE_STARTUP", "False",
        # torchvision's transform has min_size H, max_size W: the model's resize keeps the image as it is.
        "INPUT.MIN_SIZE_TEST", str(H), "INPUT.MAX_SIZE_TEST", str(W),
    ])
    ours = build_model(cfg).eval()
    report = load_weights(ours, str(path))
    tv, ours = tv.double(), ours.double()
    g = torch.Generator().manual_seed(3)
    image = torch.nn.functional.interpolate(torch.randn(1, 3, H // 16, W // 16, generator=g), size=(H, W),
                                            mode="bilinear", align_corners=False)[0] * 2.0
    image = image + 0.3 * torch.randn(3, H, W, generator=g)  # smooth structure and texture
    with torch.no_grad():
        theirs = tv([image.double()])[0]
        mine = ours([{"image": image, "height": H, "width": W}])[0]["instances"]
    return theirs, mine, report


def test_weights_load_without_a_note_about_conventions(outputs):
    _, _, report = outputs
    assert report.format == "torchvision Mask R-CNN" and not report.missing
    assert not any("MODEL.CONVENTION" in n for n in report.notes), report.notes


def test_real_detections(outputs):
    theirs, _, _ = outputs
    assert len(theirs["boxes"]) == 100  # the per-image cap: thresholds, NMS and top-k all act
    assert theirs["scores"].max() > 0.9 and theirs["scores"].min() > 0.05
    assert len(set(theirs["labels"].tolist())) >= 2
    assert ((theirs["masks"][:, 0] > 0.5).flatten(1).sum(1) > 0).float().mean() > 0.75


def test_same_detections(outputs):
    theirs, mine, _ = outputs
    assert len(mine) == len(theirs["boxes"])
    torch.testing.assert_close(mine.pred_boxes.tensor.double(), theirs["boxes"], atol=1e-3, rtol=0)
    torch.testing.assert_close(mine.scores.double(), theirs["scores"], atol=1e-5, rtol=0)
    assert torch.equal(mine.pred_classes + 1, theirs["labels"])


def test_same_masks(outputs):
    theirs, mine, _ = outputs
    a, b = mine.pred_masks, theirs["masks"][:, 0] > 0.5
    inter = (a & b).flatten(1).sum(1).double()
    union = (a | b).flatten(1).sum(1).double()
    assert (union > 0).float().mean() > 0.75  # most masks are not empty
    iou = torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))  # both empty: equal
    assert iou.min() >= 0.99, iou.min()


def test_other_conventions_differ_and_the_note_says_which_key(outputs, tmp_path):
    """Without the switch the same weights give other detections, and loading says why."""
    tv = _torchvision_model()
    path = tmp_path / "tv.pth"
    torch.save(tv.state_dict(), path)
    cfg = load_config("gn_paper/mask_rcnn_R_50_FPN_BNstar_2x.yaml", [
        "MODEL.WEIGHTS", "", "MODEL.ROI_HEADS.NUM_CLASSES", str(NUM_FG), "VERBOSE_STARTUP", "False"])
    report = load_weights(build_model(cfg).eval(), str(path))
    assert any("MODEL.CONVENTION torchvision" in n for n in report.notes), report.notes


def test_torchvision_coco_91_outputs_map_to_80_classes():
    """torchvision's COCO models predict background + category ids 1..90; an 80-class detgn
    model gets the rows of COCO's 80 ids, in order, with the background last."""
    from detgn.checkpoint.torchvision_names import COCO_CATEGORY_IDS, convert_torchvision_maskrcnn

    g = torch.Generator().manual_seed(0)
    state = {
        "backbone.body.conv1.weight": torch.randn(64, 3, 7, 7, generator=g),
        "rpn.head.cls_logits.weight": torch.randn(3, 256, 1, 1, generator=g),
        "roi_heads.box_predictor.cls_score.weight": torch.randn(91, 1024, generator=g),
        "roi_heads.box_predictor.cls_score.bias": torch.randn(91, generator=g),
        "roi_heads.box_predictor.bbox_pred.weight": torch.randn(91 * 4, 1024, generator=g),
        "roi_heads.mask_predictor.mask_fcn_logits.weight": torch.randn(91, 256, 1, 1, generator=g),
    }
    out, _ = convert_torchvision_maskrcnn(state, num_classes=80)
    assert len(COCO_CATEGORY_IDS) == 80 and len(set(COCO_CATEGORY_IDS)) == 80
    cls = out["roi_heads.box_predictor.cls_score.weight"]
    assert cls.shape == (81, 1024)
    for i, cid in enumerate(COCO_CATEGORY_IDS):
        assert torch.equal(cls[i], state["roi_heads.box_predictor.cls_score.weight"][cid])
        assert torch.equal(out["roi_heads.box_predictor.bbox_pred.weight"][4 * i:4 * i + 4],
                           state["roi_heads.box_predictor.bbox_pred.weight"][4 * cid:4 * cid + 4])
        assert torch.equal(out["roi_heads.mask_head.mask_fcn_logits.weight"][i],
                           state["roi_heads.mask_predictor.mask_fcn_logits.weight"][cid])
    assert torch.equal(cls[80], state["roi_heads.box_predictor.cls_score.weight"][0])  # background last
    # Any other class count keeps torchvision's layout (background moved last).
    out, _ = convert_torchvision_maskrcnn(state)
    assert out["roi_heads.box_predictor.cls_score.weight"].shape == (91, 1024)
