"""The normalization study: one network, only the norm swapped, across batch sizes per process.

``tools/norm_study.py --preset cpu`` reproduces the GN paper's central finding (its Figure 1 /
5 and Table 1-2) at small scale: every cell trains the same classifier (the detectors' ResNet,
``configs/classification/norm_study_cpu.yaml``) with one norm and one batch size per process
on the synthetic shape set (:mod:`detgn.data.datasets.synthetic_cls`), for several seeds, and every
cell sees the same number of epochs. How steps relate to the batch is the preset's
``images_per_step`` (:func:`protocol`): the CPU preset steps on 32 images in every cell,
accumulating 32 / B batches of B images (as 32 / B processes of B images would), so only the
normalization batch changes between cells; the paper's own protocol (each cell steps on its
batch, LR by the linear rule, more steps for smaller batches) is ``--images-per-step 0``.

A BN cell trains with EvalNorm fitted online, which leaves its training bit for bit as it
would be without (see :mod:`detgn.layers.batch_norm`), so the one run is evaluated four ways:
plain BN (running averages), BN + EvalNorm (the online alpha/beta), BN + EvalNorm 1/B^2 and BN
+ PreciseBN (:func:`detgn.modeling.precise_bn.precise_bn`). For BN cells the per-layer
gap between the training-mode normalisation and the evaluation-mode one is measured too
(:func:`activation_gaps`, EvalNorm's Figure 1).

Each cell runs in its own process (``tools/norm_study.py --cell``), writes
``cell_result.json`` atomically, and is skipped when that file exists: an interrupted study
picks up where it stopped. :mod:`detgn.study.report` turns the cells into medians
with their spread, the table and the findings (re-exported here).
"""
from __future__ import annotations

import dataclasses
import logging
import math
import os
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Optional, Tuple

import torch
from torch import nn

from .report import (  # noqa: F401  (the study's results, re-exported)
    RESULT_FILE,
    VARIANTS,
    findings,
    load_results,
    markdown_table,
    summarize,
    summary_from_json,
)

logger = logging.getLogger(__name__)

__all__ = [
    "PRESETS",
    "StudyPreset",
    "Cell",
    "cells_of",
    "protocol",
    "cell_overrides",
    "evaluate_variants",
    "activation_gaps",
    "summarize",
    "findings",
    "markdown_table",
    "load_results",
    "summary_from_json",
    "RESULT_FILE",
    "VARIANTS",
]



@dataclass(frozen=True)
class StudyPreset:
    """What a study sweeps and on which data.

    Args:
        config: the cell config (a name under ``configs/``); cells override the norm keys,
            ``SOLVER.IMS_PER_GPU``, ``SEED`` and ``OUTPUT_DIR``.
        task: "classify" (the synthetic shape set, top-1 error) or "detect" (the synthetic
            COCO set, box AP).
        norms: the norms compared; "BN" cells also give the EvalNorm and PreciseBN rows.
        batches: images per process, in the order they are run.
        seeds: seeds per cell (the report gives medians and the spread over them).
        data: arguments of the data generator (classification: ``num_train``, ``num_val``,
            ``seed`` and :class:`detgn.data.datasets.synthetic_cls.ClsStyle` fields under ``style``).
        norm_keys: config keys set to the norm name in each cell.
        processes: processes per cell (SyncBN needs several; images per process stay ``batch``).
        jobs: cells run at once; threads: torch threads per cell process.
        precise_bn_images: images PreciseBN pools its statistics over (batches of the cell's size).
        images_per_step: images per optimizer step in every cell (per process); a cell of
            ``batch`` images sums the gradients of ``images_per_step / batch`` batches
            (``SOLVER.GRAD_ACCUM_STEPS``), as that many processes of ``batch`` images would:
            every cell takes the same steps at the same LR and only the normalization batch
            changes. 0: each cell steps on its own batch, the linear rule scales the LR and a
            fixed number of epochs gives small batches more steps (the GN paper's protocol,
            which needs schedules long enough to converge at every batch size).
        overrides: extra ``KEY VALUE`` pairs of every cell.
        about: what the preset is for (shown in the report).
    """

    config: str
    task: str = "classify"
    norms: Tuple[str, ...] = ("BN", "GN", "LN", "IN")
    batches: Tuple[int, ...] = (32, 16, 8, 4, 2)
    seeds: Tuple[int, ...] = (0, 1, 2)
    data: Dict = field(default_factory=dict)
    norm_keys: Tuple[str, ...] = ("MODEL.RESNETS.NORM",)
    processes: int = 1
    jobs: int = 2
    threads: int = 1
    precise_bn_images: int = 2000
    overrides: Tuple[str, ...] = ()
    about: str = ""
    images_per_step: int = 0

    def __post_init__(self):
        if self.images_per_step:
            bad = [b for b in self.batches if b <= 0 or self.images_per_step % b]
            if bad:
                raise ValueError(f"images_per_step {self.images_per_step} must be a multiple of every batch size; "
                                 f"{bad} are not")


