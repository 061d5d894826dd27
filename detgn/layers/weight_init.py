"""Caffe2-style weight initialisations, so models built here start like Detectron's."""
from torch import nn


def c2_msra_fill(module: nn.Module) -> None:
    """MSRA fill of a conv/linear: kaiming normal over fan_out for ReLU, bias 0.

    fan_out (not fan_in) is what Caffe2's MSRAFill uses; it keeps the backward
    signal's variance constant, which matters when training from scratch.
    """
    nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
    if getattr(module, "bias", None) is not None:
        nn.init.constant_(module.bias, 0)


def c2_xavier_fill(module: nn.Module) -> None:
    """Caffe2's XavierFill: uniform in +-sqrt(3 / fan_in) (kaiming uniform, a=1), bias 0."""
    nn.init.kaiming_uniform_(module.weight, a=1)
    if getattr(module, "bias", None) is not None:
        nn.init.constant_(module.bias, 0)
