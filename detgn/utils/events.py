"""Training metrics: an in-memory store and the writers that report it.

The trainer and hooks put scalars into :class:`EventStorage` (losses every
iteration, evaluation results when they happen); writers read it every
``period`` iterations:

- :class:`ConsoleWriter`: one log line (iteration, ETA, each loss, total, LR,
  time/iter, data time, peak CUDA memory).
- :class:`JSONWriter`: one JSON object per line in ``metrics.json``.
- :class:`TensorboardWriter`: ``torch.utils.tensorboard.SummaryWriter`` events.

Scalars put with ``smooth=True`` (losses, timings) are reported as the median
over the iterations since the last write; the others (LR, AP) as their latest value.

Modules record what researchers watch during training (anchors and RoIs sampled,
classification accuracy) into the storage of the run in progress, found with
:func:`get_event_storage` (None outside training, so recording is a no-op there). A
0-dim tensor is stored as is and read when a writer reports it: recording adds no
host-device synchronisation to the step.
"""
from __future__ import annotations

import abc
import contextlib
import datetime
import json
import logging
import math
import os
import statistics
from collections import defaultdict
from typing import Dict, List, Optional, Tuple, Union

import torch

from .file_io import atomic_write_text

__all__ = [
    "EventStorage",
    "EventWriter",
    "ConsoleWriter",
    "JSONWriter",
    "TensorboardWriter",
    "get_event_storage",
    "read_metrics",
]


_CONSOLE_EVAL_KEYS = ("AP", "AP50", "AP75")


_CURRENT_STORAGE: List["EventStorage"] = []


def get_event_storage() -> Optional["EventStorage"]:
    """The storage of the training run in progress (the innermost ``with storage:``), or None.

    The trainer enters its storage for the whole run, so a module's forward can record
    training statistics (``storage.put_scalar("rpn/num_pos_anchors", t)``) without being
    handed the trainer; outside training there is none and nothing is recorded.
    """
    return _CURRENT_STORAGE[-1] if _CURRENT_STORAGE else None