_CPU_STYLE = {"background": [0.0, 0.5, 0.5], "object_scale": [0.6, 0.85], "max_rotation": 15.0,
              "contrast": [0.6, 1.6], "brightness": 40.0}

PRESETS: Dict[str, StudyPreset] = {
    # The committed figure: ~50 minutes on a 2-core CPU, 2 cells at once (4 norms x 5 batch sizes x 3 seeds).
    # 32 images per step in every cell (32 / batch accumulated batches): at a 10-epoch schedule
    # the paper's protocol (more steps for smaller batches) measures convergence, not the norm.
    "cpu": StudyPreset(
        config="classification/norm_study_cpu.yaml",
        data={"num_train": 3500, "num_val": 3000, "seed": 0, "style": dict(_CPU_STYLE, size=64)},
        images_per_step=32,
        about="ResNet-10 (16-128 channels; GN 16 per group), synthetic shapes 64 px, 3,500 train / 3,000 val, 10 epochs, "
              "LR 0.02 per 32 images after a 200-step warm-up, 3 seeds, CPU",
    ),
    # The same question at a scale closer to the paper's, for GPUs (one cell per GPU at a time):
    # a full-width ResNet-18 at 96 px, ~10x the images, 30 epochs, 5 seeds.
    "gpu": StudyPreset(
        config="classification/norm_study_cpu.yaml",
        seeds=(0, 1, 2, 3, 4),
        data={"num_train": 40000, "num_val": 5000, "seed": 0, "style": dict(_CPU_STYLE, size=96)},
        overrides=("MODEL.DEVICE", "cuda", "MODEL.RESNETS.DEPTH", "18", "MODEL.RESNETS.STEM_OUT_CHANNELS", "64",
                   "MODEL.RESNETS.RES2_OUT_CHANNELS", "64", "MODEL.GROUP_NORM.NUM_GROUPS", "32",
                   "MODEL.GROUP_NORM.DIM_PER_GP", "-1", "INPUT.CLASSIFY.TRAIN_CROP", "96",
                   "INPUT.CLASSIFY.TEST_RESIZE", "96", "INPUT.CLASSIFY.TEST_CROP", "96",
                   "SOLVER.MAX_ITER", "37500", "SOLVER.STEPS", "(26250, 33750)", "SOLVER.WARMUP_ITERS", "1875",
                   "SOLVER.BASE_LR", "0.1", "MODEL.RESNETS.ZERO_INIT_RESIDUAL", "True",
                   "DATALOADER.NUM_WORKERS", "4", "CPU.NUM_THREADS", "0"),
        jobs=1, threads=0, precise_bn_images=10000,
        about="ResNet-18 (64-512 channels), synthetic shapes 96 px, 40,000 train / 5,000 val, 30 epochs, "
              "the paper's LR 0.1 x batch / 32 and gamma-0 block ends, 5 seeds, "
              "GPU (set --jobs to the number of GPUs: each cell gets one through CUDA_VISIBLE_DEVICES)",
    ),
    # For tests: two norms, two batch sizes, one seed, a few dozen images, one epoch.
    "smoke": StudyPreset(
        config="classification/norm_study_cpu.yaml",
        norms=("BN", "GN"), batches=(4, 2), seeds=(0,), images_per_step=4,
        data={"num_train": 48, "num_val": 16, "seed": 0, "style": dict(_CPU_STYLE, size=32)},
        overrides=("INPUT.CLASSIFY.TRAIN_CROP", "32", "INPUT.CLASSIFY.TEST_RESIZE", "32",
                   "INPUT.CLASSIFY.TEST_CROP", "32", "SOLVER.MAX_ITER", "2", "SOLVER.STEPS", "(1,)",
                   "SOLVER.WARMUP_ITERS", "1", "MODEL.RESNETS.STEM_OUT_CHANNELS", "8",
                   "MODEL.RESNETS.RES2_OUT_CHANNELS", "8", "MODEL.GROUP_NORM.DIM_PER_GP", "4"),
        precise_bn_images=16,
        about="smoke test: 2 norms x 2 batch sizes x 1 seed on 48 images",
    ),
    # Detection: Mask R-CNN on the synthetic COCO set, the norm of backbone, FPN and both heads
    # swapped together, images per process x 8 processes (SyncBN syncs the 8). For GPUs.
    "detect_gpu": StudyPreset(
        config="synthetic/demo_gn_scratch.yaml",
        task="detect",
        norms=("BN", "GN", "SyncBN"),
        batches=(8, 4, 2, 1),
        seeds=(0, 1, 2),
        data={"num_train": 10000, "num_val": 500, "seed": 0},
        norm_keys=("MODEL.RESNETS.NORM", "MODEL.FPN.NORM", "MODEL.ROI_BOX_HEAD.NORM", "MODEL.ROI_MASK_HEAD.NORM"),
        processes=8, jobs=1, threads=0, precise_bn_images=2000,
        overrides=("MODEL.DEVICE", "cuda", "SOLVER.REFERENCE_IMS_PER_BATCH", "16", "SOLVER.BASE_LR", "0.02",
                   "SOLVER.MAX_ITER", "20000", "SOLVER.STEPS", "(15000, 18000)", "SOLVER.WARMUP_ITERS", "500",
                   "DATALOADER.NUM_WORKERS", "4", "CPU.NUM_THREADS", "0", "CPU.CHANNELS_LAST", "False"),
        about="Mask R-CNN R18-FPN from scratch on the synthetic COCO set (10,000 images), 8 GPUs, "
              "BN / BN+EvalNorm / BN+PreciseBN / GN / SyncBN in backbone, FPN and heads",
    ),
    # Its CPU smoke test: two norms, 1 image per process, a few iterations on tiny images.
    "detect_smoke": StudyPreset(
        config="synthetic/demo_gn_scratch.yaml",
        task="detect",
        norms=("BN", "GN"), batches=(2,), seeds=(0,),
        data={"num_train": 6, "num_val": 3, "seed": 0},
        norm_keys=("MODEL.RESNETS.NORM", "MODEL.FPN.NORM", "MODEL.ROI_BOX_HEAD.NORM", "MODEL.ROI_MASK_HEAD.NORM"),
        processes=1, jobs=1, precise_bn_images=4,
        overrides=("SOLVER.REFERENCE_IMS_PER_BATCH", "2", "SOLVER.MAX_ITER", "2", "SOLVER.STEPS", "(1,)",
                   "SOLVER.WARMUP_ITERS", "1", "INPUT.MIN_SIZE_TRAIN", "(128,)", "INPUT.MAX_SIZE_TRAIN", "160",
                   "INPUT.MIN_SIZE_TEST", "128", "INPUT.MAX_SIZE_TEST", "160", "DATALOADER.NUM_WORKERS", "0",
                   "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "16", "MODEL.RPN.POST_NMS_TOPK_TEST", "50",
                   "TEST.EVAL_PERIOD", "0", "SOLVER.CHECKPOINT_PERIOD", "100000"),
        about="smoke test of the detection sweep on the CPU",
    ),
}


