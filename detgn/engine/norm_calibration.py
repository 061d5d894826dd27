"""Evaluation-time statistics of a trained BN model: PreciseBN and offline EvalNorm.

Both run the model in training mode over training batches (the normalisation each
layer saw in training), change nothing but what they are for, and leave the global
RNG states as they found them:

- :func:`precise_bn` replaces each BN layer's running mean and variance by the exact
  statistics of its inputs pooled over ``num_iter`` batches (and over processes), in
  place of the exponential moving average collected during training.
- :func:`calibrate_evalnorm` fits each BN layer's EvalNorm ``alpha``, ``beta`` with the
  auxiliary loss of the EvalNorm paper (eq. 9) on the frozen model.

Why not fvcore's ``update_bn_stats``: it averages the per-batch variances, which leaves
out the spread of the batch means (for 2-image batches with per-image brightness and
contrast, a large part of the variance), weights every batch the same whatever its
number of pixels (detection images differ in size) and does not combine processes.
Pooling sums of x and x^2 gives the population statistics exactly.
"""
from __future__ import annotations

import contextlib
import logging
import math
import time
from typing import Dict, Iterable, Iterator, List, Tuple

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from detgn.layers.batch_norm import BatchNorm2d, evalnorm_layers
from detgn.layers.norm import SyncBatchNorm2d
from detgn.utils import comm
from detgn.utils.seed import get_rng_state, set_rng_state

logger = logging.getLogger(__name__)

__all__ = ["precise_bn", "precise_bn_layers", "calibrate_evalnorm"]


def precise_bn_layers(model: nn.Module) -> List[Tuple[str, _BatchNorm]]:
    """BN layers with running statistics, SyncBN excluded (FrozenBN is not a BN layer)."""
    return [(n, m) for n, m in model.named_modules()
            if isinstance(m, _BatchNorm) and m.track_running_stats
            and not isinstance(m, (SyncBatchNorm2d, nn.SyncBatchNorm))]


@contextlib.contextmanager
def _train_mode_preserving_rng(model: nn.Module):
    was_training = model.training
    rng = get_rng_state()
    model.train()
    try:
        yield
    finally:
        set_rng_state(rng)
        model.train(was_training)


def _all_reduce_(tensors: List[torch.Tensor]) -> None:
    if comm.get_world_size() > 1:
        for t in tensors:
            dist.all_reduce(t, op=dist.ReduceOp.SUM)


def _batches(data: Iterable, num_iter: int) -> Iterator:
    it = iter(data)
    for _ in range(num_iter):
        try:
            yield next(it)
        except StopIteration:
            return


@torch.no_grad()
def precise_bn(model: nn.Module, data: Iterable, *, num_iter: int = 200, log_period: int = 50) -> int:
    """Set the running statistics of every BN layer to the exact pooled statistics of its inputs.

    Runs ``model(batch)`` in training mode for ``num_iter`` batches of ``data`` (a detector
    computes its losses: the batches need their annotations). For each layer, with n the
    number of values a channel saw over all batches and processes::

        running_mean = sum(x) / n,   running_var = (sum(x^2) - n mean^2) / (n - 1)

    (unbiased, as BN's eval mode expects). Nothing else changes: other buffers (the step
    counters, detgn's recorded batch sizes) are restored, and so are the global RNGs.

    Returns:
        the number of batches used (fewer than ``num_iter`` if ``data`` ran out).
    """
    layers = precise_bn_layers(model)
    if not layers:
        logger.info("PreciseBN: the model has no BN layer; nothing to do")
        return 0
    saved = [{k: v.clone() for k, v in m.named_buffers(recurse=False)} for _, m in layers]
    sums = [torch.zeros(2, m.num_features, dtype=torch.float64, device=m.running_mean.device) for _, m in layers]
    counts = [torch.zeros((), dtype=torch.float64, device=m.running_mean.device) for _, m in layers]

    def accumulate(i):
        def hook(_module, inputs):
            x = inputs[0].detach()
            dims = [0] + list(range(2, x.dim()))
            xd = x.double()
            sums[i][0] += xd.sum(dim=dims)
            sums[i][1] += (xd * xd).sum(dim=dims)
            counts[i] += x.numel() // max(x.shape[1], 1)
        return hook

    handles = [m.register_forward_pre_hook(accumulate(i)) for i, (_, m) in enumerate(layers)]
    used, start = 0, time.perf_counter()
    try:
        with _train_mode_preserving_rng(model):
            for used, batch in enumerate(_batches(data, num_iter), start=1):
                model(batch)
                if log_period and used % log_period == 0:
                    eta = (time.perf_counter() - start) / used * (num_iter - used)
                    logger.info("PreciseBN: %d/%d batches, ETA %.0f s", used, num_iter, eta)
    finally:
        for h in handles:
            h.remove()
        for (_, m), state in zip(layers, saved):
            for k, v in state.items():
                getattr(m, k).copy_(v)
    _all_reduce_(sums + counts)
    if used < num_iter:
        logger.warning("PreciseBN: the data gave %d of the %d batches asked for", used, num_iter)
    for (name, m), s, n in zip(layers, sums, counts):
        if float(n) < 2:
            logger.warning("PreciseBN: layer %s saw %d value(s) per channel; its statistics are kept", name, int(n))
            continue
        mean = s[0] / n
        var = (s[1] / n - mean * mean).clamp(min=0) * (n / (n - 1))
        m.running_mean.copy_(mean.to(m.running_mean.dtype))
        m.running_var.copy_(var.to(m.running_var.dtype))
    logger.info("PreciseBN: running statistics of %d BN layer(s) recomputed over %d batch(es) x %d process(es)",
                len(layers), used, comm.get_world_size())
    return used


