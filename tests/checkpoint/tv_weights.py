"""Seeded random weights for torchvision's Mask R-CNN that keep every activation O(1)
(random frozen-BN statistics, non-zero biases), shared by the torchvision interop tests."""
import torch


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