class EventStorage:
    """Scalars by name, each a history of ``(iteration, value)``.

    Used as a context manager (``with storage:``) it is the one :func:`get_event_storage`
    returns.

    Args:
        start_iter: the iteration the run starts (or resumes) at.
    """

    def __init__(self, start_iter: int = 0):
        self.iter = start_iter
        # Values are floats, or 0-dim tensors not read yet (see put_scalar).
        self._history: Dict[str, List[Tuple[int, Union[float, torch.Tensor]]]] = defaultdict(list)
        self._smooth: Dict[str, bool] = {}
        # Set by a hook whose results must be written at this iteration (evaluation).
        self.flush_requested = False

    def __enter__(self) -> "EventStorage":
        _CURRENT_STORAGE.append(self)
        return self

    def __exit__(self, *exc) -> None:
        _CURRENT_STORAGE.remove(self)

    def put_scalar(self, name: str, value, *, smooth: bool = True) -> None:
        """Record ``value`` (a number or a 0-dim tensor) at the current iteration.

        A tensor is kept (detached) and converted when the value is read, normally by a
        writer every ``LOG_PERIOD`` iterations, so that recording a statistic computed on
        the GPU does not wait for the GPU. A NaN in a smoothed scalar means "no sample at
        this iteration" (e.g. the foreground accuracy of a batch without foreground) and
        is left out of the window's median.
        """
        if isinstance(value, torch.Tensor):
            value = value.detach()
        else:
            value = float(value)
        self._history[name].append((self.iter, value))
        self._smooth[name] = smooth

    def _read(self, name: str) -> List[Tuple[int, float]]:
        """``name``'s history with every tensor converted to a float (once, in one transfer per device)."""
        h = self._history.get(name, [])
        pending = [i for i, (_, v) in enumerate(h) if isinstance(v, torch.Tensor)]
        by_device: Dict[torch.device, List[int]] = defaultdict(list)
        for i in pending:
            by_device[h[i][1].device].append(i)
        for idx in by_device.values():
            values = torch.stack([h[i][1].float().reshape(()) for i in idx]).tolist()
            for i, v in zip(idx, values):
                h[i] = (h[i][0], float(v))
        return h

    def put_scalars(self, *, smooth: bool = True, **values) -> None:
        for k, v in values.items():
            self.put_scalar(k, v, smooth=smooth)

    def history(self, name: str) -> List[Tuple[int, float]]:
        """Every ``(iteration, value)`` recorded for ``name``."""
        if name not in self._history:
            raise KeyError(f"No scalar named {name!r} was recorded; have: {sorted(self._history)}")
        return list(self._read(name))

    def names(self) -> List[str]:
        return sorted(self._history)

    def is_smoothed(self, name: str) -> bool:
        return self._smooth.get(name, True)

    def latest(self) -> Dict[str, Tuple[float, int]]:
        """``{name: (value, iteration)}`` of the last recorded value of every scalar."""
        return {k: (h[-1][1], h[-1][0]) for k, h in ((k, self._read(k)) for k in list(self._history)) if h}

    def values_since(self, name: str, after_iter: int) -> List[float]:
        """Values of ``name`` recorded at iterations > ``after_iter``."""
        out = []
        for it, v in reversed(self._read(name)):
            if it <= after_iter:
                break
            out.append(v)
        return out[::-1]

    def summary_since(self, after_iter: int) -> Dict[str, float]:
        """What a writer reports now: window medians of smoothed scalars, latest of the rest,
        for every scalar with a value recorded after ``after_iter``."""
        out = {}
        for name in list(self._history):
            vals = self.values_since(name, after_iter)
            if vals and self.is_smoothed(name):
                vals = [v for v in vals if not math.isnan(v)]
                if vals:
                    out[name] = statistics.median(vals)
            elif vals:
                out[name] = vals[-1]
        return out

    def trim(self, keep_last: int) -> None:
        """Forget all but the last ``keep_last`` values of each scalar (bounded memory)."""
        for name, h in self._history.items():
            if len(h) > keep_last:
                del h[: len(h) - keep_last]


class EventWriter(abc.ABC):
    """Reports the storage; ``write`` is called every period and at the end."""

    def __init__(self):
        self._last_written = -1

    def start(self, start_iter: int) -> None:
        """Called once before training starts (or resumes) at ``start_iter``."""
        self._last_written = start_iter - 1

    def write(self, storage: EventStorage, max_iter: int) -> None:
        metrics = storage.summary_since(self._last_written)
        if metrics:
            self._write(storage.iter, metrics, storage, max_iter)
        self._last_written = storage.iter

    @abc.abstractmethod
    def _write(self, iteration: int, metrics: Dict[str, float], storage: EventStorage, max_iter: int) -> None:
        """Report ``metrics`` (what changed since the last write) at ``iteration``."""

    def close(self) -> None:
        pass


