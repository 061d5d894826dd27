"""The evaluation loop: run a model over a test loader and feed a DatasetEvaluator.

``inference_on_dataset`` owns everything around the model call (eval mode, no
grad, timing, progress with ETA); what is measured lives in evaluators such as
``COCOEvaluator``, which only see ``(inputs, outputs)`` pairs.
"""
from __future__ import annotations

import contextlib
import datetime
import logging
import math
import time
from abc import ABC, abstractmethod
from typing import Dict, Iterable, List, Optional, Sequence, Union

import torch
from torch import nn

from detgn.utils import stop

logger = logging.getLogger(__name__)


class DatasetEvaluator(ABC):
    """Accumulates per-image predictions and turns them into metrics.

    Protocol: ``reset()`` once, ``process(inputs, outputs)`` per batch (inputs
    are the mapper's dicts, outputs the model's), then ``evaluate()``.
    """

    @abstractmethod
    def reset(self) -> None:
        """Drop everything accumulated; called before a new pass over a dataset."""

    @abstractmethod
    def process(self, inputs: List[dict], outputs: List[dict]) -> None:
        """Record one batch: ``inputs[i]`` and ``outputs[i]`` describe the same image."""

    @abstractmethod
    def evaluate(self) -> Dict[str, dict]:
        """Return ``{task: {metric: value}}``; non-main processes may return ``{}``."""


class DatasetEvaluators(DatasetEvaluator):
    """Runs several evaluators side by side; their result dicts are merged."""

    def __init__(self, evaluators: Sequence[DatasetEvaluator]):
        self._evaluators = list(evaluators)

    def reset(self) -> None:
        for e in self._evaluators:
            e.reset()

    def process(self, inputs: List[dict], outputs: List[dict]) -> None:
        for e in self._evaluators:
            e.process(inputs, outputs)

    def evaluate(self) -> Dict[str, dict]:
        results: Dict[str, dict] = {}
        for e in self._evaluators:
            for task, metrics in (e.evaluate() or {}).items():
                if task in results:
                    raise ValueError(
                        f"Two evaluators both reported task '{task}'; give each evaluator "
                        "distinct tasks so their metrics do not overwrite each other"
                    )
                results[task] = metrics
        return results


