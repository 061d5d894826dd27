"""ResNet-10/18/34/50/101/152 with a pluggable norm, as a backbone (C4: stem..res4).

Module names are part of the checkpoint format (weight converters rely on them):
``stem.conv1``, stages ``res2``..``res5`` (``nn.Sequential`` of blocks), block
children ``conv1``, ``conv2``, ``conv3`` (basic blocks: ``conv1``, ``conv2``) and
``shortcut``, each a ``Conv2d`` whose norm is its ``.norm`` child.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple, Type, Union

import torch
import torch.nn.functional as F
from torch import nn

from detgn.config import ConfigError
from detgn.layers import Conv2d, FrozenBatchNorm2d, Norm, ShapeSpec, c2_msra_fill, c2_xavier_fill, norm_from_cfg

from .backbone import Backbone

NormArg = Union[str, Norm, None]


class BasicBlock(nn.Module):
    """Two 3x3 convs (ResNet-18/34); the stride is on the first.

    Shapes: (N, in_channels, H, W) -> (N, out_channels, H / stride, W / stride).
    """

    def __init__(
        self, *, in_channels: int, out_channels: int, stride: int = 1, norm: NormArg = "FrozenBN", dilation: int = 1
    ):
        super().__init__()
        self.in_channels, self.out_channels, self.stride = in_channels, out_channels, stride
        self.conv1 = Conv2d(
            in_channels, out_channels, 3, stride=stride, padding=dilation, dilation=dilation,
            norm=norm, activation=F.relu,
        )
        self.conv2 = Conv2d(out_channels, out_channels, 3, padding=dilation, dilation=dilation, norm=norm)
        self.shortcut = _projection(in_channels, out_channels, stride, norm)
        for conv in (self.conv1, self.conv2, self.shortcut):
            if conv is not None:
                c2_msra_fill(conv)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv2(self.conv1(x))
        identity = self.shortcut(x) if self.shortcut is not None else x
        return F.relu(out + identity)


class BottleneckBlock(nn.Module):
    """1x1 reduce -> 3x3 (``num_groups`` groups) -> 1x1 expand (ResNet-50/101/152).

    The stride is on the 3x3 conv, as in the paper's models, unless ``stride_in_1x1``
    (the original MSRA ResNet) puts it on the first 1x1.

    Shapes: (N, in_channels, H, W) -> (N, out_channels, H / stride, W / stride).
    """

    def __init__(
        self,
        *,
        in_channels: int,
        out_channels: int,
        bottleneck_channels: int,
        stride: int = 1,
        norm: NormArg = "FrozenBN",
        stride_in_1x1: bool = False,
        num_groups: int = 1,
        dilation: int = 1,
    ):
        super().__init__()
        self.in_channels, self.out_channels, self.stride = in_channels, out_channels, stride
        stride_1x1, stride_3x3 = (stride, 1) if stride_in_1x1 else (1, stride)
        self.conv1 = Conv2d(
            in_channels, bottleneck_channels, 1, stride=stride_1x1, norm=norm, activation=F.relu
        )
        self.conv2 = Conv2d(
            bottleneck_channels, bottleneck_channels, 3, stride=stride_3x3, padding=dilation,
            dilation=dilation, groups=num_groups, norm=norm, activation=F.relu,
        )
        self.conv3 = Conv2d(bottleneck_channels, out_channels, 1, norm=norm)
        self.shortcut = _projection(in_channels, out_channels, stride, norm)
        # MSRA fill everywhere and norm gamma 1: the paper does not zero-init the last gamma.
        for conv in (self.conv1, self.conv2, self.conv3, self.shortcut):
            if conv is not None:
                c2_msra_fill(conv)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv3(self.conv2(self.conv1(x)))
        identity = self.shortcut(x) if self.shortcut is not None else x
        return F.relu(out + identity)


def _projection(in_channels: int, out_channels: int, stride: int, norm: NormArg) -> Optional[Conv2d]:
    if in_channels == out_channels and stride == 1:
        return None
    return Conv2d(in_channels, out_channels, 1, stride=stride, norm=norm)


class BasicStem(nn.Module):
    """conv 7x7/2 (pad 3) -> norm -> ReLU -> max-pool 3x3/2 (pad 1): stride 4.

    Shapes: (N, in_channels, H, W) -> (N, out_channels, ~H/4, ~W/4).
    """

    stride = 4

    def __init__(self, *, in_channels: int = 3, out_channels: int = 64, norm: NormArg = "FrozenBN"):
        super().__init__()
        self.out_channels = out_channels
        self.conv1 = Conv2d(
            in_channels, out_channels, 7, stride=2, padding=3, norm=norm, activation=F.relu
        )
        c2_msra_fill(self.conv1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.max_pool2d(self.conv1(x), kernel_size=3, stride=2, padding=1)


def make_stage(
    block_class: Type[nn.Module],
    num_blocks: int,
    *,
    first_stride: int,
    in_channels: int,
    out_channels: int,
    bottleneck_channels: Optional[int] = None,
    norm: NormArg,
    stride_in_1x1: bool = False,
    dilation: int = 1,
    num_groups: int = 1,
) -> nn.Sequential:
    """A ResNet stage: ``num_blocks`` blocks, the first with ``first_stride`` (and the
    projection shortcut), the others stride 1 on ``out_channels`` channels.

    Bottleneck-only arguments (``bottleneck_channels``, ``stride_in_1x1``,
    ``num_groups``) are not passed to ``BasicBlock``.
    """
    blocks = []
    for i in range(num_blocks):
        kwargs = dict(
            in_channels=in_channels if i == 0 else out_channels,
            out_channels=out_channels,
            stride=first_stride if i == 0 else 1,
            norm=norm,
            dilation=dilation,
        )
        if block_class is not BasicBlock:
            if bottleneck_channels is None:
                raise ValueError(f"make_stage: {block_class.__name__} needs bottleneck_channels")
            kwargs.update(
                bottleneck_channels=bottleneck_channels, stride_in_1x1=stride_in_1x1, num_groups=num_groups
            )
        blocks.append(block_class(**kwargs))
    return nn.Sequential(*blocks)


# depth -> (block class, blocks in res2..res5)
RESNET_SPECS: Dict[int, Tuple[Type[nn.Module], List[int]]] = {
    10: (BasicBlock, [1, 1, 1, 1]),  # one block per stage: the CPU normalization study's trunk
    18: (BasicBlock, [2, 2, 2, 2]),
    34: (BasicBlock, [3, 4, 6, 3]),
    50: (BottleneckBlock, [3, 4, 6, 3]),
    101: (BottleneckBlock, [3, 4, 23, 3]),
    152: (BottleneckBlock, [3, 8, 36, 3]),
}
STAGE_NAMES = ("res2", "res3", "res4", "res5")


def stage_kwargs(
    depth: int,
    stage: int,
    *,
    norm: NormArg,
    stem_out_channels: int = 64,
    res2_out_channels: Optional[int] = None,
    num_groups: int = 1,
    width_per_group: int = 64,
    stride_in_1x1: bool = False,
    res5_dilation: int = 1,
) -> dict:
    """``make_stage`` arguments of stage ``stage`` (2..5) of a ResNet of ``depth``."""
    if depth not in RESNET_SPECS:
        raise ValueError(f"ResNet depth {depth} is not one of {sorted(RESNET_SPECS)}")
    if res5_dilation not in (1, 2):
        raise ValueError(f"res5 dilation must be 1 or 2, got {res5_dilation}")
    block_class, counts = RESNET_SPECS[depth]
    basic = block_class is BasicBlock
    if res2_out_channels is None:
        res2_out_channels = 64 if basic else 256
    if basic and (num_groups != 1 or width_per_group != 64):
        raise ValueError("ResNet-18/34 (basic blocks) take no groups: use num_groups 1, width_per_group 64")
    scale = 2 ** (stage - 2)
    in_channels = stem_out_channels if stage == 2 else res2_out_channels * scale // 2
    dilation = res5_dilation if stage == 5 else 1
    kwargs = dict(
        block_class=block_class,
        num_blocks=counts[stage - 2],
        first_stride=1 if stage == 2 or dilation > 1 else 2,
        in_channels=in_channels,
        out_channels=res2_out_channels * scale,
        norm=norm,
        dilation=dilation,
    )
    if not basic:
        kwargs.update(
            bottleneck_channels=num_groups * width_per_group * scale,
            stride_in_1x1=stride_in_1x1,
            num_groups=num_groups,
        )
    return kwargs


CONV_INITS = ("msra", "xavier")


def init_convs(module: nn.Module, method: str) -> int:
    """Re-initialise every conv of ``module`` ("msra": Caffe2's MSRAFill, kaiming-normal
    fan-out, the default of the blocks; "xavier": Caffe2's XavierFill, uniform in
    +-sqrt(3 / fan_in), what Detectron's ResNet convs get with GN (``ConvGN`` passes no
    weight_init, so Caffe2's conv default applies)). Returns the number of convs."""
    if method not in CONV_INITS:
        raise ValueError(f"MODEL.RESNETS.CONV_INIT must be one of {CONV_INITS}, got {method!r}")
    fill = c2_msra_fill if method == "msra" else c2_xavier_fill
    convs = [m for m in module.modules() if isinstance(m, nn.Conv2d)]
    for conv in convs:
        fill(conv)
    return len(convs)


def zero_init_last_norm(module: nn.Module) -> int:
    """Set gamma = 0 in the last norm of every residual block of ``module`` (``conv2`` of a basic
    block, ``conv3`` of a bottleneck); returns the number of blocks changed. Norms without
    a trainable scale (none, FrozenBN) are left alone."""
    count = 0
    for block in module.modules():
        last = block.conv3 if isinstance(block, BottleneckBlock) else (
            block.conv2 if isinstance(block, BasicBlock) else None)
        weight = getattr(getattr(last, "norm", None), "weight", None)
        if isinstance(weight, nn.Parameter):
            nn.init.zeros_(weight)
            count += 1
    return count


def freeze_module(module: nn.Module) -> nn.Module:
    """Stop training ``module``: no grads, and BN/SyncBN become FrozenBN (GN keeps its
    computation with fixed γ, β). Returns the module (a new one if it was a BN)."""
    for p in module.parameters():
        p.requires_grad_(False)
    return FrozenBatchNorm2d.convert_frozen_batchnorm(module)


class ResNet(Backbone):
    """ResNet trunk returning the requested stage outputs.

    Args:
        depth: 18, 34, 50, 101 or 152.
        norm: norm of every conv (name or ``Norm``).
        out_features: among "stem", "res2".."res5"; stages past the last one
            requested are not built (C4 builds up to res4).
        freeze_at: 0 nothing frozen, 1 the stem, k >= 2 the stem and res2..resk.
        zero_init_residual: start every block's last norm with gamma 0, so each residual
            block is the identity at initialisation (the GN paper's ImageNet recipe).
        conv_init: "msra" or "xavier" (see :func:`init_convs`).
        Other args: channel layout (see ``stage_kwargs``), dilation of res5.

    Shapes: (N, in_channels, H, W) -> {name: (N, C, H / stride, W / stride)} with
    strides stem 4, res2 4, res3 8, res4 16, res5 32 (16 with res5_dilation 2).
    """

    def __init__(
        self,
        *,
        depth: int = 50,
        norm: NormArg = "FrozenBN",
        out_features: Sequence[str] = ("res2", "res3", "res4", "res5"),
        in_channels: int = 3,
        stem_out_channels: int = 64,
        res2_out_channels: Optional[int] = None,
        num_groups: int = 1,
        width_per_group: int = 64,
        stride_in_1x1: bool = False,
        res5_dilation: int = 1,
        freeze_at: int = 0,
        zero_init_residual: bool = False,
        conv_init: str = "msra",
    ):
        super().__init__()
        known = ("stem",) + STAGE_NAMES
        out_features = list(out_features)
        bad = [f for f in out_features if f not in known]
        if not out_features or bad:
            raise ValueError(f"ResNet out_features must be a non-empty subset of {list(known)}, got {out_features}")
        self.depth = depth
        self.in_channels = in_channels
        self.stem = BasicStem(in_channels=in_channels, out_channels=stem_out_channels, norm=norm)
        self._out_feature_channels["stem"] = stem_out_channels
        self._out_feature_strides["stem"] = BasicStem.stride

        last = max(known.index(f) for f in out_features) + 1  # stages 2..last
        stride = BasicStem.stride
        self.stage_names: List[str] = []
        for stage in range(2, last + 1):
            kwargs = stage_kwargs(
                depth, stage, norm=norm, stem_out_channels=stem_out_channels,
                res2_out_channels=res2_out_channels, num_groups=num_groups,
                width_per_group=width_per_group, stride_in_1x1=stride_in_1x1,
                res5_dilation=res5_dilation,
            )
            name = f"res{stage}"
            self.add_module(name, make_stage(**kwargs))
            self.stage_names.append(name)
            stride *= kwargs["first_stride"]
            self._out_feature_channels[name] = kwargs["out_channels"]
            self._out_feature_strides[name] = stride
        if conv_init != "msra":
            init_convs(self, conv_init)
        if zero_init_residual:
            zero_init_last_norm(self)
        self._out_features = [f for f in known if f in out_features]
        for name in list(self._out_feature_channels):
            if name not in self._out_features:
                del self._out_feature_channels[name], self._out_feature_strides[name]
        self.freeze(freeze_at)

    def freeze(self, freeze_at: int) -> "ResNet":
        """Freeze the stem (``freeze_at >= 1``) and res2..res``freeze_at``; see ``freeze_module``.

        One-way: parts frozen earlier stay frozen (their BNs are FrozenBN now).
        """
        if freeze_at < 0 or freeze_at > 5:
            raise ValueError(f"freeze_at must be in 0..5 (MODEL.BACKBONE.FREEZE_AT), got {freeze_at}")
        self.freeze_at = freeze_at
        if freeze_at >= 1:
            freeze_module(self.stem)
        for stage, name in enumerate(self.stage_names, start=2):
            if freeze_at >= stage:
                freeze_module(getattr(self, name))
        return self

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"ResNet expects (N, {self.in_channels}, H, W) images, got shape {tuple(x.shape)}"
            )
        outputs = {}
        x = self.stem(x)
        if "stem" in self._out_features:
            outputs["stem"] = x
        for name in self.stage_names:
            x = getattr(self, name)(x)
            if name in self._out_features:
                outputs[name] = x
        return outputs