class ConsoleWriter(EventWriter):
    """One log line per write: losses, total, LR, time/iter, data time, ETA, peak memory.

    Args:
        logger: where the line goes (``detgn.engine`` by default).
        show_memory: add ``max_mem`` (peak CUDA allocation); default: when CUDA is in use.
    """

    def __init__(self, *, logger: Optional[logging.Logger] = None, show_memory: Optional[bool] = None,
                 announce_end_after: int = 50):
        super().__init__()
        self.logger = logger or logging.getLogger("detgn.engine")
        self.show_memory = torch.cuda.is_available() and torch.cuda.is_initialized() if show_memory is None else show_memory
        self.announce_end_after = announce_end_after
        self._announced = False

    def _write(self, iteration, metrics, storage, max_iter):
        parts = [f"iter: {iteration + 1}/{max_iter}"]
        if "time" in metrics and max_iter > iteration + 1:
            # Median of recent steps: robust to the slow first iterations and eval pauses.
            recent = storage.values_since("time", max(-1, iteration - 200))
            eta = statistics.median(recent) * (max_iter - iteration - 1)
            parts.append(f"eta: {datetime.timedelta(seconds=int(eta))}")
            if not self._announced and len(recent) >= self.announce_end_after:
                self._announced = True
                end = datetime.datetime.now() + datetime.timedelta(seconds=eta)
                self.logger.info("Training projected to end at %s (in %s, %.3f s/iter, the median of the last %d "
                                 "iterations), before the final evaluation", end.strftime("%Y-%m-%d %H:%M"),
                                 datetime.timedelta(seconds=int(eta)), statistics.median(recent), len(recent))
        losses = sorted(k for k in metrics if k.startswith("loss"))
        parts += [f"{k}: {metrics[k]:.4g}" for k in losses]
        if "total_loss" in metrics:
            parts.append(f"total_loss: {metrics['total_loss']:.4g}")
        if "lr" in metrics:
            parts.append(f"lr: {metrics['lr']:.5g}")
        if "time" in metrics:
            parts.append(f"time: {metrics['time']:.4f}")
        if "data_time" in metrics:
            parts.append(f"data_time: {metrics['data_time']:.4f}")
        if self.show_memory:
            parts.append(f"max_mem: {torch.cuda.max_memory_allocated() / 2**20:.0f}M")
        # Summary metrics only (bbox/AP, segm/AP50, ...); per-category APs go to metrics.json.
        evals = sorted(k for k in metrics if not storage.is_smoothed(k) and k.split("/")[-1] in _CONSOLE_EVAL_KEYS)
        if evals:
            parts.append("eval: " + ", ".join(f"{k}={metrics[k]:.2f}" for k in evals))
        self.logger.info("  ".join(parts))


class JSONWriter(EventWriter):
    """Appends ``{"iteration": i, name: value, ...}`` lines to ``path`` (``metrics.json``).

    Args:
        path: the file.
        start_iter: when given (or when :meth:`start` is called), lines of iterations >=
            this (written by a run that died after its last checkpoint, or by an earlier
            run in the same folder) are dropped, so a resumed run's file has each
            iteration once. Without it, lines are appended.
    """

    def __init__(self, path: str, *, start_iter: Optional[int] = None):
        super().__init__()
        self.path = path
        self._file = None
        if start_iter is not None:
            self.start(start_iter)

    def start(self, start_iter: int) -> None:
        super().start(start_iter)
        if self._file is None:
            self._drop_from(start_iter)
            self._file = open(self.path, "a")

    def _drop_from(self, start_iter: int) -> None:
        if not os.path.exists(self.path):
            return
        kept = [r for r in read_metrics(self.path) if r.get("iteration", -1) < start_iter]
        atomic_write_text(self.path, "".join(_dumps(r) for r in kept))

    def _write(self, iteration, metrics, storage, max_iter):
        if self._file is None:
            self._file = open(self.path, "a")
        self._file.write(_dumps({"iteration": iteration, **metrics}))
        self._file.flush()
        # Some file systems (pipes, fuse) cannot fsync; the flush is enough there.
        with contextlib.suppress(OSError):
            os.fsync(self._file.fileno())

    def close(self):
        if self._file is not None:
            self._file.close()
            self._file = None


class TensorboardWriter(EventWriter):
    """Writes every reported scalar with ``SummaryWriter.add_scalar`` into ``log_dir``."""

    def __init__(self, log_dir: str, **kwargs):
        super().__init__()
        # Imported here: tensorboard is slow to import and only this writer needs it.
        from torch.utils.tensorboard import SummaryWriter

        self._writer = SummaryWriter(log_dir, **kwargs)

    def _write(self, iteration, metrics, storage, max_iter):
        for k, v in metrics.items():
            self._writer.add_scalar(k, v, iteration)
        self._writer.flush()

    def close(self):
        self._writer.close()


def _dumps(record: dict) -> str:
    """One JSON line; NaN (the AP of a class absent from the val set) becomes null, as JSON has no NaN."""
    clean = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in record.items()}
    return json.dumps(clean, sort_keys=True) + "\n"


def read_metrics(path: str) -> List[dict]:
    """The records of a ``metrics.json`` file; a torn last line (a killed run) is ignored."""
    out = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return out
