"""From a config to a ready trainer: argument parsing, run set-up, optimizer, hooks.

These ``build_*``/``default_*`` functions are the only engine code that reads the
config; :class:`detgn.engine.trainer.Trainer` and the hooks take plain arguments.
"""
from __future__ import annotations

import argparse
import logging
import os
from typing import Callable, Iterable, List, Mapping, Optional, Sequence

import torch
import yaml
from torch import nn

from detgn.utils.cpu import log_bf16_choice, resolve_bf16
from detgn.checkpoint import Checkpointer
from detgn.solver import (
    Schedule,
    build_lr_scheduler,
    build_optimizer,
    format_param_groups,
    format_schedule_table,
    reference_schedule,
    resolve_schedule,
)
from detgn.utils import comm
from detgn.utils.env import collect_env_info
from detgn.utils.events import EventWriter
from detgn.utils.file_io import atomic_write_text
from detgn.utils.logger import setup_logger
from detgn.utils.seed import draw_seed, seed_all_rng

from . import hooks as H
from .launch import create_ddp_model, seed_for_rank
from .preemption import StopAtRequest
from .trainer import HookBase, Trainer

logger = logging.getLogger(__name__)

__all__ = ["default_argument_parser", "default_setup", "build_trainer", "build_hooks", "nan_hint"]


def default_argument_parser(description: str = "detgn training") -> argparse.ArgumentParser:
    """``--config NAME_OR_PATH [--resume] [--eval-only] [--num-gpus N] [KEY VALUE ...]``."""
    p = argparse.ArgumentParser(
        description=description,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=(
            "Examples:\n"
            "  python tools/train_net.py --config fpn_gn_long.yaml\n"
            "  python tools/train_net.py --config fpn_gn_long.yaml --resume OUTPUT_DIR out/gn\n"
            "  torchrun --nproc_per_node=8 tools/train_net.py --config fpn_gn_long.yaml\n"
            "  python tools/train_net.py --config fpn_gn_long.yaml --eval-only MODEL.WEIGHTS model_final.pth"
        ),
    )
    p.add_argument("--config", required=True, metavar="NAME_OR_PATH", help="a config file or a name under configs/")
    p.add_argument("--resume", action="store_true", help="continue from the newest good checkpoint in OUTPUT_DIR")
    p.add_argument("--eval-only", action="store_true", help="only evaluate MODEL.WEIGHTS (or, with --resume, the last checkpoint)")
    p.add_argument(
        "--num-gpus",
        type=int,
        default=1,
        help="processes to spawn on this machine (one per GPU; gloo processes with MODEL.DEVICE cpu). "
        "Not needed under torchrun.",
    )
    p.add_argument("opts", nargs=argparse.REMAINDER, metavar="KEY VALUE", help="config overrides, e.g. SOLVER.IMS_PER_GPU 2")
    return p


def _seed_from_previous_run(output_dir: str) -> Optional[int]:
    path = os.path.join(output_dir, "config.yaml")
    try:
        with open(path) as f:
            seed = (yaml.safe_load(f) or {}).get("SEED")
    except (OSError, yaml.YAMLError):
        return None
    return seed if isinstance(seed, int) and seed >= 0 else None


def default_setup(cfg, *, resume: bool = False) -> int:
    """Prepare this process for a run described by ``cfg``.

    Creates OUTPUT_DIR and the logs (``log.txt``, ``log.txt.rankN``), applies
    ``CPU.NUM_THREADS``, resolves ``SEED`` (< 0 draws one on rank 0 and shares it; a
    resumed run reuses the seed its ``config.yaml`` recorded), seeds this process with
    ``SEED + rank``, dumps the resolved config to ``OUTPUT_DIR/config.yaml`` and, with
    ``VERBOSE_STARTUP``, logs the environment. ``cfg.SEED`` is updated in place.

    Returns:
        the shared (data) seed.
    """
    rank = comm.get_rank()
    out = cfg.OUTPUT_DIR
    os.makedirs(out, exist_ok=True)
    setup_logger(out, rank=rank)
    if cfg.CPU.NUM_THREADS > 0:
        torch.set_num_threads(cfg.CPU.NUM_THREADS)
    seed = int(cfg.SEED)
    if seed < 0:
        previous = _seed_from_previous_run(out) if resume else None
        seed = previous if previous is not None else draw_seed()
        seed = comm.all_gather(seed)[0]  # every rank takes rank 0's
        logger.info("SEED < 0: using seed %d (%s)", seed, "from the resumed run's config.yaml" if previous is not None else "drawn")
    frozen = cfg.is_frozen()
    cfg.defrost()
    cfg.SEED = seed
    if frozen:
        cfg.freeze()
    seed_all_rng(seed_for_rank(seed, rank))
    if comm.is_main_process():
        if cfg.VERBOSE_STARTUP:
            logger.info("Environment:\n%s", collect_env_info())
        path = os.path.join(out, "config.yaml")
        atomic_write_text(path, cfg.dump())
        logger.info("Resolved config saved to %s", path)
    return seed


