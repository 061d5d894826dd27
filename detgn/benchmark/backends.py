"""Inference speed of one model on every backend, in one process, on the same images.

``tools/benchmark.py --task inference --backend torch,torch_bf16,onnxruntime,openvino`` runs
this. Backends:

- ``torch``: the eager model in fp32 (``CPU.BF16 off``), as ``Predictor`` runs it;
- ``torch_bf16``: the same model under bfloat16 autocast (``CPU.BF16 on``);
- ``onnxruntime`` / ``openvino``: the model exported to ONNX, run by
  :class:`~detgn.export.ExportedPredictor` (``openvino_bf16``: OpenVINO with its bf16
  inference precision, the plugin's default on CPUs with native bf16);
- ``torch_export``: the ``torch.export`` program.

Every backend gets the same images, already at the size the resize rule gives (so the
runtime's resize is a no-op and everything timed is the model, its post-processing and the
mask paste). Backends take turns image by image, so a slow phase of the machine hits all of
them alike. Each backend's detections are matched against the fp32 eager model's
(:func:`~detgn.export.compare.match_detections`), so a fast backend that is wrong shows.
"""
from __future__ import annotations

import statistics
import tempfile
import time
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

from detgn.export.compare import match_detections, rules_of_model

__all__ = ["BENCH_BACKENDS", "benchmark_backends", "calibrate_frozen_bn", "make_random_weights_decisive"]

BENCH_BACKENDS = ("torch", "torch_bf16", "onnxruntime", "openvino", "openvino_bf16", "torch_export")


@torch.no_grad()
def calibrate_frozen_bn(model: torch.nn.Module, image: np.ndarray) -> int:
    """Give a randomly initialised model's frozen BN layers the statistics of their inputs.

    Frozen BN with its initial statistics (mean 0, variance 1) normalises nothing, so a random
    R50 BN* model's activations grow layer by layer to values no trained model has, and every
    float rounding difference (another kernel, a folded conv) is amplified with them. One forward
    pass on ``image`` sets each layer's mean and variance from its own input, in order, as a
    trained model's layers roughly have. Returns the number of layers set.
    """
    from detgn.layers import FrozenBatchNorm2d

    def set_stats(layer, inputs):
        x = inputs[0].float()
        layer.running_mean.copy_(x.mean(dim=(0, 2, 3)))
        layer.running_var.copy_(x.var(dim=(0, 2, 3), unbiased=False))

    handles = [m.register_forward_pre_hook(set_stats) for m in model.modules() if isinstance(m, FrozenBatchNorm2d)]
    try:
        if handles:
            was_training = model.training
            model.eval()
            chw = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))
            model([{"image": chw, "height": image.shape[0], "width": image.shape[1]}])
            model.train(was_training)
    finally:
        for h in handles:
            h.remove()
    return len(handles)


@torch.no_grad()
def make_random_weights_decisive(model: torch.nn.Module, image: Optional[np.ndarray] = None) -> None:
    """Make a randomly initialised detector's outputs as distinct as a trained one's.

    Random weights give every class a probability near 1/(K+1) and every mask pixel a
    probability near 0.5 +- 1e-6, where the last bit of any float sum reorders detections and
    flips pixels; equality checks and benchmarks on such a model measure noise. This scales the
    class logits x30 and the mask logits x300 (trained heads' logits are that far from 0), sets
    the mask logits' bias to -1 and, given an image, sets frozen-BN statistics from it (:func:`calibrate_frozen_bn`). Used only
    where no weights are given (``tools/check_export.py``, ``tools/benchmark.py --backend``).
    """
    if image is not None:
        calibrate_frozen_bn(model, image)
    heads = model.roi_heads
    heads.box_predictor.cls_score.weight.mul_(30.0)
    mask_head = getattr(heads, "mask_head", None)
    if mask_head is not None:
        mask_head.mask_fcn_logits.weight.mul_(300.0)
        # Where the features are all zero (ReLU), a logit is its bias: 0 at initialisation, a
        # probability of exactly 0.5 that any float error flips. A trained head's bias is not 0.
        if mask_head.mask_fcn_logits.bias is not None:
            mask_head.mask_fcn_logits.bias.fill_(-1.0)


def _eager(cfg, bf16: bool):
    from detgn.engine.predictor import Predictor

    cfg = cfg.clone()
    cfg.defrost()
    cfg.CPU.BF16 = "on" if bf16 else "off"
    return Predictor(cfg)


