"""PreciseBN: evaluation-time statistics of a trained BN model.

:func:`precise_bn` runs the model in training mode over training batches (the
normalisation each layer saw in training) and replaces each BN layer's running mean and
variance by the exact statistics of its inputs pooled over ``num_iter`` batches (and over
processes), in place of the exponential moving average collected during training. It
changes nothing else and leaves the global RNG states as it found them. The engine's
``PreciseBN`` hook runs it before each evaluation; offline EvalNorm
(:func:`detgn.study.norm_calibration.calibrate_evalnorm`) shares its helpers.

Why not fvcore's ``update_bn_stats``: it averages the per-batch variances, which leaves
out the spread of the batch means (for 2-image batches with per-image brightness and
contrast, a large part of the variance), weights every batch the same whatever its
number of pixels (detection images differ in size) and does not combine processes.
Pooling sums of x and x^2 gives the population statistics exactly.
"""
from __future__ import annotations

import contextlib
import logging
import time
from typing import Iterable, Iterator, List, Tuple

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from detgn.layers.norm import SyncBatchNorm2d
from detgn.utils import comm, stop
from detgn.utils.seed import get_rng_state, set_rng_state

logger = logging.getLogger(__name__)

__all__ = ["precise_bn", "precise_bn_layers", "train_mode_preserving_rng", "all_reduce_sum_", "take_batches"]


def precise_bn_layers(model: nn.Module) -> List[Tuple[str, _BatchNorm]]:
    """BN layers with running statistics, SyncBN excluded (FrozenBN is not a BN layer)."""
    return [(n, m) for n, m in model.named_modules()
            if isinstance(m, _BatchNorm) and m.track_running_stats
            and not isinstance(m, (SyncBatchNorm2d, nn.SyncBatchNorm))]


@contextlib.contextmanager
def train_mode_preserving_rng(model: nn.Module):
    """The model in training mode meanwhile; its mode and the global RNG states restored after."""
    was_training = model.training
    rng = get_rng_state()
    model.train()
    try:
        yield
    finally:
        set_rng_state(rng)
        model.train(was_training)


def all_reduce_sum_(tensors: List[torch.Tensor]) -> None:
    """Sum each tensor over processes, in place (nothing with one process)."""
    if comm.get_world_size() > 1:
        for t in tensors:
            dist.all_reduce(t, op=dist.ReduceOp.SUM)


def take_batches(data: Iterable, num_iter: int) -> Iterator:
    """The first ``num_iter`` items of ``data`` (fewer if it runs out)."""
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
        with train_mode_preserving_rng(model):
            for used, batch in enumerate(take_batches(data, num_iter), start=1):
                if stop.requested():  # SIGTERM on some rank: leave now (the statistics are restored)
                    break
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
    if stop.agreed():  # every rank is here: all leave together, the model as it was
        raise stop.StopRequested(f"{stop.reason()}, during PreciseBN")
    all_reduce_sum_(sums + counts)
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
