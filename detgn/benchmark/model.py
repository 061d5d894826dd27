"""Speed and memory of a model: the training step and inference on synthetic inputs.

The training step timed is the :class:`~detgn.engine.trainer.Trainer`'s own (forward,
sum of the losses, backward, optimizer step, with ``CPU.BF16`` / ``SOLVER.AMP`` as
configured), run on one fixed batch, so a benchmark measures what training runs.
Torchvision's Mask R-CNN is measured through the same step (its ``(images, targets)``
interface adapted) for a side-by-side ratio. Figures are medians over the timed
iterations after warm-up; on CUDA each iteration is synchronised. ``tools/benchmark.py``
is the command line; the data loader and the evaluator have their own benchmarks
(:mod:`detgn.benchmark.loader`, :mod:`detgn.benchmark.evaluator`).
"""
from __future__ import annotations

import contextlib
import itertools
import resource
import statistics
import time
from typing import Callable, Dict, List

import torch
from torch import nn

from detgn.utils.cpu import resolve_bf16
from detgn.modeling import build_model, count_flops
from detgn.structures import Boxes, Instances, PolygonMasks

from detgn.engine.trainer import HookBase, Trainer

__all__ = ["SPEED_MODES", "benchmark_model", "benchmark_torchvision", "compare_modes", "peak_memory_mb", "reset_peak_memory",
           "synchronize", "synthetic_batch", "time_training_steps"]


def synthetic_batch(n: int, height: int, width: int, *, num_classes: int, num_instances: int = 6, seed: int = 0,
                    train: bool = True) -> List[Dict]:
    """``n`` mapped-looking inputs: random pixels and, with ``train``, random boxes with
    box-shaped polygon masks of random classes in ``[0, num_classes)``."""
    g = torch.Generator().manual_seed(seed)
    batch = []
    for i in range(n):
        img = torch.randint(0, 256, (3, height, width), generator=g, dtype=torch.uint8)
        d = {"image": img, "height": height, "width": width, "image_id": i, "file_name": f"bench_{i}"}
        if train:
            xy = torch.rand(num_instances, 2, generator=g) * torch.tensor([width * 0.7, height * 0.7])
            wh = 16 + torch.rand(num_instances, 2, generator=g) * torch.tensor([width * 0.3, height * 0.3])
            boxes = torch.cat([xy, xy + wh], 1)
            polys = [[[b[0], b[1], b[2], b[1], b[2], b[3], b[0], b[3]]] for b in boxes.tolist()]
            inst = Instances((height, width))
            inst.gt_boxes = Boxes(boxes)
            inst.gt_classes = torch.randint(0, num_classes, (num_instances,), generator=g)
            inst.gt_masks = PolygonMasks(polys)
            d["instances"] = inst
        batch.append(d)
    return batch


def synchronize(device) -> None:
    """Wait for the device's queued work (CUDA); nothing on the CPU."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def reset_peak_memory(device) -> None:
    """Start a new peak for :func:`peak_memory_mb` on a GPU (a process's peak RSS cannot be reset)."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def peak_memory_mb(device) -> float:
    """Peak CUDA allocation on a GPU (since :func:`reset_peak_memory`), else the process's peak
    resident set size."""
    if torch.device(device).type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


class _StepTimer(HookBase):
    """Seconds of each step after ``warmup`` steps (synchronised on CUDA)."""

    def __init__(self, device, warmup: int):
        self.device, self.warmup, self.times = device, warmup, []

    def before_step(self) -> None:
        synchronize(self.device)
        self._t0 = time.perf_counter()

    def after_step(self) -> None:
        synchronize(self.device)
        if self.trainer.iter >= self.warmup:
            self.times.append(time.perf_counter() - self._t0)


def time_training_steps(model: nn.Module, batch, *, warmup: int, iters: int, device, bf16: bool = False,
                        amp: bool = False) -> List[float]:
    """Seconds of ``iters`` Trainer steps on ``batch`` after ``warmup`` (SGD, LR 1e-4: random
    inputs must not make the loss diverge)."""
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-4, momentum=0.9)
    trainer = Trainer(model=model, optimizer=opt, data_loader_fn=lambda start: itertools.repeat(batch),
                      max_iter=warmup + iters, bf16=bf16, amp=amp)
    timer = _StepTimer(device, warmup)
    trainer.register_hooks([timer])
    trainer.train()
    return timer.times