def benchmark_backends(cfg, backends: Sequence[str], *, height: int, width: int, warmup: int = 2, iters: int = 5,
                       seed: int = 0) -> List[Dict[str, object]]:
    """Median s/image of each backend on ``iters`` random (height, width) images (after ``warmup``).

    The config's weights are used when MODEL.WEIGHTS is set, else a seeded random initialisation
    made decisive by :func:`make_random_weights_decisive`.
    Returns one dict per backend: ``s_per_image`` (median), min, max, ``images_per_s``, the
    match against ``torch`` (``matches_fp32``, ``max_score_err``, ``min_mask_iou``), and the
    ratio to ``torch``'s median.
    """
    unknown = [b for b in backends if b not in BENCH_BACKENDS]
    if unknown:
        raise ValueError(f"unknown backend(s) {unknown}; choose from {BENCH_BACKENDS}")
    backends = ["torch"] + [b for b in backends if b != "torch"]  # the reference runs first
    torch.manual_seed(seed)
    predictors = {"torch": _eager(cfg, False)}
    model = predictors["torch"].model
    rules = rules_of_model(model)
    rng = np.random.default_rng(seed)
    if not cfg.MODEL.WEIGHTS:
        make_random_weights_decisive(model, rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
    exported = {}
    with tempfile.TemporaryDirectory(prefix="detgn_bench_") as tmp:
        for b in backends[1:]:
            if b == "torch_bf16":
                p = _eager(cfg, True)
                p.model.load_state_dict(model.state_dict())
                predictors[b] = p
                continue
            from detgn.export.exporter import export_detector, metadata_from_config
            from detgn.export.runtime import ExportedPredictor

            fmt = "torch_export" if b == "torch_export" else "onnx"
            if fmt not in exported:
                folder = f"{tmp}/{fmt}"
                t0 = time.perf_counter()
                export_detector(model, folder, fmt=fmt, metadata=metadata_from_config(cfg),
                                min_size_test=cfg.INPUT.MIN_SIZE_TEST, max_size_test=cfg.INPUT.MAX_SIZE_TEST,
                                verify=False)
                exported[fmt] = (folder, time.perf_counter() - t0)
            backend = {"onnxruntime": "onnxruntime", "openvino": "openvino", "openvino_bf16": "openvino",
                       "torch_export": "torch"}[b]
            precision = "bf16" if b.endswith("_bf16") else "fp32"
            predictors[b] = ExportedPredictor(exported[fmt][0], backend=backend, precision=precision)

        images = [rng.integers(0, 256, (height, width, 3), dtype=np.uint8) for _ in range(warmup + iters)]
        times: Dict[str, List[float]] = {b: [] for b in backends}
        outputs: Dict[str, list] = {b: [] for b in backends}
        for k, image in enumerate(images):
            for b in backends:  # round robin: every backend sees the machine in the same state
                t0 = time.perf_counter()
                with torch.no_grad():
                    out = predictors[b](image)
                dt = time.perf_counter() - t0
                if k >= warmup:
                    times[b].append(dt)
                    outputs[b].append(out)
    ref = statistics.median(times["torch"])
    results = []
    for b in backends:
        med = statistics.median(times[b])
        row: Dict[str, object] = {"backend": b, "input": f"{height}x{width}", "s_per_image": med,
                                  "min_s": min(times[b]), "max_s": max(times[b]), "images_per_s": 1.0 / med,
                                  "ratio_to_torch_fp32": med / ref,
                                  "detections_per_image": statistics.mean(len(o) for o in outputs[b])}
        if b != "torch":
            matches = [match_detections(r.pred_boxes.tensor, r.scores, r.pred_classes, o.pred_boxes.tensor, o.scores,
                                        o.pred_classes, r.get("pred_masks") if r.has("pred_masks") else None,
                                        o.get("pred_masks") if o.has("pred_masks") else None,
                                        rules=rules)
                       for r, o in zip(outputs["torch"], outputs[b])]
            row["matches_fp32"] = all(m.ok for m in matches)
            row["matched_fraction"] = (sum(m.count_ref - len(m.unmatched) for m in matches)
                                       / max(sum(m.count_ref for m in matches), 1))
            row["max_score_err"] = max(m.max_score_err for m in matches)
            ious = [m.min_mask_iou for m in matches if m.min_mask_iou is not None]
            row["min_mask_iou"] = min(ious) if ious else None
        fmt = "torch_export" if b == "torch_export" else ("onnx" if b in ("onnxruntime", "openvino", "openvino_bf16")
                                                          else None)
        if fmt:
            row["export_s"] = exported[fmt][1]
        results.append(row)
    return results