def nan_hint(cfg, schedule: Schedule, world_size: int) -> str:
    """What to check when the loss diverges: the batch and the LR the linear rule implies."""
    ref = reference_schedule(cfg)
    rule_lr = ref.base_lr * schedule.ims_per_batch / ref.ims_per_batch
    k = int(cfg.SOLVER.GRAD_ACCUM_STEPS)
    accum = f" x SOLVER.GRAD_ACCUM_STEPS={k}" if k > 1 else ""
    return (
        "Hint: a diverging loss usually means the LR is too high for the batch. This run has "
        f"{world_size} process(es) (--num-gpus / torchrun --nproc_per_node) x SOLVER.IMS_PER_GPU="
        f"{cfg.SOLVER.IMS_PER_GPU}{accum} = {schedule.ims_per_batch} images per iteration. SOLVER.BASE_LR="
        f"{ref.base_lr:g} is meant for SOLVER.REFERENCE_IMS_PER_BATCH={ref.ims_per_batch} images; the linear "
        f"scaling rule gives {ref.base_lr:g} x {schedule.ims_per_batch}/{ref.ims_per_batch} = {rule_lr:.6g}, and "
        f"this run uses base LR {schedule.base_lr:.6g} (SOLVER.SCALE_SCHEDULE={cfg.SOLVER.SCALE_SCHEDULE}). "
        "Do not scale BASE_LR by hand when SCALE_SCHEDULE is on (it would be scaled twice); otherwise "
        "lower SOLVER.BASE_LR or lengthen SOLVER.WARMUP_ITERS."
    )


# Iterations between exchanges of newly found unreadable training files between processes:
# a file one process found may still be read by another within this window.
BAD_IMAGE_SYNC_PERIOD = 20


def build_hooks(
    cfg,
    *,
    checkpointer: Checkpointer,
    schedule: Schedule,
    eval_fn: Optional[Callable[[], Mapping]] = None,
    writers: Optional[Sequence[EventWriter]] = None,
    bad_images=None,
    precise_bn_data_fn: Optional[Callable[[], Iterable]] = None,
) -> List[HookBase]:
    """LR schedule, unreadable-file sync, PreciseBN, periodic checkpoint, the stop agreement
    (SIGTERM), evaluation, writers, skipped-file record and the curve plot, in that order.

    PreciseBN (``TEST.PRECISE_BN.ENABLED``) runs before each evaluation on the batches of
    ``precise_bn_data_fn()`` (a fresh training loader); it needs that function.

    Writers, the record and the plot exist on the main process only; ``writers=None`` gives
    the console, ``metrics.json`` and TensorBoard writers. ``bad_images`` (the run's
    :class:`detgn.data.BadImageTracker`) adds :class:`~detgn.engine.hooks.BadImageSync` and,
    on the main process, :class:`~detgn.engine.hooks.BadImageRecord`.
    """
    out = cfg.OUTPUT_DIR
    metrics = os.path.join(out, "metrics.json")
    hooks: List[HookBase] = [H.LRScheduler()]
    if bad_images is not None:
        hooks.append(H.BadImageSync(bad_images, period=BAD_IMAGE_SYNC_PERIOD))
    if cfg.TEST.PRECISE_BN.ENABLED:
        if precise_bn_data_fn is None:
            raise ValueError("TEST.PRECISE_BN.ENABLED needs training batches: pass precise_bn_data_fn to build_trainer")
        hooks.append(H.PreciseBN(precise_bn_data_fn, period=schedule.eval_period, num_iter=cfg.TEST.PRECISE_BN.NUM_ITER))
    hooks.append(H.PeriodicCheckpointer(checkpointer, period=schedule.checkpoint_period))
    hooks.append(StopAtRequest())  # SIGTERM anywhere: every rank stops after this step, which is saved
    if eval_fn is not None:
        hooks.append(H.EvalHook(eval_fn, period=schedule.eval_period))
    if comm.is_main_process():
        hooks.append(H.PeriodicWriter(H.default_writers(out) if writers is None else writers, period=cfg.LOG_PERIOD))
        if bad_images is not None:
            hooks.append(H.BadImageRecord(bad_images, metrics))
        hooks.append(H.CurvePlot(metrics, os.path.join(out, "training_curves.png"), title=out))
    return hooks