@contextlib.contextmanager
def _fitting_alpha_beta(model: nn.Module, layers: List[BatchNorm2d]):
    """Only alpha and beta train; BN layers use batch statistics without updating anything.
    Everything (requires_grad flags, parameter/buffer kind of alpha, beta, EvalNorm mode) is restored after."""
    flags = {p: p.requires_grad for p in model.parameters()}
    state = [(m.evalnorm_trainable, m.evalnorm_eval) for m in layers]
    for p in model.parameters():
        p.requires_grad_(False)
    for m in layers:
        m.set_evalnorm_trainable(True)
        m.evalnorm_alpha.requires_grad_(True)
        m.evalnorm_beta.requires_grad_(True)
        m.freeze_stats = True
    try:
        yield
    finally:
        for m, (trainable, on) in zip(layers, state):
            m.set_evalnorm_trainable(trainable)
            m.evalnorm_eval = on
            m.freeze_stats = False
            m._aux_losses = []
        for p, flag in flags.items():
            p.requires_grad_(flag)


def calibrate_evalnorm(
    model: nn.Module,
    data: Iterable,
    *,
    num_iter: int = 200,
    lr: float = 0.02,
    log_period: int = 50,
) -> Dict[str, Tuple[float, float]]:
    """EvalNorm offline: fit every BN layer's ``alpha``, ``beta`` on a trained, frozen model.

    For ``num_iter`` training batches (of the training batch size: the statistics to
    reproduce are those of that batch size), the model runs in training mode with every
    BN layer normalising by its batch statistics without updating anything, and Adam
    (``lr``, cosine-decayed to 0) minimises the sum of the layers' auxiliary losses
    (``loss_evalnorm`` of the model's loss dict) over alpha and beta only, projected on
    [0, 1]. Gradients are averaged over processes. The model's weights, running
    statistics, records and mode, and the global RNGs, are left as they were; the layers
    are not switched to EvalNorm evaluation (see ``configure_evalnorm``).

    Returns:
        ``{layer name: (alpha, beta)}``.
    """
    layers_named = list(evalnorm_layers(model))
    layers = [m for _, m in layers_named]
    if not layers:
        raise ValueError("EvalNorm calibration: the model has no BN layer (norm 'BN'); nothing to calibrate")
    used, start, recent = 0, time.perf_counter(), []
    with _fitting_alpha_beta(model, layers), _train_mode_preserving_rng(model):
        params = [p for m in layers for p in (m.evalnorm_alpha, m.evalnorm_beta)]
        optimizer = torch.optim.Adam(params, lr=lr)
        for used, batch in enumerate(_batches(data, num_iter), start=1):
            for g in optimizer.param_groups:
                g["lr"] = lr * 0.5 * (1 + math.cos(math.pi * (used - 1) / max(num_iter, 1)))
            out = model(batch)
            loss = out.get("loss_evalnorm") if isinstance(out, dict) else None
            if loss is None:
                raise RuntimeError(
                    f"EvalNorm calibration: {type(model).__name__} returned no 'loss_evalnorm' in training mode; "
                    "its forward must add detgn.layers.pop_evalnorm_loss(self) to its losses"
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
            _all_reduce_(grads)
            for p, g in zip(params, grads):
                p.grad = g / comm.get_world_size()
            optimizer.step()
            with torch.no_grad():
                for p in params:
                    p.clamp_(0, 1)
            recent = (recent + [float(loss.detach())])[-(log_period or 1):]
            if log_period and used % log_period == 0:
                eta = (time.perf_counter() - start) / used * (num_iter - used)
                logger.info("EvalNorm calibration: %d/%d batches, loss_evalnorm %.4f, ETA %.0f s",
                            used, num_iter, sum(recent) / len(recent), eta)
    if used < num_iter:
        logger.warning("EvalNorm calibration: the data gave %d of the %d batches asked for", used, num_iter)
    return {name: (float(m.evalnorm_alpha), float(m.evalnorm_beta)) for name, m in layers_named}