def _time_calls(fn: Callable[[], object], *, warmup: int, iters: int, device) -> List[float]:
    for _ in range(warmup):
        fn()
    synchronize(device)
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - t0)
    return times


def benchmark_model(cfg, task: str, *, height: int, width: int, warmup: int = 3, iters: int = 10,
                    flops: bool = False) -> Dict[str, object]:
    """Median s/iter (``task="train"``, ``SOLVER.IMS_PER_GPU`` images) or s/image (``"inference"``)
    of the config's model with random weights on random ``height x width`` inputs."""
    torch.manual_seed(0)
    device, n = cfg.MODEL.DEVICE, cfg.SOLVER.IMS_PER_GPU
    reset_peak_memory(device)
    model = build_model(cfg)  # on MODEL.DEVICE, channels-last with CPU.CHANNELS_LAST; TEST.AMP on CUDA
    num_classes = cfg.MODEL.ROI_HEADS.NUM_CLASSES
    res: Dict[str, object] = {"model": "detgn", "input": f"{height}x{width}", "images_per_step": n}
    if task == "train":
        batch = synthetic_batch(n, height, width, num_classes=num_classes)
        times = time_training_steps(model, batch, warmup=warmup, iters=iters, device=device, bf16=resolve_bf16(cfg.CPU.BF16, device).enabled,
                                    amp=cfg.SOLVER.AMP.ENABLED)
        res["s_per_iter"] = statistics.median(times)
        res["images_per_s"] = n / res["s_per_iter"]
    elif task == "inference":
        model.eval()
        batch = synthetic_batch(1, height, width, num_classes=num_classes, train=False)
        with torch.no_grad():
            times = _time_calls(lambda: model(batch), warmup=warmup, iters=iters, device=device)
        res["s_per_image"] = statistics.median(times)
        res["images_per_s"] = 1.0 / res["s_per_image"]
        if flops:
            res["gflops_inference"] = count_flops(model, batch[0])
    else:
        raise ValueError(f"task must be 'train' or 'inference', got {task!r}")
    res["peak_mem_mb"] = peak_memory_mb(device)
    res["params"] = sum(p.numel() for p in model.parameters())
    return res


