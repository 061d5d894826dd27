"""Seeded random weights for torchvision's Mask R-CNN that keep every activation O(1)
(random frozen-BN statistics, non-zero biases), shared by the torchvision interop tests."""
import torch


NUM_FG = 4  # foreground classes of the end-to-end comparisons


def randomize_torchvision_maskrcnn(tv: torch.nn.Module, seed: int = 1) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, buf in tv.named_buffers():
            if name.endswith("running_var"):
                buf.copy_(0.5 + torch.rand(buf.shape, generator=g))
            elif name.endswith("running_mean") or name.endswith(".bias"):
                buf.copy_(0.1 * torch.randn(buf.shape, generator=g))
            elif name.endswith(".weight"):
                buf.copy_(0.5 + 0.5 * torch.rand(buf.shape, generator=g))
        for name, p in tv.named_parameters():
            if name.endswith("bias"):
                p.copy_(0.05 * torch.randn(p.shape, generator=g))
    return tv


def decisive_torchvision_maskrcnn(**transform) -> torch.nn.Module:
    """torchvision's Mask R-CNN R50-FPN (frozen BN, ``NUM_FG`` classes) in eval mode with seeded random
    weights whose heads are decisive (objectness and class logits of a trained detector's spread);
    ``transform`` goes to ``MaskRCNN`` (min_size, max_size, image_mean, image_std; default: torchvision's)."""
    import torchvision
    from torchvision.models.detection import MaskRCNN
    from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
    from torchvision.ops import FrozenBatchNorm2d

    torch.manual_seed(0)
    trunk = torchvision.models.resnet50(weights=None, norm_layer=FrozenBatchNorm2d)
    tv = MaskRCNN(_resnet_fpn_extractor(trunk, 3), num_classes=NUM_FG + 1, **transform).eval()
    randomize_torchvision_maskrcnn(tv, seed=1)
    with torch.no_grad():
        tv.rpn.head.cls_logits.weight.mul_(30.0)
        tv.roi_heads.box_predictor.cls_score.weight.mul_(30.0)
        tv.roi_heads.box_predictor.bbox_pred.weight.mul_(3.0)
        tv.roi_heads.mask_predictor.mask_fcn_logits.weight.mul_(10.0)
    return tv