@contextlib.contextmanager
def inference_context(model: nn.Module):
    """Put ``model`` in eval mode for the block and restore its previous mode after."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def _format_seconds(seconds: float) -> str:
    return str(datetime.timedelta(seconds=int(round(seconds))))


def _maybe_cuda_sync() -> None:
    # Without a sync, CUDA kernels run asynchronously and the "model" time would
    # be charged to whatever happens to block next.
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def inference_on_dataset(
    model: nn.Module,
    data_loader: Iterable[List[dict]],
    evaluator: Union[DatasetEvaluator, Sequence[DatasetEvaluator], None],
    *,
    log_period_s: float = 5.0,
    num_warmup: int = 5,
) -> Dict[str, dict]:
    """Run ``model`` on every batch of ``data_loader`` and evaluate the outputs.

    The model runs in eval mode under ``torch.no_grad()``; its training mode is
    restored afterwards (also on error). Progress (images done / total, seconds
    per image split into data / model / evaluator, ETA) is logged every
    ``log_period_s`` seconds, and the total time at the end.

    Args:
        model: called as ``model(batch) -> list[dict]``, one output per input dict.
        data_loader: iterable of ``list[dict]`` batches (this process's share).
        evaluator: a DatasetEvaluator, a list of them, or None (timing only).
        log_period_s: seconds between progress lines (0 logs every batch).
        num_warmup: first batches left out of the s/img figure (cudnn autotune,
            lazy allocations make them unrepresentative).

    Returns:
        ``evaluator.evaluate()`` (``{}`` on non-main processes or without evaluator).
    """
    if evaluator is None:
        evaluator = DatasetEvaluators([])
    elif not isinstance(evaluator, DatasetEvaluator):
        evaluator = DatasetEvaluators(evaluator)
    try:
        total: Optional[int] = len(data_loader)  # type: ignore[arg-type]
    except TypeError:
        total = None
    logger.info("Start inference on %s batches", "an unknown number of" if total is None else total)

    evaluator.reset()
    num_images = 0
    timed_images = 0
    timed = {"data": 0.0, "model": 0.0, "eval": 0.0}
    start = time.perf_counter()
    last_log = start
    with inference_context(model), torch.no_grad():
        t_data = time.perf_counter()
        for idx, inputs in enumerate(data_loader):
            if stop.requested():  # SIGTERM on some rank: leave now, the run saves and exits
                logger.warning("Inference stopped after %d images: a stop was requested", num_images)
                break
            t_model = time.perf_counter()
            outputs = model(inputs)
            _maybe_cuda_sync()
            t_eval = time.perf_counter()
            evaluator.process(inputs, outputs)
            t_end = time.perf_counter()

            num_images += len(inputs)
            if idx >= num_warmup:
                timed_images += len(inputs)
                timed["data"] += t_model - t_data
                timed["model"] += t_eval - t_model
                timed["eval"] += t_end - t_eval
            if t_end - last_log >= log_period_s:
                last_log = t_end
                elapsed = t_end - start
                logger.info(_progress_line(idx + 1, total, num_images, timed_images, timed, elapsed))
            t_data = time.perf_counter()

    if stop.agreed():  # every rank is here: all leave together, before the evaluator's collectives
        raise stop.StopRequested(f"{stop.reason()}, during inference")
    total_s = time.perf_counter() - start
    per_img = total_s / max(num_images, 1)
    logger.info(
        "Total inference time: %s (%.4f s/img over %d images on this process)",
        _format_seconds(total_s), per_img, num_images,
    )
    if timed_images:
        logger.info(
            "Steady state (after %d warm-up batches): model %.4f s/img, evaluator %.4f s/img, "
            "data %.4f s/img",
            num_warmup, timed["model"] / timed_images, timed["eval"] / timed_images,
            timed["data"] / timed_images,
        )
    results = evaluator.evaluate()
    return results if results is not None else {}


def _progress_line(
    batches_done: int, total: Optional[int], num_images: int, timed_images: int,
    timed: Dict[str, float], elapsed: float,
) -> str:
    """One progress log line; ETA assumes the remaining batches have as many images."""
    if timed_images:
        per = {k: v / timed_images for k, v in timed.items()}
    else:  # still warming up: the best estimate is the plain average so far
        per = {"data": 0.0, "model": elapsed / max(num_images, 1), "eval": 0.0}
    s_per_img = sum(per.values())
    line = (
        f"Inference: {batches_done}/{total if total is not None else '?'} batches "
        f"({num_images} images), {s_per_img:.4f} s/img "
        f"(data {per['data']:.4f}, model {per['model']:.4f}, eval {per['eval']:.4f})"
    )
    if total is not None:
        imgs_per_batch = num_images / max(batches_done, 1)
        eta = (total - batches_done) * imgs_per_batch * s_per_img
        line += f", ETA {_format_seconds(eta)}"
    return line


def format_results_table(results: Dict[str, Dict[str, float]], *, per_category: bool = True) -> str:
    """Render ``{task: {metric: value}}`` as a plain-text table (one block per task)."""
    lines: List[str] = []
    for task, metrics in results.items():
        main = {k: v for k, v in metrics.items() if not k.startswith("AP-")}
        cats = {k[3:]: v for k, v in metrics.items() if k.startswith("AP-")}
        lines.append(f"[{task}]")
        lines.append(" | ".join(f"{k:>7}" for k in main))
        lines.append(" | ".join(f"{_fmt(v):>7}" for v in main.values()))
        if per_category and cats:
            width = max(len(n) for n in cats)
            lines.append("per-category AP:")
            lines.extend(f"  {name:<{width}}  {_fmt(v):>7}" for name, v in cats.items())
    return "\n".join(lines)


def _fmt(value: float) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "nan"
    return f"{value:.3f}"
