"""The training loop: a short step (data -> forward -> sum of losses -> backward -> step),
everything else (LR schedule, checkpoints, evaluation, metrics) in hooks.

The trainer never reads the config: :func:`detgn.engine.defaults.build_trainer`
turns the config into the arguments and hooks here.
"""
from __future__ import annotations

import contextlib
import logging
import math
import time
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import torch
from torch import nn

from detgn.layers.auxiliary import declared_aux_losses, declared_param_groups
from detgn.utils import comm, stop
from detgn.utils.errors import UserError, is_user_error
from detgn.utils.events import EventStorage
from detgn.utils.seed import set_rng_state

logger = logging.getLogger(__name__)

__all__ = ["HookBase", "Trainer", "NonFiniteLossError"]


class NonFiniteLossError(UserError, FloatingPointError):
    """A loss became NaN or Inf; the message names the iteration, the terms and the images."""


class HookBase:
    """Called around training. Each method does nothing unless a hook overrides it.

    ``self.trainer`` is set when the hook is registered; hooks read ``trainer.iter``
    (the iteration being run), ``trainer.max_iter``, ``trainer.storage`` and the
    model/optimizer/scheduler from it.
    """

    trainer: "Trainer"

    def before_train(self) -> None:
        """Once, before the first step (after the data iterator exists)."""

    def after_train(self) -> None:
        """Once, after the last step, also when training stopped with an error."""

    def before_step(self) -> None:
        """Before each step."""

    def after_step(self) -> None:
        """After each step; ``trainer.iter`` is the iteration just completed."""


