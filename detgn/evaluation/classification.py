"""Top-k classification error over one dataset, across processes.

Each image's logits are reduced in :meth:`ClassificationEvaluator.process` to the RANK
of its true class (how many classes score at least as high, the truth excluded), so
only two small integers per image are held and gathered; top-k is correct iff rank < k.
Ties count against the truth, so a model whose logits are all equal (or NaN) scores
no better than chance instead of perfectly. Metrics are percentages.
"""
from __future__ import annotations

import logging
import os
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

from detgn.utils import comm
from detgn.utils.file_io import atomic_write_json

from .coco_evaluator import METRICS_FILE
from .evaluator import DatasetEvaluator

logger = logging.getLogger(__name__)

__all__ = ["ClassificationEvaluator", "true_class_rank", "classification_metrics"]


def true_class_rank(logits: torch.Tensor, label: int) -> int:
    """Rank of class ``label`` among ``logits`` (K,): 0 = strictly the highest.

    Classes scoring equal to the truth rank above it; a non-finite logit anywhere gives
    rank K (wrong at every k), since such a prediction is meaningless.
    """
    if not bool(torch.isfinite(logits).all()):
        return int(logits.numel())
    return int((logits >= logits[label]).sum()) - 1


def classification_metrics(labels: np.ndarray, ranks: np.ndarray, *, class_names: Sequence[str],
                           topk: Sequence[int]) -> Dict[str, object]:
    """Metrics of ``labels`` (N,) and true-class ``ranks`` (N,) (see :func:`true_class_rank`).

    Returns:
        ``{"top1_err", "top<k>_err" (each k of topk with k <= K), "top1_acc" (percent),
        "num_images", "per_class_top1_err": {class name: percent}}``; classes without
        images are left out of the per-class dict.
    """
    n, num_classes = len(labels), len(class_names)
    if n == 0:
        raise ValueError("No images were evaluated; is the test loader empty?")
    out: Dict[str, object] = {}
    for k in sorted(set(topk) | {1}):
        if k <= num_classes:  # beyond K every image is right: no number worth reporting
            out[f"top{k}_err"] = 100.0 * float((ranks >= k).mean())
    out["top1_acc"] = 100.0 - out["top1_err"]
    out["num_images"] = int(n)
    wrong = np.bincount(labels, weights=(ranks >= 1).astype(np.float64), minlength=num_classes)
    count = np.bincount(labels, minlength=num_classes)
    out["per_class_top1_err"] = {class_names[c]: 100.0 * float(wrong[c] / count[c])
                                 for c in range(num_classes) if count[c]}
    return out


class ClassificationEvaluator(DatasetEvaluator):
    """Top-1 / top-k error of ``outputs[i]["logits"]`` (K,) against ``inputs[i]["label"]``.

    Args:
        dataset_name: a registered classification set; its metadata's ``classes`` name
            the per-class errors and fix K.
        output_dir: where ``metrics.json`` is written (None: not written).
        topk: the k of the reported ``top<k>_err`` (top-1 always; k > K is skipped).
        distributed: gather the images of every process to the main one.
    Returns (from ``evaluate()``, main process; ``{}`` elsewhere):
        ``{"classification": {"top1_err", "top5_err", "top1_acc", "num_images",
        "per_class_top1_err": {class name: err}}}`` in percent (see :func:`classification_metrics`).
    """

    def __init__(self, dataset_name: str, *, output_dir: Optional[str] = None, topk: Sequence[int] = (1, 5),
                 distributed: bool = True):
        from detgn.data import MetadataCatalog  # lazy: evaluation stays importable without data

        classes = MetadataCatalog.get(dataset_name).get("classes")
        if not classes:
            raise ValueError(
                f"Dataset '{dataset_name}' has no 'classes' in its metadata; ClassificationEvaluator needs a "
                "classification set (register it with detgn.data.register_image_folder)"
            )
        topk = tuple(int(k) for k in topk)
        if not topk or min(topk) < 1:
            raise ValueError(f"topk must be positive integers, got {topk}")
        skipped = [k for k in topk if k > len(classes)]
        if skipped:
            logger.info("%s has %d classes: top-%s error would always be 0 and is not reported", dataset_name,
                        len(classes), "/".join(map(str, skipped)))
        self._dataset_name = dataset_name
        self._class_names = list(classes)
        self._output_dir = output_dir
        self._topk = topk
        self._distributed = distributed
        self.reset()

    def reset(self) -> None:
        self._labels: List[int] = []
        self._ranks: List[int] = []

    def process(self, inputs: List[dict], outputs: List[dict]) -> None:
        num_classes = len(self._class_names)
        for inp, out in zip(inputs, outputs):
            if "logits" not in out:
                raise ValueError(f"Model output for image {inp.get('image_id')} has no 'logits' (keys: {sorted(out)}); "
                                 "is the model an image classifier in eval mode?")
            logits = out["logits"].detach().float().cpu()
            if logits.shape != (num_classes,):
                raise ValueError(
                    f"Image {inp.get('image_id')} ({inp.get('file_name', '?')}): logits of shape "
                    f"{tuple(logits.shape)}, expected ({num_classes},) for the {num_classes} classes of "
                    f"'{self._dataset_name}' (MODEL.CLASSIFIER.NUM_CLASSES?)"
                )
            label = int(inp["label"])
            if not 0 <= label < num_classes:
                raise ValueError(f"Image {inp.get('image_id')}: label {label} is not in [0, {num_classes})")
            self._labels.append(label)
            self._ranks.append(true_class_rank(logits, label))

    def evaluate(self) -> Dict[str, Dict[str, object]]:
        """Gather to the main process and score there; other processes return ``{}``."""
        if self._distributed and comm.get_world_size() > 1:
            comm.synchronize()
            gathered = comm.gather((self._labels, self._ranks), dst=0)
            if not comm.is_main_process():
                return {}
        else:
            gathered = [(self._labels, self._ranks)]
        labels = np.asarray([v for g in gathered for v in g[0]], dtype=np.int64)
        ranks = np.asarray([v for g in gathered for v in g[1]], dtype=np.int64)
        nonfinite = int((ranks == len(self._class_names)).sum())
        if nonfinite:
            logger.warning("%d of %d images had non-finite logits (NaN/inf); they count as errors", nonfinite,
                           len(ranks))
        results = {"classification": classification_metrics(labels, ranks, class_names=self._class_names,
                                                             topk=self._topk)}
        if self._output_dir:
            atomic_write_json(os.path.join(self._output_dir, METRICS_FILE), results)
        m = results["classification"]
        logger.info("Classification on %s (%d images): %s", self._dataset_name, m["num_images"],
                    ", ".join(f"{k}={v:.2f}" for k, v in m.items() if isinstance(v, float)))
        return results