class _TorchvisionStep(nn.Module):
    """torchvision's detector behind the Trainer's interface: batch ``(images, targets)`` -> loss dict."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, batch):
        images, targets = batch
        return self.model(images, targets)


def _torchvision_inputs(batch: List[Dict], device):
    images = [b["image"].float().div(255).to(device) for b in batch]
    targets = []
    for b in batch:
        inst, (h, w) = b["instances"], (b["height"], b["width"])
        targets.append({
            "boxes": inst.gt_boxes.tensor.to(device),
            "labels": (inst.gt_classes + 1).to(device),
            "masks": inst.gt_masks.to_bitmasks(h, w).tensor.to(torch.uint8).to(device),
        })
    return images, targets


def benchmark_torchvision(cfg, task: str, *, height: int, width: int, warmup: int = 3,
                          iters: int = 10) -> Dict[str, object]:
    """torchvision's ``maskrcnn_resnet50_fpn`` (random weights, FrozenBN backbone as when
    fine-tuning) at the same size and images per step as :func:`benchmark_model`."""
    import torchvision
    from torchvision.models.detection import MaskRCNN
    from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
    from torchvision.ops import FrozenBatchNorm2d

    torch.manual_seed(0)
    device, n = cfg.MODEL.DEVICE, cfg.SOLVER.IMS_PER_GPU
    reset_peak_memory(device)
    trunk = torchvision.models.resnet50(weights=None, norm_layer=FrozenBatchNorm2d)
    model = MaskRCNN(_resnet_fpn_extractor(trunk, 3), num_classes=cfg.MODEL.ROI_HEADS.NUM_CLASSES + 1,
                     min_size=min(height, width), max_size=max(height, width)).to(device)
    res: Dict[str, object] = {"model": "torchvision maskrcnn_resnet50_fpn", "input": f"{height}x{width}",
                              "images_per_step": n}
    images, targets = _torchvision_inputs(
        synthetic_batch(n, height, width, num_classes=cfg.MODEL.ROI_HEADS.NUM_CLASSES), device)
    if task == "train":
        times = time_training_steps(_TorchvisionStep(model), (images, targets), warmup=warmup, iters=iters,
                                    device=device, amp=cfg.SOLVER.AMP.ENABLED)
        res["s_per_iter"] = statistics.median(times)
        res["images_per_s"] = n / res["s_per_iter"]
    else:
        model.eval()
        amp = torch.device(device).type == "cuda" and cfg.TEST.AMP  # as detgn's model does under TEST.AMP
        with torch.no_grad(), (torch.autocast("cuda", dtype=torch.float16) if amp else contextlib.nullcontext()):
            times = _time_calls(lambda: model(images[:1]), warmup=warmup, iters=iters, device=device)
        res["s_per_image"] = statistics.median(times)
        res["images_per_s"] = 1.0 / res["s_per_image"]
    res["peak_mem_mb"] = peak_memory_mb(device)
    res["params"] = sum(p.numel() for p in model.parameters())
    return res


# The speed modes ``tools/benchmark.py --modes`` compares, as config overrides: today's fp32
# (no bf16, contiguous NCHW tensors), plain bf16 autocast (what a user wrapping
# ``torch.autocast`` around the same model gets), and the config as given (``CPU.BF16 auto``
# and the config's ``CPU.CHANNELS_LAST``: what a user gets by default), and the defaults with
# the backbone under ``torch.compile`` (``MODEL.COMPILE backbone``; compare it with ``default``).
SPEED_MODES = {
    "fp32": ("CPU.BF16", "off", "CPU.CHANNELS_LAST", "False"),
    "autocast": ("CPU.BF16", "on", "CPU.CHANNELS_LAST", "False"),
    "autocast_cl": ("CPU.BF16", "on", "CPU.CHANNELS_LAST", "True"),
    "fp32_cl": ("CPU.BF16", "off", "CPU.CHANNELS_LAST", "True"),
    "compiled": ("MODEL.COMPILE", "backbone"),
    "default": (),
}


def _benchmark_in_child(config: str, opts: List[str], task: str, sizes: Dict) -> Dict[str, object]:
    from detgn.config import load_config

    cfg = load_config(config, list(opts) + ["VERBOSE_STARTUP", "False"])
    if cfg.CPU.NUM_THREADS > 0:
        torch.set_num_threads(cfg.CPU.NUM_THREADS)
    res = benchmark_model(cfg, task, **sizes)
    res["bf16"] = resolve_bf16(cfg.CPU.BF16, cfg.MODEL.DEVICE).enabled
    res["channels_last"] = bool(cfg.CPU.CHANNELS_LAST)
    return res


def compare_modes(config: str, opts: List[str], task: str, modes: List[str], **sizes) -> List[Dict[str, object]]:
    """:func:`benchmark_model` of one config in each of ``modes`` (:data:`SPEED_MODES`), each in a
    fresh process (so each peak memory is its own), with each mode's time as a ratio of the
    first mode's (and of ``autocast``'s when it is measured)."""
    import multiprocessing

    unknown = [m for m in modes if m not in SPEED_MODES]
    if unknown:
        raise ValueError(f"unknown speed mode(s) {unknown}; choose from {sorted(SPEED_MODES)}")
    key = "s_per_iter" if task == "train" else "s_per_image"
    ctx = multiprocessing.get_context("spawn")
    results = []
    for mode in modes:
        with ctx.Pool(1) as pool:
            r = pool.apply(_benchmark_in_child, (config, [*opts, *SPEED_MODES[mode]], task, sizes))
        results.append({"config": config, "mode": mode, **r})
    autocast = next((x[key] for x in results if x["mode"] == "autocast"), None)
    for r in results:
        r[f"ratio_to_{modes[0]}"] = r[key] / results[0][key]
        if autocast is not None:
            r["ratio_to_autocast"] = r[key] / autocast
    return results
