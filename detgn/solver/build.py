"""SGD with parameter groups by kind: weights, biases, and normalization gamma/beta.

The GN paper trains with weight decay 1e-4 on conv/fc weights and **none on the
GN gamma and beta** ("important for good detection results"), so every
normalization layer's parameters go to their own group with
``SOLVER.WEIGHT_DECAY_NORM``. A layer counts as a normalization when it is a
BatchNorm of any kind (``_NormBase`` covers BatchNorm1/2/3d, SyncBatchNorm and
InstanceNorm with affine), GroupNorm, LayerNorm, LocalResponseNorm, or any class
that sets ``is_norm = True`` (detgn's own norm layers). Biases of other layers
get ``BIAS_LR_FACTOR`` and ``WEIGHT_DECAY_BIAS``. Parameters a layer puts in a group of
its own (:class:`detgn.layers.auxiliary.ParamGroup`) go there, after these three groups.
Frozen parameters (``requires_grad=False``) are left out.
"""
from __future__ import annotations

from typing import Dict, List

import torch
from torch import nn
from torch.nn.modules.batchnorm import _NormBase

from detgn.layers.auxiliary import declared_param_groups

from .schedule import Schedule

__all__ = ["is_norm_module", "get_param_groups", "format_param_groups", "build_optimizer"]

_NORM_TYPES = (_NormBase, nn.GroupNorm, nn.LayerNorm, nn.LocalResponseNorm)



def is_norm_module(module: nn.Module) -> bool:
    """True for a normalization layer (by type, or by a class attribute ``is_norm = True``)."""
    return isinstance(module, _NORM_TYPES) or getattr(type(module), "is_norm", False) is True


def get_param_groups(
    model: nn.Module,
    *,
    base_lr: float,
    weight_decay: float,
    weight_decay_norm: float,
    bias_lr_factor: float = 1.0,
    weight_decay_bias: float,
) -> List[Dict]:
    """Split the trainable parameters of ``model`` into optimizer groups.

    Args:
        model: the network (a DDP wrapper works too: names are not used).
        base_lr: LR of weights and norm parameters.
        weight_decay: decay of conv/fc (and any other non-norm, non-bias) weights.
        weight_decay_norm: decay of every normalization layer's gamma and beta.
        bias_lr_factor: LR multiplier of non-norm biases.
        weight_decay_bias: decay of non-norm biases.

    Returns:
        dicts ``{"name", "params", "param_names", "lr", "weight_decay"}``: "weights",
        "biases", "norm", then the groups layers declare (LR ``base_lr x lr_factor``, their
        own decay); empty ones are omitted. Each parameter
        appears once even when shared between modules.
    """
    seen = set()
    # In the (fixed) order the optimizer sees them: optimizer state in a checkpoint is matched
    # to groups by position. Groups layers declare come last, in the order their first parameter is met.
    groups: Dict[str, Dict] = {
        "weights": {"name": "weights", "params": [], "param_names": [], "lr": base_lr, "weight_decay": weight_decay},
        "biases": {
            "name": "biases",
            "params": [],
            "param_names": [],
            "lr": base_lr * bias_lr_factor,
            "weight_decay": weight_decay_bias,
        },
        "norm": {"name": "norm", "params": [], "param_names": [], "lr": base_lr, "weight_decay": weight_decay_norm},
    }
    declared = declared_param_groups(model)
    for mod_name, module in model.named_modules():
        norm = is_norm_module(module)
        for p_name, p in module.named_parameters(recurse=False):
            if not p.requires_grad or id(p) in seen:
                continue
            seen.add(id(p))
            if id(p) in declared:
                spec = declared[id(p)]
                kind = spec.name
                groups.setdefault(kind, {"name": kind, "params": [], "param_names": [], "lr": base_lr * spec.lr_factor,
                                         "weight_decay": spec.weight_decay})
            else:
                kind = "norm" if norm else ("biases" if p_name == "bias" else "weights")
            groups[kind]["params"].append(p)
            groups[kind]["param_names"].append(f"{mod_name}.{p_name}" if mod_name else p_name)
    return [g for g in groups.values() if g["params"]]


def format_param_groups(optimizer: torch.optim.Optimizer) -> str:
    """A table of the optimizer's groups: tensors, parameters, LR, weight decay, momentum."""
    header = ("group", "tensors", "params", "lr", "weight_decay", "momentum")
    rows = [header]
    for i, g in enumerate(optimizer.param_groups):
        rows.append(
            (
                str(g.get("name", i)),
                str(len(g["params"])),
                f"{sum(p.numel() for p in g['params']):,}",
                f"{g.get('initial_lr', g['lr']):.6g}",
                f"{g['weight_decay']:.3g}",
                f"{g['momentum'] if 'momentum' in g else g.get('betas', (0.0,))[0]:.3g}",
            )
        )
    w = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = ["  ".join(c.rjust(w[i]) if i else c.ljust(w[i]) for i, c in enumerate(r)) for r in rows]
    lines.insert(1, "  ".join("-" * x for x in w))
    return "\n".join(lines)


_OPTIMIZERS = ("SGD", "AdamW")


def build_optimizer(cfg, model: nn.Module, schedule: Schedule) -> torch.optim.Optimizer:
    """``SOLVER.OPTIMIZER`` (SGD with momentum, or AdamW with beta1 = ``MOMENTUM``)
    over :func:`get_param_groups`, at the resolved schedule's base LR."""
    s = cfg.SOLVER
    groups = get_param_groups(
        model,
        base_lr=schedule.base_lr,
        weight_decay=s.WEIGHT_DECAY,
        weight_decay_norm=s.WEIGHT_DECAY_NORM,
        bias_lr_factor=s.BIAS_LR_FACTOR,
        weight_decay_bias=s.WEIGHT_DECAY_BIAS,
    )
    if not groups:
        raise ValueError(
            "The model has no trainable parameter (all requires_grad=False); "
            "check MODEL.BACKBONE.FREEZE_AT and the heads"
        )
    if s.OPTIMIZER == "SGD":
        return torch.optim.SGD(groups, lr=schedule.base_lr, momentum=s.MOMENTUM)
    if s.OPTIMIZER == "AdamW":
        return torch.optim.AdamW(groups, lr=schedule.base_lr, betas=(s.MOMENTUM, s.ADAM_BETA2))
    raise ValueError(f"SOLVER.OPTIMIZER is {s.OPTIMIZER!r}; use one of {', '.join(_OPTIMIZERS)}")