class Trainer:
    """Runs ``max_iter`` SGD steps from ``start_iter`` with hooks around each.

    Args:
        model: returns a dict of scalar losses for a batch (``list[dict]``) in training mode.
            May be a DistributedDataParallel wrapper.
        optimizer: steps the parameters.
        data_loader_fn: ``data_loader_fn(start_batch)`` -> iterable of batches whose first
            element is batch ``start_batch`` of the stream (deterministic per position: exact
            resume rebuilds the loader at ``start_iter x accumulate``).
        max_iter: iterations (optimizer steps) of the whole run (a resumed run counts from 0, too).
        scheduler: LR scheduler, stepped by :class:`detgn.engine.hooks.LRScheduler`.
        checkpointer: :class:`detgn.checkpoint.Checkpointer` used by :meth:`resume_or_load`.
        grad_clip: clip the gradients' total norm to this (0: no clipping).
        amp: mixed precision (float16 autocast + GradScaler); only on CUDA, ignored with a
            notice on the CPU.
        bf16: run the forward under bfloat16 autocast on the CPU.
        accumulate: batches per optimizer step (``SOLVER.GRAD_ACCUM_STEPS``). Their gradients
            are summed, each loss divided by ``accumulate`` (a step on the mean over all the
            images), DDP syncs once per step, and the logged losses are the batches' means.
        nan_hint: appended to the non-finite-loss error (what to check in the config).

    Loss terms the model's layers declare as auxiliary (:class:`detgn.layers.auxiliary.AuxLoss`)
    are back-propagated like the others, and logged and counted in ``total_loss`` as declared;
    the parameters of a declared group flagged ``clip_separately`` are clipped on their own.
    """

    def __init__(
        self,
        *,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        data_loader_fn: Callable[[int], Iterable],
        max_iter: int,
        scheduler=None,
        checkpointer=None,
        grad_clip: float = 0.0,
        amp: bool = False,
        bf16: bool = False,
        nan_hint: str = "",
        accumulate: int = 1,
    ):
        self.model = model
        self.optimizer = optimizer
        self.data_loader_fn = data_loader_fn
        self.max_iter = int(max_iter)
        self.scheduler = scheduler
        self.checkpointer = checkpointer
        self.grad_clip = float(grad_clip)
        self.nan_hint = nan_hint
        self.accumulate = int(accumulate)
        if self.accumulate < 1:
            raise ValueError(f"accumulate must be >= 1, got {accumulate}")
        self.device_type = _device_type(model)
        self.aux_losses = declared_aux_losses(model)
        self._clip_apart = {pid: g.name for pid, g in declared_param_groups(model).items() if g.clip_separately}
        if amp and self.device_type != "cuda":
            logger.info("SOLVER.AMP.ENABLED is ignored: the model is on the %s, AMP needs CUDA", self.device_type)
            amp = False
        if bf16 and self.device_type != "cpu":
            logger.info("CPU.BF16 is ignored: the model is on %s (use SOLVER.AMP.ENABLED there)", self.device_type)
            bf16 = False
        self.amp, self.bf16 = amp, bf16
        self.scaler = torch.amp.GradScaler("cuda") if amp else None
        self._hooks: List[HookBase] = []
        self.start_iter = 0
        self.iter = 0
        self.finished = False
        self._rng_state = None
        self.storage = EventStorage(0)
        self.schedule = None  # the resolved Schedule, set by build_trainer (for hooks and tools)

    def register_hooks(self, hooks: Sequence[Optional[HookBase]]) -> None:
        """Add hooks (None entries are skipped); they run in the order given."""
        for h in hooks:
            if h is None:
                continue
            h.trainer = self
            self._hooks.append(h)

    @property
    def hooks(self) -> List[HookBase]:
        return list(self._hooks)

    def resume_or_load(self, weights: str = "", *, resume: bool, allow_pickle: bool = False) -> int:
        """Restore the newest good checkpoint (``resume``) or load ``weights``; returns the start iteration.

        ``allow_pickle`` (``MODEL.WEIGHTS_ALLOW_PICKLE``) lets a file that the safe readers refuse
        (``weights_only`` for ``.pth``, the restricted unpickler for Detectron ``.pkl``) be read
        with full unpickling (see :func:`detgn.checkpoint.load_weights`).
        """
        if self.checkpointer is None:
            raise RuntimeError("resume_or_load needs the Trainer to be given a checkpointer")
        state = self.checkpointer.resume_or_load(weights, resume=resume, allow_pickle=allow_pickle)
        self.start_iter = state.start_iter
        self._rng_state = state.rng_state
        return self.start_iter

    def train(self) -> None:
        """Run iterations ``start_iter .. max_iter - 1``.

        ``self.storage`` is the current event storage meanwhile
        (:func:`detgn.utils.events.get_event_storage`), so the model can record statistics.
        """
        self.storage = EventStorage(self.start_iter)
        self.iter = self.start_iter
        self.finished = False
        self.model.train()
        logger.info("Starting training at iteration %d of %d", self.start_iter, self.max_iter)
        self._data_iter = iter(self.data_loader_fn(self.start_iter * self.accumulate))
        with self.storage:
            self._train_loop()

    def _save_at_stop(self, e: stop.StopRequested) -> None:
        """Every rank, together: checkpoint the last completed step unless it is saved already."""
        done = self._steps_done
        ckpt = self.checkpointer
        if ckpt is not None and done > self.start_iter and ckpt.last_saved_iteration != done:
            name = "model_final" if done >= self.max_iter else f"model_{done - 1:07d}"
            ckpt.save(name, iteration=done)
            # No rank exits before rank 0 has written the file: a launcher that sees one worker
            # exit stops the others (torchrun: SIGTERM, a second one here forces the exit).
            comm.synchronize()
        logger.warning("Training stopped (%s) with %d of %d iterations done, all saved%s; the next start with "
                       "--resume (or a torchrun restart) continues from there", e, done, self.max_iter,
                       "" if ckpt is not None else " (no checkpointer: nothing saved)")

    def _train_loop(self) -> None:
        self._steps_done = self.start_iter
        try:
            for h in self._hooks:
                h.before_train()
            if self._rng_state is not None:
                # Last, right before the step: whatever building the loader or the hooks
                # drew from the global RNGs, the next step sees the checkpointed state.
                set_rng_state(self._rng_state)
                self._rng_state = None
            for self.iter in range(self.start_iter, self.max_iter):
                self.storage.iter = self.iter
                for h in self._hooks:
                    h.before_step()
                self.run_step()
                self._steps_done = self.iter + 1
                for h in self._hooks:
                    h.after_step()
            self.finished = True
        except stop.StopRequested as e:
            self._save_at_stop(e)
            raise
        except Exception as e:
            if is_user_error(e):  # the message says it all (bad data, diverging loss, ...)
                logger.error("Training stopped at iteration %d: %s", self.iter, e)
            else:
                logger.exception("Training stopped by an error at iteration %d", self.iter)
            stop.abandon()  # a SIGTERM from now on (torchrun tearing down the group) exits at once
            raise
        finally:
            for h in self._hooks:
                h.after_train()

    def _autocast(self):
        if self.amp:
            return torch.autocast("cuda", dtype=torch.float16)
        if self.bf16:
            return torch.autocast("cpu", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def run_step(self) -> None:
        """One iteration: ``accumulate`` x (next batch, forward, sum of the loss dict, backward),
        then one optimizer step."""
        start = time.perf_counter()
        data_time = 0.0
        k = self.accumulate
        # Per batch: its detached losses and image ids (for the non-finite error), no sync.
        seen: List[Tuple[Dict[str, torch.Tensor], list]] = []
        self.optimizer.zero_grad(set_to_none=True)
        for j in range(k):
            fetch = time.perf_counter()
            batch = self._next_batch()
            data_time += time.perf_counter() - fetch
            # DDP all-reduces the gradients at the last batch's backward only.
            last = j == k - 1
            sync = comm.collective(f"the gradient all_reduce (DDP, in backward) of iteration {self.iter}") if last \
                else self.model.no_sync() if hasattr(self.model, "no_sync") else contextlib.nullcontext()
            with sync:
                with self._autocast():
                    loss_dict = self.model(batch)
                if not isinstance(loss_dict, dict) or not loss_dict:
                    raise TypeError(
                        f"In training the model must return a non-empty dict of losses, got {type(loss_dict).__name__}"
                    )
                seen.append(({n: v.detach().float() for n, v in loss_dict.items()}, _image_ids(batch)))
                losses = sum(v.float() for v in loss_dict.values())
                if k > 1:
                    losses = losses / k
                (self.scaler.scale(losses) if self.scaler is not None else losses).backward()
        local = seen[0][0] if k == 1 else {n: sum(d[n] for d, _ in seen) / k for n in seen[0][0]}
        # Averaged over ranks for logging (one collective per step); a NaN on any rank shows on
        # all, so all stop together, before the step is taken.
        with comm.collective(f"iteration {self.iter}"):
            logged = {n: float(v) for n, v in comm.reduce_dict_mean(local).items()}
        if not math.isfinite(sum(logged.values())):
            raise self._non_finite_error(seen)
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
            self._clip()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self._clip()
            self.optimizer.step()
        aux = self.aux_losses
        total = sum(v for n, v in logged.items() if n not in aux or aux[n].in_total)
        self.storage.put_scalars(**{n: v for n, v in logged.items() if n not in aux or aux[n].log}, total_loss=total)
        self.storage.put_scalars(time=time.perf_counter() - start, data_time=data_time)

    def _next_batch(self):
        try:
            return next(self._data_iter)
        except StopIteration:
            raise RuntimeError(
                f"The training data loader ran out at iteration {self.iter}; it must yield batches "
                "forever (an infinite sampler), the trainer stops at max_iter"
            ) from None

    def _clip(self) -> None:
        if self.grad_clip <= 0:
            return
        # A declared group flagged clip_separately (a layer's own parameters, e.g. fitted beside
        # the model) is clipped on its own: its gradients must not change the model's clipping factor.
        parts: Dict[Optional[str], List[torch.Tensor]] = {None: []}
        for g in self.optimizer.param_groups:
            for p in g["params"]:
                if p.grad is not None:
                    parts.setdefault(self._clip_apart.get(id(p)), []).append(p)
        for params in parts.values():
            if params:
                torch.nn.utils.clip_grad_norm_(params, self.grad_clip)

    def _non_finite_error(self, seen: List[Tuple[Dict[str, torch.Tensor], list]]) -> NonFiniteLossError:
        """``seen``: this step's batches as (losses, image ids); the first non-finite one is shown
        (collective: every rank calls it)."""
        per_batch = [{n: float(v) for n, v in d.items()} for d, _ in seen]
        pick = next((i for i, t in enumerate(per_batch) if not all(map(math.isfinite, t.values()))), 0)
        local, ids = per_batch[pick], seen[pick][1]
        per_rank = comm.all_gather((comm.get_rank(), local, ids))
        lines = [f"Loss is not finite at iteration {self.iter}:"]
        for rank, terms, image_ids in per_rank:
            bad = [k for k, v in terms.items() if not math.isfinite(v)]
            if not bad and len(per_rank) > 1:
                continue
            shown = ", ".join(f"{k}={v:.4g}" + (" <--" if k in bad else "") for k, v in sorted(terms.items()))
            where = f" rank {rank}" if len(per_rank) > 1 else ""
            lines.append(f"  {where.strip() + ': ' if where else ''}terms: {shown}")
            lines.append(f"  {where.strip() + ': ' if where else ''}non-finite: {', '.join(bad)}; image ids of the batch: {image_ids}")
        lr = max(g["lr"] for g in self.optimizer.param_groups)
        lines.append(f"  current LR: {lr:.6g}")
        if self.nan_hint:
            lines.append(self.nan_hint)
        return NonFiniteLossError("\n".join(lines))


def _image_ids(batch) -> list:
    return [d.get("image_id", d.get("file_name", "?")) if isinstance(d, dict) else "?" for d in batch]


def _device_type(model: nn.Module) -> str:
    for p in model.parameters():
        return p.device.type
    return "cpu"