def resnet_kwargs_from_cfg(cfg) -> dict:
    """:class:`ResNet` keyword arguments of ``MODEL.RESNETS.*`` (depth, norm, widths, ...), checked."""
    r = cfg.MODEL.RESNETS
    if r.DEPTH not in RESNET_SPECS:
        raise ConfigError(f"MODEL.RESNETS.DEPTH = {r.DEPTH}; choose one of {sorted(RESNET_SPECS)}")
    basic = RESNET_SPECS[r.DEPTH][0] is BasicBlock
    res2 = r.RES2_OUT_CHANNELS
    if basic and res2 == 256:
        res2 = 64  # the default is written for bottleneck ResNets; basic-block res2 has 64
    try:
        stage_kwargs(
            r.DEPTH, 5, norm=None, res2_out_channels=res2, num_groups=r.NUM_GROUPS,
            width_per_group=r.WIDTH_PER_GROUP, res5_dilation=r.RES5_DILATION,
        )
    except ValueError as e:
        raise ConfigError(f"MODEL.RESNETS: {e}") from None
    return dict(
        depth=r.DEPTH,
        norm=norm_from_cfg(cfg, r.NORM),
        stem_out_channels=r.STEM_OUT_CHANNELS,
        res2_out_channels=res2,
        num_groups=r.NUM_GROUPS,
        width_per_group=r.WIDTH_PER_GROUP,
        stride_in_1x1=r.STRIDE_IN_1X1,
        res5_dilation=r.RES5_DILATION,
        zero_init_residual=r.ZERO_INIT_RESIDUAL,
        conv_init=r.CONV_INIT,
    )


