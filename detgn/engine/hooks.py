"""Hooks of the training loop: LR schedule, periodic checkpoints, evaluation, metrics, curves.

The order :func:`detgn.engine.defaults.build_hooks` registers them in matters:
the LR is stepped before a checkpoint is taken (the checkpoint holds the state
for the next iteration), unreadable training files are exchanged and counted
before the checkpoint and the writers (so both see the count of this iteration),
PreciseBN before the checkpoint (which then holds the statistics the evaluation used),
checkpoints come before evaluation (a crash in the evaluator loses no training),
evaluation before the writers (its results are written at the iteration they
belong to), the skipped-files record after the writers' last line, the curve
plot last.
"""
from __future__ import annotations

import json
import logging
import os
from typing import Callable, Dict, Iterable, List, Mapping, Optional, Sequence

from detgn.utils import comm
from detgn.utils.events import EventWriter
from detgn.utils.seed import get_rng_state, set_rng_state

from .trainer import HookBase

logger = logging.getLogger(__name__)

__all__ = [
    "LRScheduler",
    "PeriodicCheckpointer",
    "BadImageSync",
    "BadImageRecord",
    "PreciseBN",
    "EvalHook",
    "PeriodicWriter",
    "CurvePlot",
    "flatten_results",
]


class LRScheduler(HookBase):
    """Records the LR used by the step just done (``lr``), then steps the scheduler."""

    def __init__(self, scheduler=None):
        self._scheduler = scheduler

    def after_step(self) -> None:
        sched = self._scheduler or self.trainer.scheduler
        groups = self.trainer.optimizer.param_groups
        # The LR of the biggest group (the weights) is the one worth plotting.
        main = max(groups, key=lambda g: sum(p.numel() for p in g["params"]))
        self.trainer.storage.put_scalar("lr", main["lr"], smooth=False)
        sched.step()


class PeriodicCheckpointer(HookBase):
    """Saves ``model_{iter:07d}`` every ``period`` iterations and ``model_final`` at the end.

    A checkpoint named for iteration ``i`` (0-based) holds the state after ``i + 1``
    completed iterations. Every process calls the save (RNG states are gathered).
    """

    def __init__(self, checkpointer, *, period: int):
        self.checkpointer = checkpointer
        self.period = int(period)

    def after_step(self) -> None:
        done = self.trainer.iter + 1
        if done >= self.trainer.max_iter:
            self.checkpointer.save("model_final", iteration=done)
        elif self.period > 0 and done % self.period == 0:
            self.checkpointer.save(f"model_{self.trainer.iter:07d}", iteration=done)


class BadImageSync(HookBase):
    """Unreadable training files (a :class:`detgn.data.BadImageTracker`): exchange, limit, count.

    Every ``period`` iterations, with several processes, every process calls
    ``tracker.sync()`` (a collective at the same iteration on all ranks): files one rank
    found are then skipped by all, and over the limit all ranks stop together with
    :class:`detgn.data.TooManyBadImagesError` (one process stops at once, in the loader;
    the checkpointer syncs too, before every save). Each iteration the number of distinct
    unreadable files goes into the storage as ``bad_images`` (so into every
    ``metrics.json`` line); at the end of training, also after an error, one log line
    names the skipped files. Runs on every process.
    """

    def __init__(self, tracker, *, period: int = 20):
        self.tracker = tracker
        self.period = max(1, int(period))
        self._last_put: Optional[int] = None

    def _put(self) -> None:
        n = self.tracker.num_bad_images
        self.trainer.storage.put_scalar("bad_images", n, smooth=False)
        self._last_put = n

    def after_step(self) -> None:
        done = self.trainer.iter + 1
        if comm.get_world_size() > 1 and done % self.period == 0:
            self.tracker.sync()
        self._put()

    def after_train(self) -> None:
        ran = self.trainer.start_iter < self.trainer.max_iter
        if ran and self.tracker.num_bad_images != (self._last_put or 0):
            self._put()  # found while loading a batch whose step did not finish: the final write shows it
        self.tracker.log_summary()


class BadImageRecord(HookBase):
    """Main process, after the writers: one ``metrics.json`` line naming the skipped files.

    ``{"iteration": i, "skipped_images": {"count": n, "files": [...]}}`` at the last
    iteration run (also after an error; nothing when no file was skipped). A run resumed
    before ``i`` drops the line with the rest (see :class:`detgn.utils.events.JSONWriter`)
    and writes its own at its end.
    """

    def __init__(self, tracker, metrics_path: str):
        self.tracker = tracker
        self.metrics_path = metrics_path

    def after_train(self) -> None:
        if not self.tracker.num_bad_images or self.trainer.start_iter >= self.trainer.max_iter:
            return
        record = {"iteration": min(self.trainer.iter, self.trainer.max_iter - 1),
                  "skipped_images": self.tracker.summary()}
        try:
            with open(self.metrics_path, "a") as f:
                f.write(json.dumps(record, sort_keys=True) + "\n")
        except OSError as e:  # reporting must not hide the training's own outcome
            logger.warning("Could not add the skipped images to %s: %s", self.metrics_path, e)


def flatten_results(results: Mapping, prefix: str = "") -> Dict[str, float]:
    """``{"bbox": {"AP": 40.1}}`` -> ``{"bbox/AP": 40.1}``; non-numeric leaves are dropped."""
    out = {}
    for k, v in results.items():
        key = f"{prefix}/{k}" if prefix else str(k)
        if isinstance(v, Mapping):
            out.update(flatten_results(v, key))
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            out[key] = float(v)
    return out


