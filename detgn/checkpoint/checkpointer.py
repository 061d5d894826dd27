"""Training checkpoints: atomic saves, keep-last-K, exact resume, corrupt-file detection.

A checkpoint (``model_0004999.pth`` = state after 5000 iterations, or
``model_final.pth``) holds the model, optimizer and LR scheduler states, the
number of completed iterations, every process's RNG states (python ``random``,
numpy, torch CPU/CUDA), the resolved schedule and a format version. It is made
of tensors and plain Python values only, so it loads with
``torch.load(weights_only=True)``.

Writes are atomic (temp file in the same folder, flush, fsync, ``os.replace``,
fsync of the folder): a process killed mid-save, even with ``kill -9``, leaves
the previous checkpoints intact. The ``last_checkpoint`` file names the newest one.
Before loading, the zip container's CRC32 of every member is checked, so a
truncated or bit-flipped file is reported (naming the previous good checkpoint)
instead of silently loading garbage.

Resuming (``--resume``) takes the newest good checkpoint in the output folder and
restores everything; the trainer rebuilds the data loader at that iteration and
restores the RNG states just before the next step, so the run continues exactly.
"""
from __future__ import annotations

import logging
import os
import pickle
import re
import tempfile
import zipfile
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional

import torch
from torch import nn

from detgn.solver.schedule import Schedule, schedule_changes
from detgn.utils import comm
from detgn.utils.errors import UserError
from detgn.utils.seed import get_rng_state

logger = logging.getLogger(__name__)

__all__ = [
    "FORMAT_VERSION",
    "CheckpointError",
    "ResumeState",
    "Checkpointer",
    "atomic_write",
    "verify_checkpoint",
    "list_checkpoints",
    "find_good_checkpoint",
    "load_checkpoint_file",
    "unwrap_model",
]

# Bumped when the layout of the saved dict changes; older files stay loadable.
FORMAT_VERSION = 1
POINTER_FILE = "last_checkpoint"
FINAL_NAME = "model_final.pth"
_PERIODIC = re.compile(r"^model_(\d{7})\.pth$")
_BOOKKEEPING = ("checkpoint_period:", "eval_period:")
_TEMP = re.compile(r"^\.(model_\d{7}|model_final|last_checkpoint)(\.pth)?\..*\.tmp$")


class CheckpointError(UserError, RuntimeError):
    """A checkpoint that cannot be used as asked (corrupt, incompatible, schedule refused)."""


@dataclass
class ResumeState:
    """What a resume restored: where to start, and the RNG state to set before that step."""

    start_iter: int
    path: Optional[str] = None
    rng_state: Optional[Dict[str, Any]] = None


