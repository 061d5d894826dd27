"""The training schedule: linear scaling to the real batch, warmup and multi-step decay.

Configs write the schedule for ``SOLVER.REFERENCE_IMS_PER_BATCH`` (16) images per
iteration, as the papers publish it. The run has ``b = world_size x IMS_PER_GPU x
GRAD_ACCUM_STEPS`` images per iteration (optimizer step), so (Goyal et al.'s linear scaling rule) the LR is scaled by
``b / 16`` and every iteration count (max_iter, steps, warmup, checkpoint and eval
periods) by ``16 / b``: the same number of images is seen at every LR. One image
per iteration turns the "2x" schedule (0.02, 180k) into (0.00125, 2.88M).
"""
from __future__ import annotations

import bisect
import dataclasses
from dataclasses import dataclass
from typing import Dict, List, Sequence, Tuple

import torch
from torch.optim.lr_scheduler import LRScheduler

__all__ = [
    "Schedule",
    "reference_schedule",
    "resolve_schedule",
    "format_schedule_table",
    "schedule_changes",
    "WarmupMultiStepLR",
    "build_lr_scheduler",
]


@dataclass(frozen=True)
class Schedule:
    """A resolved schedule, in the run's own iterations (one iteration = ``ims_per_batch`` images)."""

    ims_per_batch: int
    base_lr: float
    max_iter: int
    steps: Tuple[int, ...]
    warmup_iters: int
    warmup_factor: float
    gamma: float
    checkpoint_period: int
    eval_period: int

    def as_dict(self) -> Dict[str, object]:
        """Plain types only (stored in checkpoints loaded with ``weights_only=True``)."""
        d = dataclasses.asdict(self)
        d["steps"] = list(self.steps)
        return d

    @classmethod
    def from_dict(cls, d: Dict[str, object]) -> "Schedule":
        fields = {f.name for f in dataclasses.fields(cls)}
        missing = fields - set(d)
        if missing:
            raise ValueError(f"schedule record lacks {sorted(missing)}: {d}")
        kw = {k: d[k] for k in fields}
        kw["steps"] = tuple(int(s) for s in kw["steps"])
        return cls(**kw)

    def lr_factor(self, iteration: int) -> float:
        """LR multiplier at ``iteration``: linear warmup from ``warmup_factor``, then ``gamma`` per step."""
        return _lr_factor(iteration, self.steps, self.gamma, self.warmup_iters, self.warmup_factor)


def _lr_factor(it: int, steps: Sequence[int], gamma: float, warmup_iters: int, warmup_factor: float) -> float:
    factor = gamma ** bisect.bisect_right(list(steps), it)
    if it < warmup_iters:
        alpha = it / warmup_iters
        factor *= warmup_factor * (1 - alpha) + alpha
    return factor


def reference_schedule(cfg) -> Schedule:
    """The schedule as written in the config, for ``SOLVER.REFERENCE_IMS_PER_BATCH`` images."""
    s = cfg.SOLVER
    return Schedule(
        ims_per_batch=int(s.REFERENCE_IMS_PER_BATCH),
        base_lr=float(s.BASE_LR),
        max_iter=int(s.MAX_ITER),
        steps=tuple(int(x) for x in s.STEPS),
        warmup_iters=int(s.WARMUP_ITERS),
        warmup_factor=float(s.WARMUP_FACTOR),
        gamma=float(s.GAMMA),
        checkpoint_period=int(s.CHECKPOINT_PERIOD),
        eval_period=int(cfg.TEST.EVAL_PERIOD),
    )


def _check_reference(ref: Schedule) -> None:
    from detgn.config import ConfigError

    if ref.ims_per_batch < 1:
        raise ConfigError(f"SOLVER.REFERENCE_IMS_PER_BATCH must be >= 1, got {ref.ims_per_batch}")
    if ref.base_lr <= 0:
        raise ConfigError(f"SOLVER.BASE_LR must be > 0, got {ref.base_lr}")
    if ref.max_iter < 1:
        raise ConfigError(f"SOLVER.MAX_ITER must be >= 1, got {ref.max_iter}")
    if list(ref.steps) != sorted(ref.steps) or any(s <= 0 for s in ref.steps):
        raise ConfigError(f"SOLVER.STEPS must be positive and increasing, got {list(ref.steps)}")
    if ref.warmup_iters < 0 or not 0 < ref.warmup_factor <= 1:
        raise ConfigError(
            f"SOLVER.WARMUP_ITERS must be >= 0 and SOLVER.WARMUP_FACTOR in (0, 1], "
            f"got {ref.warmup_iters} and {ref.warmup_factor}"
        )
    if ref.checkpoint_period < 0 or ref.eval_period < 0:
        raise ConfigError(
            f"SOLVER.CHECKPOINT_PERIOD and TEST.EVAL_PERIOD must be >= 0, "
            f"got {ref.checkpoint_period} and {ref.eval_period}"
        )


