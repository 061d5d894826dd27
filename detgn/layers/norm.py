"""The one normalization factory every part uses, and the norms it can build.

``Norm`` is a resolved choice (a name plus Group Normalization settings); calling
it with a channel count builds the layer. The names are the paper's rows:

- ``"FrozenBN"`` (BN*): BN statistics and affine from pre-training, fixed. Stored as
  buffers, so nothing trains and nothing is decayed.
- ``"GN"``: GroupNorm with ``num_groups`` groups, or ``channels / dim_per_gp`` groups.
- ``"LN"``: GroupNorm with one group. ``"IN"``: GroupNorm with one channel per group.
- ``"BN"``: BatchNorm2d fine-tuned on the (per-process) batch (:class:`.batch_norm.BatchNorm2d`:
  records its training batch size and can evaluate with EvalNorm).
- ``"SyncBN"``: BN whose batch statistics are summed over all processes.
- ``""``: no norm (the conv keeps its bias).
"""
from __future__ import annotations

import itertools
import warnings
from collections import Counter
from dataclasses import dataclass
from typing import Callable, List, Optional, Union

import torch
import torch.distributed as dist
from torch import nn

from detgn.utils.comm import get_world_size

from .batch_norm import BatchNorm2d

NORM_NAMES = ("", "FrozenBN", "GN", "LN", "IN", "BN", "SyncBN")


class FrozenBatchNorm2d(nn.Module):
    """BatchNorm with fixed statistics and affine: ``y = (x - mean) / sqrt(var + eps) * w + b``.

    The four tensors are buffers (they load from checkpoints but are never trained);
    the layer is a per-channel scale and shift, so any batch size works, 0 included.

    Shapes: input (N, C, ...) -> output of the same shape.
    """

    def __init__(self, num_features: int, eps: float = 1e-5):
        super().__init__()
        self.num_features = num_features
        self.eps = eps
        self.register_buffer("weight", torch.ones(num_features))
        self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.weight * (self.running_var + self.eps).rsqrt()
        shift = self.bias - self.running_mean * scale
        shape = (1, -1) + (1,) * (x.dim() - 2)
        return x * scale.view(shape).to(x.dtype) + shift.view(shape).to(x.dtype)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # A BatchNorm2d checkpoint has a step counter that a frozen layer has no use for.
        state_dict.pop(prefix + "num_batches_tracked", None)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}"

    @classmethod
    def convert_frozen_batchnorm(cls, module: nn.Module) -> nn.Module:
        """Replace every BatchNorm/SyncBN in ``module`` (itself included) by a FrozenBN.

        The statistics and affine are copied, so the output of the module in eval mode
        is unchanged. Returns the converted module (a new object when ``module`` itself
        is a BN, else ``module`` changed in place).
        """
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            ref = next(itertools.chain(module.parameters(), module.buffers()), None)
            frozen = cls(module.num_features, eps=module.eps)
            if ref is not None:
                frozen = frozen.to(device=ref.device)
            with torch.no_grad():
                if module.affine:
                    frozen.weight.copy_(module.weight.detach())
                    frozen.bias.copy_(module.bias.detach())
                if module.track_running_stats:
                    frozen.running_mean.copy_(module.running_mean)
                    frozen.running_var.copy_(module.running_var)
            return frozen
        for name, child in module.named_children():
            new_child = cls.convert_frozen_batchnorm(child)
            if new_child is not child:
                setattr(module, name, new_child)
        return module


