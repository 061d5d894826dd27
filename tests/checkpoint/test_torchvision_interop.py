"""torchvision maskrcnn_resnet50_fpn weights in the equivalent detgn model give the same
FPN features, RPN head outputs, and box/mask head outputs for the same RoIs."""
import pytest
import torch
import torchvision
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
from torchvision.ops import FrozenBatchNorm2d

from tv_weights import randomize_torchvision_maskrcnn

from detgn.checkpoint.torchvision_names import convert_torchvision_maskrcnn, convert_torchvision_resnet
from detgn.config import load_config
from detgn.modeling import build_model
from detgn.structures import Boxes

NUM_FG = 4  # torchvision counts the background too: num_classes = NUM_FG + 1


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    trunk = torchvision.models.resnet50(weights=None, norm_layer=FrozenBatchNorm2d)
    tv = MaskRCNN(_resnet_fpn_extractor(trunk, 3), num_classes=NUM_FG + 1).eval()
    randomize_torchvision_maskrcnn(tv, seed=1)  # random, non-trivial frozen statistics and head biases
    cfg = load_config("gn_paper/mask_rcnn_R_50_FPN_BNstar_2x.yaml", [
        "MODEL.WEIGHTS", "", "MODEL.POOLER_ALIGNED", "False", "MODEL.ROI_HEADS.NUM_CLASSES", str(NUM_FG),
        "MODEL.RESNETS.STRIDE_IN_1X1", "False",  # torchvision strides on the 3x3 conv
    ])
    ours = build_model(cfg).eval()
    converted, unused = convert_torchvision_maskrcnn(tv.state_dict())
    result = ours.load_state_dict(converted, strict=False)
    return tv.double(), ours.double(), result, unused


def test_every_key_loaded(models):
    _, ours, result, unused = models
    assert result.missing_keys == [] and result.unexpected_keys == []
    assert all(k.endswith("num_batches_tracked") for k in unused)


def test_outputs_match(models):
    tv, ours, _, _ = models
    torch.manual_seed(2)
    x = torch.randn(1, 3, 224, 320, dtype=torch.float64)  # already resized and normalised
    image_sizes = [(224, 320)]
    with torch.no_grad():
        tv_feats = tv.backbone(x)
        our_feats = ours.backbone(x)
        for tv_name, name in zip(["0", "1", "2", "3", "pool"], ["p2", "p3", "p4", "p5", "p6"]):
            torch.testing.assert_close(our_feats[name], tv_feats[tv_name], atol=1e-4, rtol=0)
        tv_obj, tv_del = tv.rpn.head(list(tv_feats.values()))
        obj, deltas = ours.proposal_generator.rpn_head([our_feats[f] for f in ["p2", "p3", "p4", "p5", "p6"]])
        for a, b in zip(obj, tv_obj):
            torch.testing.assert_close(a, b, atol=1e-4, rtol=0)
        for a, b in zip(deltas, tv_del):
            torch.testing.assert_close(a, b, atol=1e-4, rtol=0)

        xy = torch.rand(40, 2, dtype=torch.float64) * torch.tensor([280.0, 190.0], dtype=torch.float64)
        wh = 4 + torch.rand(40, 2, dtype=torch.float64) * 200
        boxes = torch.cat([xy, (xy + wh).minimum(torch.tensor([320.0, 224.0], dtype=torch.float64))], 1)
        feats = [our_feats[f] for f in ["p2", "p3", "p4", "p5"]]
        tv_box = tv.roi_heads.box_predictor(tv.roi_heads.box_head(tv.roi_heads.box_roi_pool(tv_feats, [boxes], image_sizes)))
        rh = ours.roi_heads
        scores, box_deltas = rh.box_predictor(rh.box_head(rh.box_pooler(feats, [Boxes(boxes)])))
        torch.testing.assert_close(scores[:, :NUM_FG], tv_box[0][:, 1:], atol=1e-4, rtol=0)
        torch.testing.assert_close(scores[:, NUM_FG], tv_box[0][:, 0], atol=1e-4, rtol=0)
        torch.testing.assert_close(box_deltas, tv_box[1][:, 4:], atol=1e-4, rtol=0)

        tv_mask = tv.roi_heads.mask_predictor(tv.roi_heads.mask_head(tv.roi_heads.mask_roi_pool(tv_feats, [boxes], image_sizes)))
        mask_logits = rh.mask_head(rh.mask_pooler(feats, [Boxes(boxes)]))
        assert mask_logits.shape == (40, NUM_FG, 28, 28)
        torch.testing.assert_close(mask_logits, tv_mask[:, 1:], atol=1e-4, rtol=0)


def test_imagenet_resnet_names():
    sd = torchvision.models.resnet18(weights=None).state_dict()
    converted, unused = convert_torchvision_resnet(sd)
    assert "stem.conv1.weight" in converted and "res5.1.conv2.norm.running_var" in converted
    assert "res3.0.shortcut.norm.weight" in converted
    assert sorted(unused) == sorted(["fc.weight", "fc.bias"] + [k for k in sd if k.endswith("num_batches_tracked")])
