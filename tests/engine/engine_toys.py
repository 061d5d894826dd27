"""Toy model, toy data stream and a tiny config shared by the engine/checkpoint tests.

The model has a GroupNorm, a BatchNorm, a LayerNorm, dropout and a frozen parameter,
and its loss draws from python ``random``, numpy and torch global RNGs, so the tests
of parameter groups and of exact resume exercise every case. The data stream is
deterministic per position: batch ``k`` depends only on ``(seed, k)``.
"""
from __future__ import annotations

import itertools
import random

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from detgn.config import get_cfg


class ToyModel(nn.Module):
    def __init__(self, num_classes: int = 4):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.gn = nn.GroupNorm(2, 8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.ln = nn.LayerNorm(8)
        self.drop = nn.Dropout(0.3)
        self.fc = nn.Linear(8, num_classes)
        self.frozen = nn.Linear(3, 3)
        for p in self.frozen.parameters():
            p.requires_grad_(False)
        self.nan_at = None  # iteration counter value at which to return a NaN loss

    def forward(self, batch):
        x = torch.stack([d["image"] for d in batch]).float() / 255.0
        x = F.relu(self.gn(self.conv1(x)))
        x = F.relu(self.bn(self.conv2(x)))
        x = self.ln(x.mean(dim=(2, 3)))
        logits = self.fc(self.drop(x))
        labels = torch.tensor([d["label"] for d in batch])
        # Global RNG draws standing in for the RPN/RoI samplers of the real model.
        jitter = 1.0 + 0.01 * random.random() + 0.01 * float(np.random.rand())
        perm = torch.randperm(len(batch))
        loss_cls = F.cross_entropy(logits[perm], labels[perm]) * jitter
        loss_reg = 0.01 * logits.pow(2).mean()
        if self.nan_at is not None and batch[0]["iteration"] == self.nan_at:
            loss_reg = loss_reg * float("nan")
        return {"loss_cls": loss_cls, "loss_reg": loss_reg}


def toy_loader_fn(seed: int = 0, ims_per_batch: int = 2, size: int = 12, rank: int = 0):
    """``start_iter -> infinite iterator of batches``; batch k depends only on (seed, k, rank)."""

    def make(start_iter: int):
        for it in itertools.count(start_iter):
            rng = np.random.default_rng([seed, it, rank])
            batch = []
            for j in range(ims_per_batch):
                batch.append(
                    {
                        "image": torch.from_numpy(rng.integers(0, 256, (3, size, size), dtype=np.uint8)),
                        "label": int(rng.integers(0, 4)),
                        "image_id": it * ims_per_batch + j,
                        "iteration": it,
                    }
                )
            yield batch

    return make


def toy_cfg(output_dir, **overrides):
    """A config whose schedule runs 10 iterations of 2 images with no rescaling."""
    cfg = get_cfg()
    cfg.OUTPUT_DIR = str(output_dir)
    cfg.SOLVER.IMS_PER_GPU = 2
    cfg.SOLVER.REFERENCE_IMS_PER_BATCH = 2
    cfg.SOLVER.BASE_LR = 0.05
    cfg.SOLVER.MAX_ITER = 10
    cfg.SOLVER.STEPS = (5, 8)
    cfg.SOLVER.WARMUP_ITERS = 3
    cfg.SOLVER.CHECKPOINT_PERIOD = 2
    cfg.SOLVER.MAX_TO_KEEP = 10
    cfg.TEST.EVAL_PERIOD = 0
    cfg.LOG_PERIOD = 2
    cfg.VERBOSE_STARTUP = False
    for k, v in overrides.items():
        node = cfg
        parts = k.split(".")
        for p in parts[:-1]:
            node = node[p]
        node[parts[-1]] = v
    return cfg


def make_toy_trainer(output_dir, *, writers=(), eval_fn=None, seed=0, **overrides):
    """The real ``build_trainer`` on the toy model, toy stream and :func:`toy_cfg`."""
    from detgn.engine import build_trainer
    from detgn.utils import comm
    from detgn.utils.seed import seed_all_rng

    cfg = toy_cfg(output_dir, **overrides)
    seed_all_rng(seed + comm.get_rank())
    model = ToyModel()
    trainer = build_trainer(
        cfg,
        model,
        data_loader_fn=toy_loader_fn(ims_per_batch=cfg.SOLVER.IMS_PER_GPU, rank=comm.get_rank()),
        eval_fn=eval_fn,
        writers=list(writers),
    )
    trainer.toy_model = model
    return trainer


class StopRun(Exception):
    """Raised by :class:`StopAfter` to simulate an interruption."""


def stop_after(n: int):
    """A hook that raises :class:`StopRun` once ``n`` iterations completed (after their checkpoint)."""
    from detgn.engine import HookBase

    class StopAfter(HookBase):
        def after_step(self):
            if self.trainer.iter + 1 == n:
                raise StopRun(f"stopped after {n} iterations")

    return StopAfter()


# 2 processes x 1 image = the toy reference batch of 2: the schedule is not rescaled.
DDP_OVERRIDES = {"SOLVER.MAX_ITER": 8, "SOLVER.STEPS": (5,), "SOLVER.IMS_PER_GPU": 1}


def ddp_worker(out_dir: str) -> None:
    """Per process of a 2-process gloo run: full run vs interrupted + resumed run, weights to a file."""
    import os

    import torch.distributed as dist

    from detgn.engine import init_distributed
    from detgn.utils.logger import setup_logger

    torch.set_num_threads(1)
    info = init_distributed("cpu")
    setup_logger(os.path.join(out_dir, "part"), rank=info.rank)
    full = make_toy_trainer(os.path.join(out_dir, "full"), **DDP_OVERRIDES)
    is_ddp = isinstance(full.model, torch.nn.parallel.DistributedDataParallel)
    full.resume_or_load("", resume=True)
    full.train()
    part = make_toy_trainer(os.path.join(out_dir, "part"), **DDP_OVERRIDES)
    part.register_hooks([stop_after(5)])
    part.resume_or_load("", resume=True)
    try:
        part.train()
    except StopRun:
        pass
    resumed = make_toy_trainer(os.path.join(out_dir, "part"), seed=7, **DDP_OVERRIDES)
    start = resumed.resume_or_load("", resume=True)
    resumed.train()
    torch.save(
        {
            "world_size": info.world_size,
            "backend": info.backend,
            "is_ddp": is_ddp,
            "start": start,
            "full": full.toy_model.state_dict(),
            "resumed": resumed.toy_model.state_dict(),
        },
        os.path.join(out_dir, f"rank{info.rank}.pt"),
    )
    dist.barrier()
    dist.destroy_process_group()


try:
    import pytest

    @pytest.fixture
    def single_thread():
        """One intra-op thread: on a shared 2-core machine, two spinning threads make toy steps 10x slower."""
        before = torch.get_num_threads()
        torch.set_num_threads(1)
        yield
        torch.set_num_threads(before)

except ImportError:  # used by the subprocess scripts, which need no fixture
    pass