def _in_channels(cfg, input_shape: Optional[ShapeSpec]) -> int:
    if input_shape is not None and input_shape.channels is not None:
        return input_shape.channels
    return len(cfg.MODEL.PIXEL_MEAN)


def freeze_at_from_cfg(cfg) -> int:
    """``MODEL.BACKBONE.FREEZE_AT``, checked (0 nothing .. 5 up to res5)."""
    freeze_at = cfg.MODEL.BACKBONE.FREEZE_AT
    if not 0 <= freeze_at <= 5:
        raise ConfigError(f"MODEL.BACKBONE.FREEZE_AT = {freeze_at}; use 0 (nothing) .. 5 (up to res5)")
    return freeze_at


def build_resnet_backbone(cfg, input_shape: Optional[ShapeSpec] = None) -> ResNet:
    """ResNet returning ``MODEL.RESNETS.OUT_FEATURES``, frozen up to ``FREEZE_AT``."""
    return ResNet(
        **resnet_kwargs_from_cfg(cfg),
        in_channels=_in_channels(cfg, input_shape),
        out_features=cfg.MODEL.RESNETS.OUT_FEATURES,
        freeze_at=freeze_at_from_cfg(cfg),
    )


def build_resnet_c4_backbone(cfg, input_shape: Optional[ShapeSpec] = None) -> ResNet:
    """Mask R-CNN C4 trunk: stem, res2..res4, output ``res4`` (stride 16).

    res5 belongs to the RoI head (``build_res5_stage``), so ``OUT_FEATURES`` is not
    used here. ``size_divisibility`` is 0; the meta-architecture still pads.
    """
    return ResNet(
        **resnet_kwargs_from_cfg(cfg),
        in_channels=_in_channels(cfg, input_shape),
        out_features=["res4"],
        freeze_at=freeze_at_from_cfg(cfg),
    )


def build_res5_stage(cfg) -> Tuple[nn.Sequential, int]:
    """The ResNet res5 stage of the C4 RoI head, and its output channels.

    Same depth, norm and layout as the backbone; stride 2 on its first block (the
    head runs on 14x14 RoI features) and frozen if ``FREEZE_AT`` is 5.
    """
    resnet = resnet_kwargs_from_cfg(cfg)
    zero_init = resnet.pop("zero_init_residual")
    conv_init = resnet.pop("conv_init")
    kwargs = stage_kwargs(**{"stage": 5, **resnet})
    kwargs["first_stride"] = 2
    kwargs["dilation"] = 1
    stage = make_stage(**kwargs)
    if conv_init != "msra":
        init_convs(stage, conv_init)
    if zero_init:
        zero_init_last_norm(stage)
    if freeze_at_from_cfg(cfg) >= 5:
        stage = freeze_module(stage)
    return stage, kwargs["out_channels"]