def resolve_schedule(cfg, world_size: int) -> Schedule:
    """The schedule this run follows with ``world_size`` processes of ``SOLVER.IMS_PER_GPU`` images
    (times ``SOLVER.GRAD_ACCUM_STEPS`` batches per step).

    With ``SOLVER.SCALE_SCHEDULE`` (default) the LR scales by ``b / REFERENCE_IMS_PER_BATCH``
    and iteration counts by the inverse (rounded; a positive count stays >= 1, 0 stays 0);
    otherwise the config's numbers are used as written.
    """
    ref = reference_schedule(cfg)
    _check_reference(ref)
    b = int(world_size) * int(cfg.SOLVER.IMS_PER_GPU) * int(cfg.SOLVER.GRAD_ACCUM_STEPS)
    if not cfg.SOLVER.SCALE_SCHEDULE:
        return dataclasses.replace(ref, ims_per_batch=b)
    k = ref.ims_per_batch / b

    def iters(n: int) -> int:
        return 0 if n == 0 else max(1, int(round(n * k)))

    return Schedule(
        ims_per_batch=b,
        base_lr=ref.base_lr * b / ref.ims_per_batch,
        max_iter=iters(ref.max_iter),
        steps=tuple(iters(s) for s in ref.steps),
        warmup_iters=iters(ref.warmup_iters),
        warmup_factor=ref.warmup_factor,
        gamma=ref.gamma,
        checkpoint_period=iters(ref.checkpoint_period),
        eval_period=iters(ref.eval_period),
    )


def format_schedule_table(reference: Schedule, actual: Schedule) -> str:
    """A table of the schedule as written (reference batch) and as run (actual batch)."""
    rows: List[Tuple[str, str, str]] = [("", "reference", "actual")]
    for f in dataclasses.fields(Schedule):
        a, b = getattr(reference, f.name), getattr(actual, f.name)
        fmt = (lambda v: f"{v:.6g}") if isinstance(a, float) else (lambda v: ", ".join(map(str, v)) if isinstance(v, tuple) else str(v))
        rows.append((f.name, fmt(a), fmt(b)))
    w = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = ["  ".join(c.ljust(w[i]) for i, c in enumerate(r)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * x for x in w))
    if reference.ims_per_batch != actual.ims_per_batch:
        if actual.base_lr != reference.base_lr:
            note = (
                f"linear scaling: LR x {actual.ims_per_batch}/{reference.ims_per_batch}, "
                f"iterations x {reference.ims_per_batch}/{actual.ims_per_batch}"
            )
        else:
            note = "SOLVER.SCALE_SCHEDULE is False: the numbers are used as written"
        lines.append(note)
    return "\n".join(lines)


def schedule_changes(old: Schedule, new: Schedule) -> List[str]:
    """``["max_iter: 100 -> 200", ...]`` for every field that differs."""
    out = []
    for f in dataclasses.fields(Schedule):
        a, b = getattr(old, f.name), getattr(new, f.name)
        if a != b:
            out.append(f"{f.name}: {a} -> {b}")
    return out


class WarmupMultiStepLR(LRScheduler):
    """Linear warmup from ``warmup_factor`` over ``warmup_iters``, then x ``gamma`` at each milestone.

    Stepped once per iteration, after ``optimizer.step()``: the LR used at iteration
    ``i`` is ``base_lr * factor(i)``. Computed in closed form from ``last_epoch``, so
    restoring ``last_epoch`` (the checkpointed state) restores the LR exactly.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        *,
        milestones: Sequence[int],
        gamma: float = 0.1,
        warmup_iters: int = 0,
        warmup_factor: float = 1.0,
        last_epoch: int = -1,
    ):
        if list(milestones) != sorted(milestones):
            raise ValueError(f"milestones must be increasing, got {list(milestones)}")
        self.milestones = [int(m) for m in milestones]
        self.gamma = float(gamma)
        self.warmup_iters = int(warmup_iters)
        self.warmup_factor = float(warmup_factor)
        super().__init__(optimizer, last_epoch)

    def factor(self, iteration: int) -> float:
        return _lr_factor(iteration, self.milestones, self.gamma, self.warmup_iters, self.warmup_factor)

    def get_lr(self) -> List[float]:
        f = self.factor(max(self.last_epoch, 0))
        return [base * f for base in self.base_lrs]

    def _get_closed_form_lr(self) -> List[float]:
        return self.get_lr()


def build_lr_scheduler(optimizer: torch.optim.Optimizer, schedule: Schedule) -> WarmupMultiStepLR:
    """The scheduler of ``schedule``; steps past ``max_iter`` are harmless (never reached)."""
    return WarmupMultiStepLR(
        optimizer,
        milestones=schedule.steps,
        gamma=schedule.gamma,
        warmup_iters=schedule.warmup_iters,
        warmup_factor=schedule.warmup_factor,
    )
