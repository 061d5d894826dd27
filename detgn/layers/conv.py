"""``Conv2d`` that owns its norm and activation: conv -> norm -> activation; stacks of them."""
from __future__ import annotations

from typing import Callable, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

from .norm import NormSpec, get_norm
from .weight_init import c2_msra_fill


class Conv2d(nn.Conv2d):
    """``nn.Conv2d`` followed by an optional norm (``self.norm``) and activation.

    Args:
        in_channels, out_channels, kernel_size, stride, padding, dilation, groups:
            as ``nn.Conv2d``.
        bias: None (default) means no bias when there is a norm (its shift makes a
            conv bias redundant) and a bias otherwise.
        norm: an ``nn.Module``, a norm name / ``Norm`` / callable for ``get_norm``
            (built with ``out_channels``), or None / ``""``.
        activation: a callable applied last (e.g. ``torch.relu``), or None.

    Shapes: (N, in_channels, H, W) -> (N, out_channels, H', W'); N may be 0.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size,
        stride=1,
        padding=0,
        dilation=1,
        groups: int = 1,
        bias: Optional[bool] = None,
        *,
        norm: Union[nn.Module, NormSpec] = None,
        activation: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
    ):
        if not isinstance(norm, nn.Module):
            norm = get_norm(norm, out_channels)
        if bias is None:
            bias = norm is None
        super().__init__(
            in_channels,
            out_channels,
            kernel_size,
            stride=stride,
            padding=padding,
            dilation=dilation,
            groups=groups,
            bias=bias,
        )
        self.norm = norm
        self.activation = activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # torch's conv, GN, BN and our norms all accept a 0-sized batch, so an
        # empty input (no RoIs on this image) flows through unchanged in shape.
        x = super().forward(x)
        if self.norm is not None:
            x = self.norm(x)
        if self.activation is not None:
            x = self.activation(x)
        return x

    def extra_repr(self) -> str:
        s = super().extra_repr()
        if self.activation is not None and not isinstance(self.activation, nn.Module):
            s += f", activation={getattr(self.activation, '__name__', self.activation)}"
        return s


def add_conv_norm_relu_stack(
    parent: nn.Module, *, in_channels: int, dims: Sequence[int], norm: NormSpec, name_format: str
) -> Tuple[List[str], int]:
    """Add 3x3 conv -> norm -> ReLU layers to ``parent``, the convs of the RoI heads.

    Layer ``k`` (from 1) is ``parent.<name_format.format(k)>``, a :class:`Conv2d` with
    ``dims[k - 1]`` output channels, MSRA-filled, without a bias when it has a norm.

    Returns:
        (the layers' names in order, the channels of the last one's output).
    """
    names: List[str] = []
    channels = in_channels
    for k, dim in enumerate(dims):
        layer_norm = get_norm(norm, dim)
        conv = Conv2d(channels, dim, kernel_size=3, padding=1, bias=layer_norm is None, norm=layer_norm,
                      activation=F.relu)
        c2_msra_fill(conv)
        names.append(name_format.format(k + 1))
        parent.add_module(names[-1], conv)
        channels = dim
    return names, channels
