"""The two tasks one config can describe: detection (Mask R-CNN) and classification
(backbone pre-training, ``MODEL.META_ARCHITECTURE "ImageClassifier"``).

The training loop, hooks, checkpoints and tools are shared; only the data and the
evaluator differ, and these builders pick them from the config.
"""
from __future__ import annotations

import os
from typing import Tuple

__all__ = ["is_classifier", "build_train_loader", "build_test_loader_and_evaluator"]


def is_classifier(cfg) -> bool:
    """True when the config trains an image classifier (backbone pre-training)."""
    return cfg.MODEL.META_ARCHITECTURE == "ImageClassifier"


def build_train_loader(cfg, *, start_batch: int = 0, bad_images=None):
    """The infinite training stream of ``DATASETS.TRAIN`` for the config's task, from batch
    ``start_batch`` of the stream on (see :func:`detgn.data.build_detection_train_loader` /
    ``build_classification_train_loader``)."""
    from detgn.data import build_classification_train_loader, build_detection_train_loader

    build = build_classification_train_loader if is_classifier(cfg) else build_detection_train_loader
    return build(cfg, start_batch=start_batch, bad_images=bad_images)


def build_test_loader_and_evaluator(cfg, dataset_name: str, *, output_dir: str) -> Tuple[object, object]:
    """(test loader, evaluator) of ``dataset_name``: COCO box/mask AP, or top-1/top-5 error.
    The evaluator writes its results under ``output_dir``."""
    from detgn.data import build_classification_test_loader, build_detection_test_loader
    from detgn.evaluation import ClassificationEvaluator, COCOEvaluator

    os.makedirs(output_dir, exist_ok=True)
    if is_classifier(cfg):
        return build_classification_test_loader(cfg, dataset_name), ClassificationEvaluator(dataset_name,
                                                                                            output_dir=output_dir)
    return build_detection_test_loader(cfg, dataset_name), COCOEvaluator(dataset_name, output_dir=output_dir)