class _AllReduceSum(torch.autograd.Function):
    """Sum over processes; the gradient is summed too, since every rank's loss uses the sum."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        x = x.clone()
        dist.all_reduce(x, op=dist.ReduceOp.SUM)
        return x

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad


_warned_no_dist = False


class SyncBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm whose training statistics cover the batches of all processes.

    In training, each rank sums its per-channel values, squared values and element
    count; one all-reduce of that (2C + 1) vector gives the global mean and variance.
    It uses only ``all_reduce``, so it runs on gloo (CPU) as well as NCCL, and a rank
    with zero samples (a head that got no RoIs) still joins the all-reduce with zeros,
    in the forward and (through its zero gradient) in the backward, so nothing hangs.
    That rank must back-propagate through this layer's (empty) output like the others.

    Outside a distributed run (or with one process) it is plain BN and warns once.
    In eval mode it uses the running statistics, like BN.

    Shapes: input (N, C, H, W) -> output of the same shape.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return super().forward(x)
        if get_world_size() == 1:
            global _warned_no_dist
            if not _warned_no_dist:
                warnings.warn("SyncBN outside a distributed run: using BN", stacklevel=2)
                _warned_no_dist = True
            return super().forward(x)
        return self._sync_forward(x)

    def _sync_forward(self, x: torch.Tensor) -> torch.Tensor:
        channels = x.shape[1]
        dims = [0] + list(range(2, x.dim()))
        # Sums in float32 even under autocast: squared fp16 values overflow quickly.
        xf = x.float()
        local = torch.cat(
            [
                xf.sum(dim=dims),
                (xf * xf).sum(dim=dims),
                xf.new_full((1,), float(x.numel() // max(channels, 1))),
            ]
        )
        total = _AllReduceSum.apply(local)
        count = total[-1].detach()
        safe_count = count.clamp(min=1.0)
        mean = total[:channels] / safe_count
        var = (total[channels : 2 * channels] / safe_count - mean * mean).clamp(min=0.0)

        if self.track_running_stats:
            self._update_running_stats(mean.detach(), var.detach(), count)

        scale = (var + self.eps).rsqrt()
        if self.affine:
            scale = scale * self.weight
            shift = self.bias - mean * scale
        else:
            shift = -mean * scale
        shape = (1, -1) + (1,) * (x.dim() - 2)
        return x * scale.view(shape).to(x.dtype) + shift.view(shape).to(x.dtype)

    @torch.no_grad()
    def _update_running_stats(self, mean: torch.Tensor, var: torch.Tensor, count: torch.Tensor) -> None:
        self.num_batches_tracked.add_(1)
        if self.momentum is None:  # cumulative average, as nn.BatchNorm2d does
            factor = 1.0 / float(self.num_batches_tracked.item())
        else:
            factor = self.momentum
        # Unbiased variance for the running estimate; torch.where instead of an `if`
        # keeps the GPU from syncing on the count.
        unbiased = var * count / (count - 1).clamp(min=1.0)
        valid = count > 1
        new_mean = (1 - factor) * self.running_mean + factor * mean
        new_var = (1 - factor) * self.running_var + factor * unbiased
        self.running_mean.copy_(torch.where(valid, new_mean, self.running_mean))
        self.running_var.copy_(torch.where(valid, new_var, self.running_var))


@dataclass(frozen=True)
class Norm:
    """A resolved norm choice; ``norm(channels)`` builds the layer (None for ``""``).

    Args:
        name: one of ``"", "FrozenBN", "GN", "LN", "IN", "BN", "SyncBN"``.
        num_groups: GN groups (used when > 0).
        dim_per_gp: GN channels per group (used when > 0; exactly one of the two is > 0).
        eps: added to the variance (every kind).
    """

    name: str = ""
    num_groups: int = 32
    dim_per_gp: int = -1
    eps: float = 1e-5

    def __post_init__(self):
        if self.name not in NORM_NAMES:
            raise ValueError(f"Unknown norm {self.name!r}; choose one of {list(NORM_NAMES)}")
        if self.name == "GN" and (self.num_groups > 0) == (self.dim_per_gp > 0):
            raise ValueError(
                f"GN needs exactly one of num_groups and dim_per_gp > 0 (got {self.num_groups} "
                f"and {self.dim_per_gp}); set the other to -1 (MODEL.GROUP_NORM)"
            )

    def gn_groups(self, channels: int) -> int:
        """Number of GN groups for ``channels``; a clear error when they do not divide."""
        if self.dim_per_gp > 0:
            if channels % self.dim_per_gp != 0:
                raise ValueError(
                    f"GN with {self.dim_per_gp} channels per group cannot normalise {channels} "
                    "channels: the channel count must be a multiple of "
                    "MODEL.GROUP_NORM.DIM_PER_GP; change it or the layer width"
                )
            return channels // self.dim_per_gp
        if channels % self.num_groups != 0:
            raise ValueError(
                f"GN with {self.num_groups} groups cannot normalise {channels} channels: "
                "the channel count must be divisible by MODEL.GROUP_NORM.NUM_GROUPS; "
                "change it (or use DIM_PER_GP) or the layer width"
            )
        return self.num_groups

    def __call__(self, channels: int) -> Optional[nn.Module]:
        if self.name == "":
            return None
        if self.name == "FrozenBN":
            return FrozenBatchNorm2d(channels, eps=self.eps)
        if self.name == "BN":
            return BatchNorm2d(channels, eps=self.eps)
        if self.name == "SyncBN":
            return SyncBatchNorm2d(channels, eps=self.eps)
        if self.name == "GN":
            return GroupNorm(self.gn_groups(channels), channels, eps=self.eps)
        if self.name == "LN":
            return GroupNorm(1, channels, eps=self.eps)
        return GroupNorm(channels, channels, eps=self.eps)  # IN, with affine


class GroupNorm(nn.GroupNorm):
    """``nn.GroupNorm`` that normalises a bf16 / fp16 channels-last input in float32.

    On the CPU, torch's group norm of a reduced-precision channels-last tensor takes a slow
    kernel: forward + backward of a (2, 64, 72, 96) bf16 channels-last map took 3.8 ms against
    0.8 ms in float32 channels-last and 0.6 ms in bf16 NCHW (1 thread, AMD Zen 5), and GN was 23%
    of the demo's bf16 training step. Such an input is normalised in float32 (1.3 ms, with the
    casts) and the output is cast back to the input's dtype, as autocast's group norm returns
    it; the statistics are float32 either way. Where torch's kernel is the faster one (many
    channels per group, or large maps: :func:`_native_reduced_channels_last_is_faster`), and
    for every other input, ``nn.GroupNorm``'s path is taken.
    Parameters, state dict and ``isinstance(m, nn.GroupNorm)`` are unchanged.
    """

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if (input.dtype in (torch.bfloat16, torch.float16) and input.device.type == "cpu" and input.dim() == 4
                and not input.is_contiguous() and input.is_contiguous(memory_format=torch.channels_last)
                and not _native_reduced_channels_last_is_faster(input.shape, self.num_groups)):
            out = nn.functional.group_norm(input.float(), self.num_groups, self.weight, self.bias, self.eps)
            return out.to(input.dtype)
        return super().forward(input)


def _native_reduced_channels_last_is_faster(shape, groups: int) -> bool:
    """Where torch's own bf16 channels-last kernel beats the float32 detour (forward + backward).

    Its cost grows with pixels x groups and shrinks with channels per group, the detour's with
    the bytes cast. Measured on R50-FPN shapes (2 threads, AMD Zen 5), forward + backward in ms,
    torch's kernel / the detour: (1, 256, 200, 304) 32 groups 32 / 77; (1, 512, 100, 152) 3.0 / 15;
    (1, 1024, 50, 76) 1.4 / 4.4; but (1, 256, 100, 152) 6.6 / 4.3, (1, 64, 200, 304) 24 / 9 and
    (512, 256, 7, 7) 21 / 13. The rule depends on the shape alone, so a run's numerics never
    depend on timing (resume stays exact).
    """
    per_group = shape[1] // groups
    return per_group >= 16 or (per_group >= 8 and shape[2] * shape[3] >= 50_000)


NormSpec = Union[str, Norm, Callable[[int], Optional[nn.Module]], None]


def get_norm(norm: NormSpec, channels: int) -> Optional[nn.Module]:
    """Build the norm layer for ``channels``.

    Args:
        norm: a name (GN then uses 32 groups, eps 1e-5), a ``Norm``, a callable
            ``channels -> module``, or None / ``""`` for no norm.
        channels: number of channels C of the (N, C, H, W) input.
    Returns:
        the module, or None for no norm.
    """
    if norm is None:
        return None
    if isinstance(norm, str):
        norm = Norm(name=norm)
    return norm(channels)


def norm_from_cfg(cfg, name: str) -> Norm:
    """The ``Norm`` for a norm name (e.g. ``cfg.MODEL.FPN.NORM``) with GN settings from
    ``MODEL.GROUP_NORM``. ``name`` may also be the dotted key itself ("MODEL.FPN.NORM")."""
    key = None
    if "." in name:
        key, node = name, cfg
        for part in name.split("."):
            node = node[part]
        name = node
    gn = cfg.MODEL.GROUP_NORM
    try:
        return Norm(name=name, num_groups=gn.NUM_GROUPS, dim_per_gp=gn.DIM_PER_GP, eps=gn.EPSILON)
    except ValueError as e:
        where = f" (from {key})" if key else ""
        raise ValueError(f"{e}{where}") from None


def norm_label(m: nn.Module) -> Optional[str]:
    """Short name of a normalization module ("FrozenBN", "GN(G=32)", "LN", ...), None for others."""
    if isinstance(m, FrozenBatchNorm2d):
        return "FrozenBN"
    if isinstance(m, (SyncBatchNorm2d, nn.SyncBatchNorm)):
        return "SyncBN"
    if isinstance(m, nn.modules.batchnorm._BatchNorm):
        return "BN"
    if isinstance(m, nn.GroupNorm):
        if m.num_groups == 1:
            return "LN"
        if m.num_groups == m.num_channels:
            return "IN"
        return f"GN(G={m.num_groups})"
    if isinstance(m, nn.LayerNorm):
        return "LayerNorm"
    return None


def _describe_part(module: nn.Module) -> str:
    counts = Counter(lab for lab in map(norm_label, module.modules()) if lab is not None)
    norms = ", ".join(f"{lab} x{n}" for lab, n in sorted(counts.items())) or "no norm"
    total = sum(p.numel() for p in module.parameters())
    frozen = sum(p.numel() for p in module.parameters() if not p.requires_grad)
    if total == 0:
        params = "no params"
    elif frozen == 0:
        params = f"{total:,} params, none frozen"
    elif frozen == total:
        params = f"{total:,} params, all frozen"
    else:
        params = f"{total:,} params, {frozen:,} frozen"
    return f"{norms} | {params}"


def describe_norms(module: nn.Module, *, depth: int = 1) -> List[str]:
    """One line per part: the norm layers in it and how many of its params are frozen.

    Parts are the submodules ``depth`` levels below ``module`` (``depth=2`` on a whole
    detector gives ``backbone.bottom_up``, ``roi_heads.mask_head``, ...); a part with
    neither params nor norms is left out. Example line:
    ``"res2: FrozenBN x10 | 212,992 params, all frozen"``.
    """
    lines: List[str] = []

    def visit(m: nn.Module, prefix: str, level: int) -> None:
        children = list(m.named_children())
        if level == depth or not children:
            if prefix and (any(True for _ in m.parameters()) or any(map(norm_label, m.modules()))):
                lines.append(f"{prefix}: {_describe_part(m)}")
            return
        own = [p for p in m.parameters(recurse=False)]
        if own and prefix:
            lines.append(f"{prefix} (own params): {sum(p.numel() for p in own):,} params")
        for name, child in children:
            visit(child, f"{prefix}.{name}" if prefix else name, level + 1)

    visit(module, "", 0)
    return lines