def build_trainer(
    cfg,
    model: nn.Module,
    *,
    data_loader_fn: Callable[[int], Iterable],
    eval_fn: Optional[Callable[[], Mapping]] = None,
    writers: Optional[Sequence[EventWriter]] = None,
    bad_images=None,
    precise_bn_data_fn: Optional[Callable[[], Iterable]] = None,
) -> Trainer:
    """A :class:`Trainer` for ``model`` (as :func:`detgn.modeling.build_model` made it: on
    ``MODEL.DEVICE``, channels-last with ``CPU.CHANNELS_LAST``) with the config's schedule.

    Resolves the schedule for this world size, builds the optimizer (param groups by
    kind), LR scheduler and checkpointer, wraps the model in DDP when there are several
    processes, registers the hooks, and logs the schedule and parameter-group tables.

    Args:
        cfg: the run's config.
        model: the unwrapped model.
        data_loader_fn: ``start_batch -> iterable of batches`` from that batch of the stream on
            (e.g. ``lambda s: build_detection_train_loader(cfg, start_batch=s)``); with
            ``SOLVER.GRAD_ACCUM_STEPS`` k, iteration i starts at batch i x k.
        eval_fn: returns evaluation results (nested dicts of numbers); None: no evaluation.
        writers: metric writers instead of the default three.
        bad_images: the run's :class:`detgn.data.BadImageTracker`, also given to the loader
            (``build_detection_train_loader(cfg, start_batch=s, bad_images=tracker)``): it is
            checkpointed as ``bad_images`` (so ``--resume`` restores it before the loader is
            built) and hooks exchange, count and report the skipped files.
        precise_bn_data_fn: ``() -> iterable of training batches`` for PreciseBN
            (``TEST.PRECISE_BN.ENABLED``), e.g. a new training loader; it must not share
            the training stream's position.

    Returns:
        the trainer; call ``trainer.resume_or_load(cfg.MODEL.WEIGHTS, resume=...)`` then ``trainer.train()``.
    """
    world_size = comm.get_world_size()
    schedule = resolve_schedule(cfg, world_size)
    optimizer = build_optimizer(cfg, model, schedule)
    scheduler = build_lr_scheduler(optimizer, schedule)
    checkpointer = Checkpointer(
        model,
        cfg.OUTPUT_DIR,
        optimizer=optimizer,
        scheduler=scheduler,
        max_to_keep=cfg.SOLVER.MAX_TO_KEEP,
        schedule=schedule,
        on_schedule_change=cfg.SOLVER.ON_SCHEDULE_CHANGE,
        extra={"seed": int(cfg.SEED)},
    )
    if comm.is_main_process() and cfg.VERBOSE_STARTUP:
        logger.info("Schedule (%d process(es) x %d images%s):\n%s", world_size, cfg.SOLVER.IMS_PER_GPU,
                    f" x {cfg.SOLVER.GRAD_ACCUM_STEPS} accumulated batches" if cfg.SOLVER.GRAD_ACCUM_STEPS > 1 else "",
                    format_schedule_table(reference_schedule(cfg), schedule))
        logger.info("Parameter groups:\n%s", format_param_groups(optimizer))
    bf16 = resolve_bf16(cfg.CPU.BF16, cfg.MODEL.DEVICE)
    log_bf16_choice(bf16, "training")
    trainer = Trainer(
        model=create_ddp_model(model, local_rank=comm.get_local_rank()),
        optimizer=optimizer,
        data_loader_fn=data_loader_fn,
        max_iter=schedule.max_iter,
        scheduler=scheduler,
        checkpointer=checkpointer,
        grad_clip=cfg.SOLVER.CLIP_GRADIENTS,
        amp=cfg.SOLVER.AMP.ENABLED,
        bf16=bf16.enabled,
        nan_hint=nan_hint(cfg, schedule, world_size),
        accumulate=cfg.SOLVER.GRAD_ACCUM_STEPS,
    )
    trainer.schedule = schedule
    if trainer.scaler is not None:
        # The loss scale is training state: resuming with a fresh one would differ.
        checkpointer.add_checkpointable("grad_scaler", trainer.scaler)
    if bad_images is not None:
        checkpointer.add_checkpointable("bad_images", bad_images)
    trainer.register_hooks(build_hooks(cfg, checkpointer=checkpointer, schedule=schedule, eval_fn=eval_fn,
                                       writers=writers, bad_images=bad_images,
                                       precise_bn_data_fn=precise_bn_data_fn))
    return trainer