# ---------------------------------------------------------------------------- #
# Files
# ---------------------------------------------------------------------------- #
def _fsync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return  # not every platform lets a folder be opened; the data is fsynced anyway
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: str, write_fn: Callable[[Any], None]) -> None:
    """Write ``path`` so that it is either the old file or the complete new one, never a mix.

    ``write_fn(binary_file)`` writes the content into a temp file in the same folder,
    which is flushed, fsynced and renamed over ``path``; the folder is fsynced so the
    rename survives a power loss. On any failure the temp file is removed.
    """
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            write_fn(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    _fsync_dir(folder)


def verify_checkpoint(path: str) -> Optional[str]:
    """None when ``path`` is an intact file, else why not (missing, truncated, CRC mismatch).

    torch's zip format stores a CRC32 per member; checking them reads the file once
    and catches truncation and flipped bytes that ``torch.load`` would not notice.
    Files in torch's legacy (non-zip) format cannot be checked this way and pass.
    """
    if not os.path.isfile(path):
        return "file does not exist"
    if os.path.getsize(path) == 0:
        return "file is empty (0 bytes)"
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != b"PK\x03\x04":
        return None if magic[:1] == b"\x80" else "not a torch zip checkpoint (bad header; truncated or overwritten?)"
    try:
        with zipfile.ZipFile(path) as z:
            bad = z.testzip()
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        return f"truncated or damaged zip container ({e})"
    except Exception as e:  # zlib.error and friends: still a damaged file
        return f"damaged zip container ({type(e).__name__}: {e})"
    if bad is not None:
        return f"CRC mismatch in member {bad!r} (bytes changed after saving)"
    return None


def _iteration_of_name(path: str) -> Optional[int]:
    m = _PERIODIC.match(os.path.basename(path))
    return int(m.group(1)) if m else None


def list_checkpoints(save_dir: str) -> List[str]:
    """Checkpoints in ``save_dir``, newest first: ``model_final.pth``, then periodic ones by iteration."""
    if not os.path.isdir(save_dir):
        return []
    periodic = sorted(
        (f for f in os.listdir(save_dir) if _PERIODIC.match(f)), key=lambda f: _iteration_of_name(f), reverse=True
    )
    out = [os.path.join(save_dir, FINAL_NAME)] if os.path.isfile(os.path.join(save_dir, FINAL_NAME)) else []
    return out + [os.path.join(save_dir, f) for f in periodic]


def _older_candidates(path: str) -> List[str]:
    """Checkpoints in ``path``'s folder that were written before it (by name), newest first."""
    folder = os.path.dirname(os.path.abspath(path))
    it = _iteration_of_name(path)
    out = []
    for c in list_checkpoints(folder):
        if os.path.abspath(c) == os.path.abspath(path):
            continue
        ci = _iteration_of_name(c)
        if it is None or (ci is not None and ci < it):
            out.append(c)
    return out


def find_good_checkpoint(candidates: List[str]) -> Optional[str]:
    """The first of ``candidates`` that passes :func:`verify_checkpoint`."""
    for c in candidates:
        if verify_checkpoint(c) is None:
            return c
    return None


def _corrupt_error(path: str, reason: str) -> CheckpointError:
    prev = find_good_checkpoint(_older_candidates(path))
    if prev:
        todo = (
            f"The previous good checkpoint is {prev}: load it with MODEL.WEIGHTS {prev}, or move "
            f"{os.path.basename(path)} away and --resume (it takes the newest good checkpoint)."
        )
    else:
        todo = f"No other good checkpoint is in {os.path.dirname(os.path.abspath(path))}; re-create or re-download it."
    return CheckpointError(f"Checkpoint {path} is truncated or corrupt: {reason}. {todo}")


def load_checkpoint_file(path: str, *, allow_pickle: bool = False) -> Any:
    """``torch.load`` to the CPU with ``weights_only=True``, after an integrity check.

    Args:
        path: a ``.pth`` file.
        allow_pickle: fall back to full unpickling when the file holds Python objects
            that ``weights_only`` refuses (only for files you trust: unpickling runs code).

    Raises:
        CheckpointError: corrupt or truncated (naming the previous good checkpoint), or
            holding pickled objects while ``allow_pickle`` is False.
    """
    reason = verify_checkpoint(path)
    if reason is not None:
        raise _corrupt_error(path, reason)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "weights only" not in str(e).lower():
            raise _corrupt_error(path, f"unpickling failed: {e}") from None
        if not allow_pickle:
            first = str(e).strip().splitlines()[-1][:300]
            raise CheckpointError(
                f"{path} holds pickled Python objects that safe loading (weights_only=True) refuses "
                f"({first}). Unpickling can run arbitrary code: only if you trust the file, load it "
                f"with load_weights(model, path, allow_pickle=True), or re-save it as a plain state dict."
            ) from None
        logger.warning("Loading %s with full unpickling (allow_pickle=True)", path)
        return torch.load(path, map_location="cpu", weights_only=False)
    except (RuntimeError, EOFError, ValueError, OSError) as e:
        raise _corrupt_error(path, f"{type(e).__name__}: {str(e).splitlines()[0]}") from None


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
        if _PERIODIC.match(os.path.basename(path)):
            self._prune()
        return path

    def _write_pointer(self, basename: str) -> None:
        atomic_write(os.path.join(self.save_dir, POINTER_FILE), lambda f: f.write(basename.encode() + b"\n"))

    def _prune(self) -> None:
        if self.max_to_keep <= 0:
            return
        periodic = [c for c in list_checkpoints(self.save_dir) if _PERIODIC.match(os.path.basename(c))]
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
            if _TEMP.match(f):
                os.remove(os.path.join(self.save_dir, f))
                removed.append(f)
        if removed:
            logger.info("Removed %d temp file(s) of an interrupted save: %s", len(removed), ", ".join(removed))
        return removed

    # -- finding ------------------------------------------------------------
    def pointed_checkpoint(self) -> Optional[str]:
        """The file named by ``last_checkpoint``, if the pointer exists."""
        pointer = os.path.join(self.save_dir, POINTER_FILE)
        try:
            with open(pointer) as f:
                name = f.read().strip()
        except OSError:
            return None
        return os.path.join(self.save_dir, name) if name else None

    def latest_good_checkpoint(self) -> Optional[str]:
        """The newest intact checkpoint: the pointer's file, else the newest older one.

        Damaged files on the way are skipped with a warning that names them.
        """
        pointed = self.pointed_checkpoint()
        if pointed is not None:
            candidates = [pointed] + _older_candidates(pointed)
        else:
            candidates = list_checkpoints(self.save_dir)
        for c in candidates:
            reason = verify_checkpoint(c)
            if reason is None:
                return c
            logger.warning("Skipping checkpoint %s: %s", c, reason)
        return None

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
            # Imported here: weights.py builds on this module's file helpers.
            from .weights import load_weights

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


# ---------------------------------------------------------------------------- #
# Helpers (pre-trained weights are loaded by detgn/checkpoint/weights.py)
# ---------------------------------------------------------------------------- #
def unwrap_model(model: nn.Module) -> nn.Module:
    """The module inside a DistributedDataParallel / DataParallel wrapper (or the model itself)."""
    while isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
        model = model.module
    return model