@dataclass(frozen=True)
class Cell:
    """One training run of a study."""

    norm: str
    batch: int
    seed: int

    @property
    def name(self) -> str:
        return f"{self.norm}_b{self.batch}_s{self.seed}"

    @classmethod
    def from_name(cls, name: str) -> "Cell":
        """The inverse of :attr:`name` (``"GN_b8_s1"``)."""
        norm, b, s = name.rsplit("_", 2)
        if not (b.startswith("b") and s.startswith("s")):
            raise ValueError(f"Not a study cell name: {name!r} (expected NORM_b<batch>_s<seed>)")
        return cls(norm, int(b[1:]), int(s[1:]))


def cells_of(preset: StudyPreset) -> List[Cell]:
    """Every (norm, batch, seed) of the preset, small batches last within a seed (they take longest)."""
    return [Cell(n, b, s) for s in preset.seeds for b in preset.batches for n in preset.norms]


def protocol(preset: StudyPreset) -> str:
    """How the cells' optimizer steps relate to their batch (for the report)."""
    if preset.images_per_step:
        n = preset.images_per_step
        return (f"every cell steps on {n} images per process: a cell of B images per batch accumulates {n}/B batches "
                f"(SOLVER.GRAD_ACCUM_STEPS), as {n}/B processes of B images would, so all cells take the same steps "
                "at the same LR and only the normalization batch B changes")
    return ("each cell steps on its own batch of B images per process: the linear rule scales the LR by B and a fixed "
            "number of epochs gives smaller batches more steps (the GN paper's protocol)")


