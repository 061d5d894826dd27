"""Throughput of the training data loader (images/s), for ``tools/benchmark.py --task data``.

Measures what the trainer would see: the loader built by
``build_detection_train_loader(cfg)`` (same dataset, mapper, workers and batch size),
iterated in the main process with no model. The first batches are a warm-up (worker
start-up, page cache); after it, time stamps taken after every batch are cut into
windows of about ``window`` images, and the median of the windows' images/s is the
headline figure (a mean would be dominated by a stall or two).
"""
from __future__ import annotations

import statistics
import time
from typing import Dict, List

from detgn.data.build import build_detection_train_loader
from detgn.structures.image_list import ImageList

__all__ = ["benchmark_loader"]


def batch_pixels(batch, size_divisibility: int) -> tuple:
    """(padded pixels, image pixels) of one batch of model inputs (``d["image"]``: C, H, W)."""
    sizes = [(int(x["image"].shape[-2]), int(x["image"].shape[-1])) for x in batch]
    ph, pw = ImageList.padded_size(sizes, size_divisibility)  # the model's own padding rule
    return ph * pw * len(batch), sum(h * w for h, w in sizes)


def benchmark_loader(cfg, num_images: int, *, warmup_images: int = 20, window: int = 20,
                     size_divisibility: int = 32) -> Dict[str, object]:
    """Time ``num_images`` images of the training loader of ``cfg`` after a warm-up.

    Args:
        cfg: a config (DATASETS.TRAIN, INPUT.*, DATALOADER.NUM_WORKERS, SOLVER.IMS_PER_GPU).
        num_images: images timed after the warm-up.
        warmup_images: images loaded (untimed) first.
        window: images per measurement window.
    Returns:
        dict with ``images_per_s`` (median over windows), ``mean_images_per_s`` (all timed
        images / time), ``startup_s`` (build + first batch), ``num_images``, ``num_workers``,
        ``ims_per_gpu``, ``seconds`` (timed part), ``window_images_per_s`` (list), and
        ``pad_factor``: the pixels the model computes on (each batch padded to its largest
        image, rounded up to a multiple of ``size_divisibility``) over the images' own pixels.
    """
    if num_images < 1:
        raise ValueError(f"num_images must be >= 1, got {num_images}")
    t0 = time.perf_counter()
    it = iter(build_detection_train_loader(cfg))
    seen = len(next(it))
    startup = time.perf_counter() - t0
    while seen < warmup_images:
        seen += len(next(it))

    windows: List[float] = []
    timed = 0
    start = last = time.perf_counter()
    in_window = 0
    padded = pixels = 0
    while timed < num_images:
        batch = next(it)
        n = len(batch)
        p, q = batch_pixels(batch, size_divisibility)
        padded, pixels = padded + p, pixels + q
        timed += n
        in_window += n
        now = time.perf_counter()
        if in_window >= window:
            windows.append(in_window / (now - last))
            last, in_window = now, 0
    seconds = time.perf_counter() - start
    if in_window and not windows:
        windows.append(in_window / (time.perf_counter() - last))
    return {
        "images_per_s": statistics.median(windows),
        "mean_images_per_s": timed / seconds,
        "startup_s": startup,
        "num_images": timed,
        "num_workers": cfg.DATALOADER.NUM_WORKERS,
        "ims_per_gpu": cfg.SOLVER.IMS_PER_GPU,
        "seconds": seconds,
        "window_images_per_s": windows,
        "pad_factor": padded / pixels,
    }
