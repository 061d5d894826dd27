"""EvalNorm in a whole model: its BN layers found, switched on or off, set by the rule, summarised.

The layer and the maths are :mod:`detgn.layers.batch_norm`; ``build_model`` applies
``MODEL.EVALNORM`` with :func:`configure_evalnorm`; offline fitting is
:func:`detgn.study.norm_calibration.calibrate_evalnorm`.
"""
from __future__ import annotations

import logging
from typing import Iterator, List, Optional, Tuple

import torch
from torch import nn

from .batch_norm import EVALNORM_LOSS, BatchNorm2d

logger = logging.getLogger(__name__)

__all__ = [
    "EVALNORM_MODES",
    "apply_evalnorm_rule",
    "configure_evalnorm",
    "evalnorm_layers",
    "evalnorm_summary",
    "log_evalnorm_state",
    "pop_evalnorm_loss",
]

EVALNORM_MODES = ("online", "offline", "rule")


def evalnorm_layers(model: nn.Module) -> Iterator[Tuple[str, BatchNorm2d]]:
    """The model's EvalNorm-capable BN layers (FrozenBN, SyncBN and GN are not)."""
    for name, m in model.named_modules():
        if isinstance(m, BatchNorm2d):
            yield name, m


def configure_evalnorm(model: nn.Module, *, enabled: bool, mode: str = "online", loss_weight: float = 1.0,
                       lr_factor: float = 1.0) -> int:
    """Switch EvalNorm on or off in every BN layer of ``model``; returns how many layers there are.

    Args:
        enabled: evaluate with EvalNorm (False: plain BN evaluation, nothing fitted).
        mode: "online" fits alpha, beta during training (they become parameters, to be given
            to the optimizer); "offline" uses the stored values; "rule" uses 1/B^2.
        loss_weight: weight of each layer's online auxiliary loss.
        lr_factor: LR multiplier of alpha and beta (their parameter group "evalnorm").
    """
    if mode not in EVALNORM_MODES:
        raise ValueError(f"EvalNorm mode {mode!r} is unknown; choose one of {list(EVALNORM_MODES)}")
    count = 0
    for _, m in evalnorm_layers(model):
        count += 1
        m.evalnorm_eval = bool(enabled)
        m.evalnorm_rule = bool(enabled) and mode == "rule"
        m.evalnorm_loss_weight = float(loss_weight)
        m.evalnorm_lr_factor = float(lr_factor)
        m.set_evalnorm_trainable(bool(enabled) and mode == "online")
    return count


def pop_evalnorm_loss(model: nn.Module) -> Optional[torch.Tensor]:
    """Sum of the auxiliary losses the BN layers recorded since the last call (then cleared);
    None when no layer fits alpha, beta. Meta-architectures take it, as ``loss_evalnorm``, with
    every other declared auxiliary loss through :func:`detgn.layers.auxiliary.pop_aux_losses`."""
    losses: List[torch.Tensor] = []
    for _, m in evalnorm_layers(model):
        losses.extend(m.take_aux_losses().get(EVALNORM_LOSS, []))
    if not losses:
        return None
    return torch.stack(losses).sum()


@torch.no_grad()
def apply_evalnorm_rule(model: nn.Module) -> int:
    """Store alpha = beta = 1/B^2 (B: each layer's recorded training batch) in every BN layer;
    returns the number of layers set. Layers without a record are left as they are (warned)."""
    done, unknown = 0, []
    for name, m in evalnorm_layers(model):
        b = float(m.train_batch_size)
        if b <= 0:
            unknown.append(name)
            continue
        m.evalnorm_alpha.fill_(1.0 / (b * b))
        m.evalnorm_beta.fill_(1.0 / (b * b))
        done += 1
    if unknown:
        logger.warning("EvalNorm 1/B^2 rule: %d BN layer(s) carry no recorded training batch size and keep their "
                       "alpha/beta (e.g. %s)", len(unknown), unknown[0])
    return done


def evalnorm_summary(model: nn.Module) -> str:
    """One line: how many BN layers, their recorded B and alpha/beta ranges, e.g. for the log."""
    layers = [m for _, m in evalnorm_layers(model)]
    if not layers:
        return "no BN layer"
    bs = sorted({round(float(m.train_batch_size), 2) for m in layers})
    al, be = [], []
    for m in layers:
        rule = m.evalnorm_rule and float(m.train_batch_size) > 0
        a, b = m.evalnorm_weights() if rule else (m.evalnorm_alpha.detach(), m.evalnorm_beta.detach())
        al.append(float(a.clamp(0, 1)))
        be.append(float(b.clamp(0, 1)))
    if not layers[0].evalnorm_eval:
        state = "plain BN"
    else:
        state = "EvalNorm, rule 1/B^2" if layers[0].evalnorm_rule else "EvalNorm"
    b_text = ", ".join(f"{b:g}" for b in bs[:6]) + (" ..." if len(bs) > 6 else "")
    return (f"{len(layers)} BN layers ({state} at evaluation); recorded training batch B: {b_text}; "
            f"alpha {min(al):.3f}..{max(al):.3f} (median {sorted(al)[len(al) // 2]:.3f}), "
            f"beta {min(be):.3f}..{max(be):.3f} (median {sorted(be)[len(be) // 2]:.3f})")


def log_evalnorm_state(model: nn.Module) -> None:
    """Log how the BN layers will evaluate; warn when the weights carry EvalNorm values that
    the configuration does not use (MODEL.EVALNORM.ENABLED False)."""
    layers = [m for _, m in evalnorm_layers(model)]
    if not layers:
        return
    logger.info("Evaluating with %s", evalnorm_summary(model))
    calibrated = any(float(m.evalnorm_alpha.detach()) > 0 or float(m.evalnorm_beta.detach()) > 0 for m in layers)
    if calibrated and not layers[0].evalnorm_eval:
        logger.warning("The weights carry EvalNorm alpha/beta, but MODEL.EVALNORM.ENABLED is False: evaluating with "
                       "plain BN statistics. Set MODEL.EVALNORM.ENABLED True MODEL.EVALNORM.MODE offline to use them")