def cell_overrides(preset: StudyPreset, cell: Cell, output_dir: str) -> List[str]:
    """The ``KEY VALUE`` overrides of ``cell`` on top of ``preset.config``."""
    opts: List[str] = []
    for key in preset.norm_keys:
        opts += [key, cell.norm]
    if cell.norm == "BN":
        opts += ["MODEL.EVALNORM.ENABLED", "True", "MODEL.EVALNORM.MODE", "online"]
    opts += ["SOLVER.IMS_PER_GPU", str(cell.batch), "SEED", str(cell.seed), "OUTPUT_DIR", output_dir,
             "VERBOSE_STARTUP", "False"]
    if preset.images_per_step:
        opts += ["SOLVER.GRAD_ACCUM_STEPS", str(preset.images_per_step // cell.batch)]
    if preset.threads:
        opts += ["CPU.NUM_THREADS", str(preset.threads)]
    return opts + list(preset.overrides)


# ---------------------------------------------------------------------------- #
# Evaluating one trained cell
# ---------------------------------------------------------------------------- #
def _score(results: Dict, task: str) -> float:
    """The cell's number: top-1 error (%) for classification, box AP for detection."""
    if task == "classify":
        return float(results["classification"]["top1_err"])
    return float(results["bbox"]["AP"])


def _evaluate(cfg, model: nn.Module, output_dir: str) -> Dict:
    from detgn.evaluation import inference_on_dataset

    from detgn.engine.tasks import build_test_loader_and_evaluator

    name = cfg.DATASETS.TEST[0]
    loader, evaluator = build_test_loader_and_evaluator(cfg, name, output_dir=output_dir)
    return inference_on_dataset(model, loader, evaluator)


def evaluate_variants(cfg, model: nn.Module, *, task: str, output_dir: str, precise_bn_images: int) -> Dict[str, float]:
    """Scores of a trained BN model as plain BN, with EvalNorm (stored = online-fitted alpha,
    beta), with the 1/B^2 rule and after PreciseBN (last: it changes the running statistics)."""
    from detgn.data import BadImageTracker
    from detgn.layers import configure_evalnorm

    from detgn.engine.tasks import build_train_loader
    from detgn.modeling.precise_bn import precise_bn

    scores = {}
    for variant, enabled, mode in (("BN", False, "offline"), ("BN+EvalNorm", True, "offline"),
                                   ("BN+EvalNorm 1/B^2", True, "rule")):
        configure_evalnorm(model, enabled=enabled, mode=mode)
        scores[variant] = _score(_evaluate(cfg, model, os.path.join(output_dir, _slug(variant))), task)
    configure_evalnorm(model, enabled=False)
    batches = max(1, math.ceil(precise_bn_images / cfg.SOLVER.IMS_PER_GPU))
    precise_bn(model, build_train_loader(cfg, bad_images=BadImageTracker.from_config(cfg)), num_iter=batches,
               log_period=0)
    scores["BN+PreciseBN"] = _score(_evaluate(cfg, model, os.path.join(output_dir, "precise_bn")), task)
    return scores


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in text).strip("_").lower()


@torch.no_grad()
def activation_gaps(model: nn.Module, batches: Iterable, *, num_batches: int = 20,
                    histogram_layer: Optional[str] = None, histogram_values: int = 3000) -> Dict:
    """How far evaluation-mode BN is from training-mode BN, layer by layer (EvalNorm's Figure 1).

    For training batches (of the training batch size), each BN layer's input x is normalised
    three ways: by the batch statistics (what training did), by the running averages (plain
    evaluation, "EMA") and by EvalNorm with the layer's alpha, beta. The gap of a layer is
    the mean |training - evaluation| of the normalised values (eq. 9's loss). Nothing in the
    model changes.

    Returns:
        ``{"layers": [names], "ema": [gap per layer], "evalnorm": [gap per layer],
        "histogram": {"layer", "channel", "train", "ema", "evalnorm"}}`` (a sample of one
        channel's normalised values for the histogram figure).
    """
    from detgn.layers.batch_norm import evalnorm_aux_loss, evalnorm_moments, normalize_per_sample, sample_moments
    from detgn.layers.evalnorm_setup import evalnorm_layers

    layers = list(evalnorm_layers(model))
    if not layers:
        return {}
    sums = {name: [0.0, 0.0] for name, _ in layers}
    hist_name = histogram_layer or layers[len(layers) // 2][0]
    hist = {"train": [], "ema": [], "evalnorm": []}

    def hook_for(name, m):
        def hook(_mod, inputs):
            x = inputs[0].float()
            rm, rv = m.running_mean.float(), m.running_var.float()
            zero = torch.zeros((), device=x.device)
            sums[name][0] += float(evalnorm_aux_loss(x, rm, rv, zero, zero, m.eps))
            a, b = m.evalnorm_weights()
            sums[name][1] += float(evalnorm_aux_loss(x, rm, m.biased_running_var().float(), a, b, m.eps))
            if name == hist_name and len(hist["train"]) * x.shape[0] < histogram_values:
                var_b, mu_b = torch.var_mean(x, dim=[0, 2, 3], correction=0)
                c = 0  # one channel, as in the paper's figure
                xc = x[:, c]
                hist["train"].append(((xc - mu_b[c]) * (var_b[c] + m.eps).rsqrt()).flatten())
                hist["ema"].append(((xc - rm[c]) * (rv[c] + m.eps).rsqrt()).flatten())
                mu_i, var_i = sample_moments(x)
                mu_hat, var_hat = evalnorm_moments(mu_i, var_i, rm, m.biased_running_var().float(), a, b)
                hist["evalnorm"].append(normalize_per_sample(x, mu_hat, var_hat, m.eps)[:, c].flatten())
        return hook

    handles = [m.register_forward_pre_hook(hook_for(name, m)) for name, m in layers]
    frozen = [(m, m.freeze_stats) for _, m in layers]
    was_training = model.training
    count = 0
    try:
        for m, _ in frozen:
            m.freeze_stats = True
        model.train()
        for count, batch in enumerate(batches, start=1):
            model(batch)
            if count >= num_batches:
                break
    finally:
        for h in handles:
            h.remove()
        for m, state in frozen:
            m.freeze_stats = state
        model.train(was_training)
    n = max(count, 1)
    cap = lambda parts: torch.cat(parts)[:histogram_values].tolist() if parts else []  # noqa: E731
    return {"layers": [name for name, _ in layers], "ema": [sums[k][0] / n for k, _ in layers],
            "evalnorm": [sums[k][1] / n for k, _ in layers], "batches": count,
            "histogram": {"layer": hist_name, "channel": 0, **{k: cap(v) for k, v in hist.items()}}}


def cell_result(cfg, model: nn.Module, cell: Cell, preset: StudyPreset, *, run_dir: str, final: Dict) -> Dict:
    """Everything a finished cell reports: its scores (all BN variants for BN) and, for BN, the gaps."""
    from detgn.layers import evalnorm_layers

    from detgn.engine.tasks import build_train_loader

    task = preset.task
    result = {"cell": dataclasses.asdict(cell), "task": task, "metric": "top1_err" if task == "classify" else "box AP"}
    if cell.norm == "BN":
        from detgn.data import BadImageTracker

        gaps = activation_gaps(model, build_train_loader(cfg, bad_images=BadImageTracker.from_config(cfg)))
        result["scores"] = evaluate_variants(cfg, model, task=task, output_dir=os.path.join(run_dir, "variants"),
                                             precise_bn_images=preset.precise_bn_images)
        result["gaps"] = gaps
        ab = [(float(m.evalnorm_alpha.detach()), float(m.evalnorm_beta.detach())) for _, m in evalnorm_layers(model)]
        result["alpha_beta"] = ab
    else:
        result["scores"] = {cell.norm: _score(final, task)}
    return result
