"""Training checkpoints: atomic saves, keep-last-K, exact resume, corrupt-file detection.

A checkpoint (``model_0004999.pth`` = state after 5000 iterations, or
``model_final.pth``) holds the model, optimizer and LR scheduler states, the
number of completed iterations, every process's RNG states (python ``random``,
numpy, torch CPU/CUDA), the resolved schedule and a format version. It is made
of tensors and plain Python values only, so it loads with
``torch.load(weights_only=True)``.

Writes are atomic (:func:`detgn.utils.file_io.atomic_write`): a process killed
mid-save, even with ``kill -9``, leaves the previous checkpoints intact. The
``last_checkpoint`` file names the newest one. File names, integrity checks and
loading are in :mod:`detgn.checkpoint.files`; pre-trained weights are loaded by
:mod:`detgn.checkpoint.weights`.

Resuming (``--resume``) takes the newest good checkpoint in the output folder and
restores everything; the trainer rebuilds the data loader at that iteration and
restores the RNG states just before the next step, so the run continues exactly.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any, Dict, List, Optional

import torch
from torch import nn

from detgn.solver.schedule import Schedule, schedule_changes
from detgn.utils import comm
from detgn.utils.file_io import atomic_write
from detgn.utils.seed import get_rng_state

from .files import (
    PERIODIC_NAME,
    POINTER_FILE,
    TEMP_FILE,
    CheckpointError,
    latest_good_checkpoint,
    list_checkpoints,
    load_checkpoint_file,
    pointed_checkpoint,
    unwrap_model,
)
from .weights import load_weights

logger = logging.getLogger(__name__)

__all__ = ["FORMAT_VERSION", "ResumeState", "Checkpointer"]

# Bumped when the layout of the saved dict changes; older files stay loadable.
FORMAT_VERSION = 1
_BOOKKEEPING = ("checkpoint_period:", "eval_period:")


@dataclass
class ResumeState:
    """What a resume restored: where to start, and the RNG state to set before that step."""

    start_iter: int
    path: Optional[str] = None
    rng_state: Optional[Dict[str, Any]] = None


# ---------------------------------------------------------------------------- #
# Checkpointer
# ---------------------------------------------------------------------------- #
class Checkpointer:
    """Saves and resumes the training state of one run in ``save_dir``.

    Args:
        model: the model (a DDP wrapper is unwrapped).
        save_dir: the run's output folder.
        optimizer, scheduler: saved and restored with the model when given.
        max_to_keep: periodic checkpoints kept (older ones are deleted; ``model_final``
            is always kept); 0 keeps all.
        schedule: the resolved schedule of this run (stored; compared on resume).
        on_schedule_change: ``"apply"`` (use this run's schedule, saying what changed) or
            ``"refuse"`` (stop) when the checkpoint's schedule differs.
        save_to_disk: whether this process writes files (default: rank 0 only).
        extra: more plain values stored in every checkpoint (e.g. the seed).
    """

    def __init__(
        self,
        model: nn.Module,
        save_dir: str,
        *,
        optimizer: Optional[torch.optim.Optimizer] = None,
        scheduler=None,
        max_to_keep: int = 3,
        schedule: Optional[Schedule] = None,
        on_schedule_change: str = "apply",
        save_to_disk: Optional[bool] = None,
        extra: Optional[Dict[str, Any]] = None,
    ):
        if on_schedule_change not in ("apply", "refuse"):
            raise ValueError(f"on_schedule_change must be 'apply' or 'refuse', got {on_schedule_change!r}")
        self.model = unwrap_model(model)
        self.save_dir = save_dir
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.max_to_keep = max_to_keep
        self.schedule = schedule
        self.on_schedule_change = on_schedule_change
        self.save_to_disk = comm.is_main_process() if save_to_disk is None else save_to_disk
        self.extra = dict(extra or {})
        self._stateful: Dict[str, Any] = {}
        self.last_saved_iteration: Optional[int] = None  # on every process: the iteration of its last save()
        if self.save_to_disk:
            os.makedirs(save_dir, exist_ok=True)

    def add_checkpointable(self, name: str, obj) -> None:
        """Also save and restore ``obj.state_dict()`` under ``name`` (e.g. the AMP GradScaler).

        ``state_dict()`` is called on the saving process (rank 0) only. An object whose state
        is spread over the processes may define ``sync_state()``: :meth:`save` calls it on
        every process first (in registration order), so it can gather what rank 0 must
        write with collectives (e.g. each rank's data loader position, see
        :class:`detgn.data.BadImageTracker`).
        """
        if name in ("model", "optimizer", "scheduler", "iteration", "rng_states", "schedule"):
            raise ValueError(f"{name!r} is a reserved checkpoint key")
        self._stateful[name] = obj

    # -- saving -------------------------------------------------------------
    def save(self, name: str, *, iteration: int) -> Optional[str]:
        """Write ``save_dir/name.pth`` holding the state after ``iteration`` completed iterations.

        Every process must call it (the RNG states of all ranks are gathered);
        only ``save_to_disk`` processes write. Returns the path (None elsewhere).
        """
        for obj in self._stateful.values():
            sync = getattr(obj, "sync_state", None)
            if callable(sync):
                sync()  # a collective: every process is here
        rng_states = comm.all_gather(get_rng_state())
        self.last_saved_iteration = int(iteration)
        if not self.save_to_disk:
            return None
        import detgn

        data: Dict[str, Any] = {
            "format_version": FORMAT_VERSION,
            "detgn_version": detgn.__version__,
            "model": self.model.state_dict(),
            "iteration": int(iteration),
            "rng_states": rng_states,
            "world_size": comm.get_world_size(),
        }
        if self.optimizer is not None:
            data["optimizer"] = self.optimizer.state_dict()
        if self.scheduler is not None:
            data["scheduler"] = self.scheduler.state_dict()
        if self.schedule is not None:
            data["schedule"] = self.schedule.as_dict()
        for key, obj in self._stateful.items():  # not `name`: that is the file's name
            data[key] = obj.state_dict()
        data.update(self.extra)
        path = os.path.join(self.save_dir, name if name.endswith(".pth") else name + ".pth")
        atomic_write(path, lambda f: torch.save(data, f))
        self._write_pointer(os.path.basename(path))
        logger.info("Saved checkpoint %s (iteration %d)", path, iteration)
        if PERIODIC_NAME.match(os.path.basename(path)):
            self._prune()
        return path

    def _write_pointer(self, basename: str) -> None:
        atomic_write(os.path.join(self.save_dir, POINTER_FILE), lambda f: f.write(basename.encode() + b"\n"))

    def _prune(self) -> None:
        if self.max_to_keep <= 0:
            return
        periodic = [c for c in list_checkpoints(self.save_dir) if PERIODIC_NAME.match(os.path.basename(c))]
        for old in periodic[self.max_to_keep :]:
            try:
                os.remove(old)
                logger.info("Removed old checkpoint %s (keeping the last %d)", old, self.max_to_keep)
            except FileNotFoundError:
                pass

    def remove_stale_temp_files(self) -> List[str]:
        """Delete temp files left by a save that was killed (rank 0 only); returns them."""
        if not self.save_to_disk or not os.path.isdir(self.save_dir):
            return []
        removed = []
        for f in os.listdir(self.save_dir):
            if TEMP_FILE.match(f):
                os.remove(os.path.join(self.save_dir, f))
                removed.append(f)
        if removed:
            logger.info("Removed %d temp file(s) of an interrupted save: %s", len(removed), ", ".join(removed))
        return removed

    # -- finding ------------------------------------------------------------
    def pointed_checkpoint(self) -> Optional[str]:
        """The file named by ``last_checkpoint``, if the pointer exists."""
        return pointed_checkpoint(self.save_dir)

    def latest_good_checkpoint(self) -> Optional[str]:
        """The newest intact checkpoint of ``save_dir`` (see :func:`.files.latest_good_checkpoint`)."""
        return latest_good_checkpoint(self.save_dir)

    # -- loading ------------------------------------------------------------
    def resume_or_load(self, weights: str = "", *, resume: bool, allow_pickle: bool = False) -> ResumeState:
        """With ``resume``, restore the newest good checkpoint of ``save_dir`` if there is one;
        otherwise load ``weights`` (model only: pre-trained weights never restore iteration
        or optimizer state) and start at iteration 0. ``allow_pickle`` is passed to
        :func:`detgn.checkpoint.weights.load_weights` (``MODEL.WEIGHTS_ALLOW_PICKLE``)."""
        if resume:
            self.remove_stale_temp_files()
            path = self.latest_good_checkpoint()
            if path is not None:
                return self.resume(path)
            logger.info("--resume: no checkpoint in %s; starting a new run", self.save_dir)
        if weights:
            load_weights(self.model, weights, allow_pickle=allow_pickle)
        else:
            logger.info("No MODEL.WEIGHTS given: training from the random initialisation")
        return ResumeState(start_iter=0)

    def resume(self, path: str) -> ResumeState:
        """Restore model, optimizer, scheduler from a training checkpoint; see :class:`ResumeState`."""
        ckpt = load_checkpoint_file(path)
        if not isinstance(ckpt, dict) or "model" not in ckpt or "iteration" not in ckpt:
            raise CheckpointError(
                f"{path} is not a detgn training checkpoint (no 'model'/'iteration'); "
                "to start from its weights use MODEL.WEIGHTS without --resume"
            )
        version = ckpt.get("format_version", 0)
        if version > FORMAT_VERSION:
            raise CheckpointError(
                f"{path} has checkpoint format {version}, newer than this detgn ({FORMAT_VERSION}); update detgn"
            )
        result = self.model.load_state_dict(ckpt["model"], strict=False)
        if result.missing_keys or result.unexpected_keys:
            raise CheckpointError(
                f"{path} does not match the model: missing {result.missing_keys[:10]}, "
                f"unexpected {result.unexpected_keys[:10]}. Was the config changed since it was saved? "
                "Resume with the run's OUTPUT_DIR/config.yaml, or start a new OUTPUT_DIR."
            )
        iteration = int(ckpt["iteration"])
        start_iter, apply_schedule = self._check_schedule(path, ckpt, iteration)
        self._restore_optimizer(path, ckpt, start_iter, apply_schedule)
        for name, obj in self._stateful.items():
            if name in ckpt:
                obj.load_state_dict(ckpt[name])
            else:
                logger.warning("%s has no %r state; %s starts fresh", path, name, name)
        rng = self._rng_for_this_rank(ckpt)
        logger.info("Resuming from %s: %d iterations done, continuing at iteration %d", path, iteration, start_iter)
        return ResumeState(start_iter=start_iter, path=path, rng_state=rng)

    def _check_schedule(self, path: str, ckpt: Dict, iteration: int):
        """Compare the stored schedule with this run's; returns (start_iter, apply_new_schedule)."""
        if self.schedule is None or ckpt.get("schedule") is None:
            return iteration, False
        old = Schedule.from_dict(ckpt["schedule"])
        changes = schedule_changes(old, self.schedule)
        if not changes:
            return iteration, False
        listing = "\n  ".join(changes)
        # Checkpoint and eval periods do not change the weights: never a reason to refuse.
        if self.on_schedule_change == "refuse" and any(not c.startswith(_BOOKKEEPING) for c in changes):
            raise CheckpointError(
                f"The schedule changed since {path} was saved:\n  {listing}\n"
                "SOLVER.ON_SCHEDULE_CHANGE is 'refuse'. Resume with the original settings "
                "(config, --num-gpus, SOLVER.IMS_PER_GPU), or set SOLVER.ON_SCHEDULE_CHANGE apply."
            )
        start = iteration
        if old.ims_per_batch != self.schedule.ims_per_batch:
            # Same images seen so far, counted in this run's (different) batch size.
            start = int(round(iteration * old.ims_per_batch / self.schedule.ims_per_batch))
        logger.warning(
            "The schedule changed since %s was saved; applying the new one:\n  %s%s",
            path,
            listing,
            f"\n  iteration {iteration} at {old.ims_per_batch} images/iter -> {start} at "
            f"{self.schedule.ims_per_batch} images/iter" if start != iteration else "",
        )
        return start, True

    def _restore_optimizer(self, path: str, ckpt: Dict, start_iter: int, apply_schedule: bool) -> None:
        if self.optimizer is not None:
            if "optimizer" not in ckpt:
                raise CheckpointError(f"{path} has no optimizer state; start from it with MODEL.WEIGHTS instead")
            fresh_initial = [g.get("initial_lr", g["lr"]) for g in self.optimizer.param_groups]
            try:
                self.optimizer.load_state_dict(ckpt["optimizer"])
            except (ValueError, KeyError) as e:
                raise CheckpointError(
                    f"The optimizer state in {path} does not fit this model's parameter groups ({e}); "
                    "was freezing (MODEL.BACKBONE.FREEZE_AT) or a norm changed since it was saved?"
                ) from None
            if apply_schedule:
                for g, lr in zip(self.optimizer.param_groups, fresh_initial):
                    g["initial_lr"] = lr
        if self.scheduler is not None:
            fresh = self.scheduler.state_dict()
            if "scheduler" in ckpt:
                self.scheduler.load_state_dict(ckpt["scheduler"])
            if apply_schedule or "scheduler" not in ckpt:
                # Keep this run's schedule (milestones, base LRs, warmup); only progress is restored.
                self.scheduler.load_state_dict(fresh)
                self.scheduler.last_epoch = start_iter
                closed = getattr(self.scheduler, "_get_closed_form_lr", self.scheduler.get_lr)
                lrs = list(closed())
                if self.optimizer is not None:
                    for g, lr in zip(self.optimizer.param_groups, lrs):
                        g["lr"] = lr
                self.scheduler._last_lr = lrs

    def _rng_for_this_rank(self, ckpt: Dict) -> Optional[Dict[str, Any]]:
        states = ckpt.get("rng_states")
        if not states:
            logger.warning("The checkpoint has no RNG states; the resumed run will not repeat the original exactly")
            return None
        rank, world = comm.get_rank(), comm.get_world_size()
        if len(states) != world:
            logger.warning(
                "The checkpoint was saved by %d process(es), this run has %d: RNG states are not restored "
                "(the run continues, but not bit-exactly)",
                len(states),
                world,
            )
            return None
        return states[rank]
