"""Under ``MODEL.CONVENTION torchvision``, ``Predictor`` on an ordinary BGR image of any size gives
the detections of torchvision's ``maskrcnn_resnet50_fpn`` with its default transform (min_size
800, max_size 1333, ImageNet mean/std): the float resize with torchvision's floored sides (480x640
-> 800x1066), and anchor strides from the padded image (P6: 13 cells, stride 61 on an 800 side).

Same seeded, decisive random weights as tests/checkpoint/test_torchvision_end_to_end.py; both
models in float64 so that the comparison measures the algorithms, not float rounding.
"""
import numpy as np
import pytest
import torch

from tv_weights import NUM_FG, decisive_torchvision_maskrcnn

from detgn.checkpoint import load_weights
from detgn.config import load_config
from detgn.engine import Predictor


def _image(h, w, seed):
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (h // 16, w // 16, 3)).astype(np.float32)
    import cv2

    image = cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR) + rng.normal(0, 12, (h, w, 3))
    return np.clip(image, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    tv = decisive_torchvision_maskrcnn()  # default transform: min_size 800, max_size 1333, ImageNet mean/std
    path = tmp_path_factory.mktemp("tv_resize") / "maskrcnn_tv.pth"
    torch.save(tv.state_dict(), path)
    cfg = load_config("gn_paper/mask_rcnn_R_50_FPN_BNstar_2x.yaml", [
        "MODEL.WEIGHTS", "", "MODEL.CONVENTION", "torchvision", "MODEL.ROI_HEADS.NUM_CLASSES", str(NUM_FG),
        "VERBOSE_STARTUP", "False", "CPU.BF16", "off"])
    assert cfg.INPUT.RESIZE_TEST == "torchvision" and cfg.MODEL.ANCHOR_GENERATOR.STRIDES_FROM_IMAGE_SIZE
    predictor = Predictor(cfg)
    load_weights(predictor.model, str(path))
    predictor.model.double()
    return tv.double(), predictor


@pytest.mark.parametrize("size", [(480, 640), (427, 640)])
def test_same_detections_on_resized_images(models, size):
    tv, predictor = models
    bgr = _image(*size, seed=size[0])
    with torch.no_grad():
        theirs = tv([torch.from_numpy(bgr[:, :, ::-1].copy()).permute(2, 0, 1).double() / 255.0])[0]
        mine = predictor(bgr)
    assert len(theirs["boxes"]) >= 50  # thresholds, NMS and the top-k all act
    assert len(mine) == len(theirs["boxes"])
    assert torch.equal(mine.pred_classes + 1, theirs["labels"])
    box_err = (mine.pred_boxes.tensor.double() - theirs["boxes"]).abs().max().item()
    score_err = (mine.scores.double() - theirs["scores"]).abs().max().item()
    assert box_err <= 0.01 and score_err <= 1e-4, (box_err, score_err)
    a, b = mine.pred_masks, theirs["masks"][:, 0] > 0.5
    union = (a | b).flatten(1).sum(1).double()
    iou = torch.where(union > 0, (a & b).flatten(1).sum(1).double() / union.clamp(min=1), torch.ones_like(union))
    assert iou.min() >= 0.99, iou.min()


def test_resize_and_strides_follow_torchvision(models):
    _, predictor = models
    inputs = predictor.mapper.map_image(_image(480, 640, 0))
    assert tuple(inputs["image"].shape[1:]) == (480, 640)  # the mapper leaves it to the model
    images = predictor.model.preprocess_image([inputs])
    assert images.image_sizes[0] == (800, 1066)  # floored, not rounded to 1067
    feats = predictor.model.backbone(images.tensor.double())
    rpn = predictor.model.proposal_generator
    anchors = rpn.anchor_generator([feats[f] for f in rpn.in_features], images.tensor.shape[-2:])
    p6 = feats["p6"].shape[-2:]
    assert tuple(p6) == (13, 17)
    step = anchors[-1].tensor[3] - anchors[-1].tensor[0]  # next location along x, same cell anchor
    assert step[0].item() == 1088 // 17  # stride 64 along x, 800 // 13 = 61 along y
    step_y = anchors[-1].tensor[3 * 17] - anchors[-1].tensor[0]
    assert step_y[1].item() == 800 // 13
