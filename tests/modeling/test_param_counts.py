"""Parameter counts of the paper's R50 models, cross-checked against torchvision's Mask R-CNN."""
import torch
import torchvision
from detector_testdata import tiny_cfg

from detgn.modeling import build_model, describe_model

# torchvision's maskrcnn_resnet50_fpn (91 classes, background included) with its
# pre-trained layout (FrozenBN: no BN parameters).
TORCHVISION_MASKRCNN_R50_FPN = 44_401_393
# Ours with 90 foreground classes has the same layers minus the background rows
# torchvision keeps in bbox_pred (1024 * 4 + 4) and mask_fcn_logits (256 + 1).
OURS_R50_FPN_BNSTAR_2FC_90 = TORCHVISION_MASKRCNN_R50_FPN - (1024 * 4 + 4) - (256 + 1)
# COCO (80 classes) figures, reported in the docs.
EXPECTED = {
    ("FPN", "FrozenBN", "2fc"): 44_343_216,
    ("FPN", "GN", "4conv1fc"): 45_711_152,
    ("C4", "GN", None): 35_962_732,
}


def _count(model):
    return sum(p.numel() for p in model.parameters())


def _r50_cfg(arch, norm, box_head, num_classes=80):
    cfg = tiny_cfg(arch, norm, box_head, depth=50, small=False)
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = num_classes
    return cfg


def test_r50_fpn_bnstar_matches_torchvision():
    tv = torchvision.models.detection.maskrcnn_resnet50_fpn(weights=None, weights_backbone=None)
    # Without weights torchvision uses trainable BatchNorm; its pre-trained model
    # (the one the paper's BN* corresponds to) has FrozenBN, i.e. no BN parameters.
    bn_params = sum(p.numel() for m in tv.modules() if isinstance(m, torch.nn.BatchNorm2d) for p in m.parameters())
    assert _count(tv) - bn_params == TORCHVISION_MASKRCNN_R50_FPN
    ours = build_model(_r50_cfg("FPN", "FrozenBN", "2fc", num_classes=90))
    assert OURS_R50_FPN_BNSTAR_2FC_90 == 44_397_036
    assert _count(ours) == OURS_R50_FPN_BNSTAR_2FC_90


def test_r50_parameter_counts():
    for (arch, norm, box_head), expected in EXPECTED.items():
        model = build_model(_r50_cfg(arch, norm, box_head))
        n = _count(model)
        print(f"\nR50-{arch} {norm} {box_head or ''} (80 classes): {n:,} parameters\n{describe_model(model)}")
        assert n == expected, (arch, norm, box_head, n)
