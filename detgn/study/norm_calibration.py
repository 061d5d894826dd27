"""Offline EvalNorm: fit each BN layer's ``alpha``, ``beta`` on a trained, frozen model.

:func:`calibrate_evalnorm` runs the model in training mode over training batches (the
normalisation each layer saw in training) and fits EvalNorm's two scalars per layer with the
auxiliary loss of the EvalNorm paper (eq. 9). It changes nothing but alpha and beta and leaves
the global RNG states as it found them. PreciseBN, the other way to evaluation-time statistics,
is :func:`detgn.modeling.precise_bn.precise_bn` (the engine's hook runs it too).
"""
from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from typing import Dict, Iterable, List, Optional, Tuple

import torch
from torch import nn

from detgn.layers.batch_norm import BatchNorm2d
from detgn.layers.evalnorm_setup import evalnorm_layers
from detgn.modeling.precise_bn import all_reduce_sum_, take_batches, train_mode_preserving_rng
from detgn.utils import comm

logger = logging.getLogger(__name__)

__all__ = ["METHODS", "calibrate_evalnorm", "calibrate_weights"]


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
            m.take_aux_losses()  # drop what the last batch recorded
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
    with _fitting_alpha_beta(model, layers), train_mode_preserving_rng(model):
        params = [p for m in layers for p in (m.evalnorm_alpha, m.evalnorm_beta)]
        optimizer = torch.optim.Adam(params, lr=lr)
        for used, batch in enumerate(take_batches(data, num_iter), start=1):
            for g in optimizer.param_groups:
                g["lr"] = lr * 0.5 * (1 + math.cos(math.pi * (used - 1) / max(num_iter, 1)))
            out = model(batch)
            loss = out.get("loss_evalnorm") if isinstance(out, dict) else None
            if loss is None:
                raise RuntimeError(
                    f"EvalNorm calibration: {type(model).__name__} returned no 'loss_evalnorm' in training mode; "
                    "its forward must add detgn.layers.pop_aux_losses(self) to its losses"
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
            all_reduce_sum_(grads)
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


METHODS = ("precise_bn", "evalnorm_offline", "evalnorm_rule")


def calibrate_weights(cfg, method: str, *, num_iter: Optional[int] = None, lr: float = 0.02,
                      output: Optional[str] = None, config_name: str = "the config") -> str:
    """Calibrate the BN statistics of the trained ``cfg.MODEL.WEIGHTS`` and write them as a new
    checkpoint (``tools/calibrate_norm.py``): ``precise_bn``, ``evalnorm_offline`` (fitted on
    ``num_iter`` training batches, default ``TEST.PRECISE_BN.NUM_ITER``) or ``evalnorm_rule``.

    Writes ``output`` (default ``OUTPUT_DIR/model_<method>.pth``) and, next to it, a ``.yaml``
    config naming those weights (EvalNorm switched on for the EvalNorm methods), on the main
    process. ``config_name`` names the config in errors. Returns ``output``.

    Raises:
        UserError: no MODEL.WEIGHTS, or the model has no BN layer to calibrate.
    """
    from detgn.data import BadImageTracker
    from detgn.engine import build_and_load_model
    from detgn.engine.tasks import build_train_loader
    from detgn.layers import apply_evalnorm_rule, evalnorm_summary
    from detgn.modeling.precise_bn import precise_bn
    from detgn.utils.errors import UserError
    from detgn.utils.file_io import atomic_write

    if method not in METHODS:
        raise ValueError(f"Calibration method {method!r} is unknown; choose one of {list(METHODS)}")
    if not cfg.MODEL.WEIGHTS:
        raise UserError("Give the trained weights to calibrate: MODEL.WEIGHTS path/to/model_final.pth")
    model, _ = build_and_load_model(cfg)
    if not any(True for _ in evalnorm_layers(model)):
        raise UserError(f"{config_name}: the model has no BN layer (norm 'BN'); FrozenBN, SyncBN and GN have nothing "
                        "to calibrate. Use the config (and overrides) the weights were trained with")
    num_iter = num_iter or cfg.TEST.PRECISE_BN.NUM_ITER

    def data():
        return build_train_loader(cfg, bad_images=BadImageTracker.from_config(cfg))

    if method == "precise_bn":
        precise_bn(model, data(), num_iter=num_iter)
    elif method == "evalnorm_offline":
        calibrate_evalnorm(model, data(), num_iter=num_iter, lr=lr)
    else:
        apply_evalnorm_rule(model)
    output = output or os.path.join(cfg.OUTPUT_DIR, f"model_{method}.pth")
    if comm.is_main_process():
        os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
        state = {"model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
                 "calibration": {"method": method, "num_iter": num_iter, "weights": cfg.MODEL.WEIGHTS}}
        atomic_write(output, lambda f: torch.save(state, f))
        eval_cfg = cfg.clone()
        eval_cfg.defrost()
        eval_cfg.MODEL.WEIGHTS = os.path.abspath(output)
        if method != "precise_bn":
            eval_cfg.MODEL.EVALNORM.ENABLED, eval_cfg.MODEL.EVALNORM.MODE = True, "offline"
        yaml_path = os.path.splitext(output)[0] + ".yaml"
        atomic_write(yaml_path, lambda f: f.write(eval_cfg.dump().encode()))
        if method != "precise_bn":
            logger.info("EvalNorm: %s", evalnorm_summary(model))
        logger.info("Wrote %s and %s; evaluate with:\n  python tools/train_net.py --config %s --eval-only",
                    output, yaml_path, yaml_path)
    return output