class PreciseBN(HookBase):
    """Before each evaluation (every ``period`` iterations and at the end), replace the BN
    layers' running statistics by exact pooled ones over ``num_iter`` training batches
    (:func:`detgn.modeling.precise_bn.precise_bn`).

    Registered before the checkpointer and the evaluation, so both see the new statistics
    and ``--resume`` continues from them. ``data_fn()`` gives a fresh iterable of training
    batches (not the training stream itself, which it must not advance). The global RNGs
    are restored afterwards: the run trains the same with or without it.
    """

    def __init__(self, data_fn: Callable[[], Iterable], *, period: int, num_iter: int):
        self.data_fn = data_fn
        self.period = int(period)
        self.num_iter = int(num_iter)

    def after_step(self) -> None:
        done = self.trainer.iter + 1
        if done >= self.trainer.max_iter or (self.period > 0 and done % self.period == 0):
            from detgn.modeling.precise_bn import precise_bn

            model = getattr(self.trainer.model, "module", self.trainer.model)  # DDP: the model itself
            precise_bn(model, self.data_fn(), num_iter=self.num_iter)


class EvalHook(HookBase):
    """Runs ``eval_fn()`` every ``period`` iterations (0: never) and once at the end of training.

    ``eval_fn`` returns nested dicts of metrics (``{"bbox": {"AP": ...}}``) on the main
    process and ``{}`` elsewhere; they go into the storage as ``bbox/AP`` etc. It runs
    on every process (evaluation is distributed) between saving and restoring the global
    RNG states, so the training run is the same whatever the evaluation period.
    """

    def __init__(self, eval_fn: Callable[[], Mapping], *, period: int):
        self.eval_fn = eval_fn
        self.period = int(period)
        self._last_eval_iter: Optional[int] = None
        self.last_results: Mapping = {}

    def _do_eval(self) -> None:
        done = self.trainer.iter + 1
        logger.info("Evaluating after %d iterations", done)
        rng = get_rng_state()
        try:
            results = self.eval_fn() or {}
        finally:
            set_rng_state(rng)
            self.trainer.model.train()
        self.last_results = results
        flat = flatten_results(results)
        storage = self.trainer.storage
        for k, v in flat.items():
            storage.put_scalar(k, v, smooth=False)
        if flat:
            storage.flush_requested = True
            logger.info("Evaluation after %d iterations: %s", done, ", ".join(f"{k}={v:.3f}" for k, v in flat.items() if k.endswith(("AP", "_err"))))
        self._last_eval_iter = done
        comm.synchronize()

    def after_step(self) -> None:
        done = self.trainer.iter + 1
        if done >= self.trainer.max_iter or (self.period > 0 and done % self.period == 0):
            self._do_eval()

    def after_train(self) -> None:
        # A run resumed from model_final does no step: evaluate it once all the same.
        if self.trainer.finished and self._last_eval_iter != self.trainer.max_iter:
            self.trainer.iter = self.trainer.max_iter - 1
            self.trainer.storage.iter = self.trainer.iter
            self._do_eval()


class PeriodicWriter(HookBase):
    """Calls the writers every ``period`` iterations, after an evaluation, and at the end.

    Args:
        writers: :class:`detgn.utils.events.EventWriter` instances (main process only).
        period: iterations between writes.
        keep_history: values kept per scalar in memory (older ones are dropped after a write).
    """

    def __init__(self, writers: Sequence[EventWriter], *, period: int = 20, keep_history: int = 1000):
        self.writers = list(writers)
        self.period = max(1, int(period))
        self.keep_history = max(int(keep_history), self.period + 1)

    def before_train(self) -> None:
        for w in self.writers:
            w.start(self.trainer.start_iter)

    def _write(self) -> None:
        for w in self.writers:
            w.write(self.trainer.storage, self.trainer.max_iter)
        self.trainer.storage.flush_requested = False
        self.trainer.storage.trim(self.keep_history)

    def after_step(self) -> None:
        done = self.trainer.iter + 1
        storage = self.trainer.storage
        if done % self.period == 0 or done >= self.trainer.max_iter or storage.flush_requested:
            self._write()

    def after_train(self) -> None:
        try:
            self._write()  # what happened since the last write (an error, a final evaluation)
        finally:
            for w in self.writers:
                w.close()


class CurvePlot(HookBase):
    """Draws ``training_curves.png`` (losses and AP over iterations) from ``metrics.json`` at the end."""

    def __init__(self, metrics_path: str, out_path: str, *, title: str = ""):
        self.metrics_path = metrics_path
        self.out_path = out_path
        self.title = title

    def after_train(self) -> None:
        from detgn.utils.plot import plot_training_curves

        try:
            plot_training_curves(self.metrics_path, self.out_path, title=self.title)
            logger.info("Training curves written to %s", self.out_path)
        except Exception as e:  # a plotting problem must not hide the training's own outcome
            logger.warning("Could not draw %s: %s: %s", self.out_path, type(e).__name__, e)


def default_writers(output_dir: str, *, tensorboard: bool = True) -> List[EventWriter]:
    """Console, ``metrics.json`` and (optionally) TensorBoard writers for ``output_dir``."""
    from detgn.utils.events import ConsoleWriter, JSONWriter, TensorboardWriter

    writers: List[EventWriter] = [ConsoleWriter(), JSONWriter(os.path.join(output_dir, "metrics.json"))]
    if tensorboard:
        writers.append(TensorboardWriter(output_dir))
    return writers
