"""SOLVER.GRAD_ACCUM_STEPS: k batches of IMS_PER_GPU images per optimizer step.

What a user relies on: with per-sample norms a step on k accumulated batches is the step on
one batch of k x IMS_PER_GPU images (same LR by the linear rule, same iterations); BN still
normalises IMS_PER_GPU images; resume is exact; 2 DDP processes accumulate the same way.
"""
import itertools
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from engine_toys import StopRun, make_toy_trainer, single_thread, stop_after, toy_cfg  # noqa: E402,F401

from detgn.config import ConfigError, load_config  # noqa: E402
from detgn.engine import build_trainer, launch  # noqa: E402
from detgn.utils.events import JSONWriter, read_metrics  # noqa: E402

pytestmark = pytest.mark.usefixtures("single_thread")


class PerSampleNet(nn.Module):
    """conv - GN - conv - BN (optional) - pool - fc; with ``bn=False`` every image's loss depends on it alone."""

    def __init__(self, bn: bool = False):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.gn = nn.GroupNorm(2, 8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8) if bn else nn.Identity()
        self.fc = nn.Linear(8, 4)
        self.seen = []  # image ids per forward

    def forward(self, batch):
        self.seen.append([d["image_id"] for d in batch])
        x = torch.stack([d["image"] for d in batch]).float() / 255.0
        x = F.relu(self.gn(self.conv1(x)))
        x = F.relu(self.bn(self.conv2(x)))
        logits = self.fc(x.mean(dim=(2, 3)))
        labels = torch.tensor([d["label"] for d in batch])
        return {"loss_cls": F.cross_entropy(logits, labels), "loss_reg": 1e-3 * logits.pow(2).mean()}


def image_stream(batch_size: int, rank: int = 0, size: int = 10):
    """``start_batch -> batches``; image n of a rank depends only on (n, rank), so batches of 4
    are the concatenation of 2 batches of 2 (the stream a real loader gives)."""

    def make(start_batch: int):
        for b in itertools.count(start_batch):
            batch = []
            for n in range(b * batch_size, (b + 1) * batch_size):
                rng = np.random.default_rng([n, rank])
                batch.append({"image": torch.from_numpy(rng.integers(0, 256, (3, size, size), dtype=np.uint8)),
                              "label": int(rng.integers(0, 4)), "image_id": n})
            yield batch

    return make


def _train(out, ims, accum, *, bn=False, max_iter=6, rank=0, **overrides):
    torch.manual_seed(0)
    model = PerSampleNet(bn=bn)
    cfg = toy_cfg(out, **{"SOLVER.IMS_PER_GPU": ims, "SOLVER.GRAD_ACCUM_STEPS": accum,
                          "SOLVER.REFERENCE_IMS_PER_BATCH": 4, "SOLVER.MAX_ITER": max_iter, "SOLVER.STEPS": (4,),
                          "SOLVER.WARMUP_ITERS": 2,
                          # fp32: the equalities below are of float sums; bf16 rounds each batch's convs
                          "CPU.BF16": "off", **overrides})
    trainer = build_trainer(cfg, model, data_loader_fn=image_stream(ims, rank=rank),
                            writers=[JSONWriter(os.path.join(str(out), "metrics.json"))])
    trainer.resume_or_load("", resume=False)
    trainer.train()
    return trainer, model


def _params(model):
    return {k: v.detach().clone() for k, v in model.named_parameters()}


def test_accumulated_steps_equal_one_big_batch_for_per_sample_norms(tmp_path):
    big, big_model = _train(tmp_path / "b4", 4, 1)
    for ims, accum in ((2, 2), (1, 4)):
        t, m = _train(tmp_path / f"b{ims}x{accum}", ims, accum)
        # The linear rule and the schedule see 4 images per iteration in every run.
        assert t.schedule == big.schedule and t.schedule.ims_per_batch == 4 and t.max_iter == 6
        # Each step took the same 4 images, in batches of ``ims``.
        assert len(m.seen) == 6 * accum and all(len(s) == ims for s in m.seen)
        assert sum(m.seen, []) == sum(big_model.seen, [])
        for k, v in _params(big_model).items():
            torch.testing.assert_close(_params(m)[k], v, rtol=1e-5, atol=1e-6, msg=k)
        # Logged losses are the step's mean, as with one batch.
        a = read_metrics(str(tmp_path / "b4" / "metrics.json"))
        b = read_metrics(str(tmp_path / f"b{ims}x{accum}" / "metrics.json"))
        assert [r["iteration"] for r in a] == [r["iteration"] for r in b]
        for ra, rb in zip(a, b):
            assert rb["total_loss"] == pytest.approx(ra["total_loss"], rel=1e-5)


def test_bn_normalises_each_accumulated_batch_on_its_own(tmp_path):
    _, big = _train(tmp_path / "b4", 4, 1, bn=True, max_iter=3)
    _, acc = _train(tmp_path / "b2x2", 2, 2, bn=True, max_iter=3)
    # The running averages are updated once per batch of 2 ...
    assert int(big.bn.num_batches_tracked) == 3 and int(acc.bn.num_batches_tracked) == 6
    # ... so the updates differ from a batch of 4 (BN's statistics are per batch).
    assert not torch.allclose(big.fc.weight, acc.fc.weight, rtol=1e-4, atol=1e-5)


def test_resume_is_exact_with_accumulation(tmp_path):
    kw = {"SOLVER.IMS_PER_GPU": 1, "SOLVER.GRAD_ACCUM_STEPS": 2, "SOLVER.REFERENCE_IMS_PER_BATCH": 2}
    full = make_toy_trainer(tmp_path / "full", **kw)  # the toy model: BN, dropout, global RNG draws
    full.resume_or_load("", resume=True)
    full.train()
    assert full.max_iter == 10
    out = tmp_path / "part"
    first = make_toy_trainer(out, **kw)
    first.register_hooks([stop_after(7)])
    first.resume_or_load("", resume=True)
    with pytest.raises(StopRun):
        first.train()
    second = make_toy_trainer(out, seed=5, **kw)
    assert second.resume_or_load("", resume=True) == 6
    second.train()
    for k, v in full.toy_model.state_dict().items():
        assert torch.equal(v, second.toy_model.state_dict()[k]), k


def test_bad_value_is_a_config_error():
    with pytest.raises(ConfigError, match="GRAD_ACCUM_STEPS must be >= 1"):
        load_config(None, ["SOLVER.GRAD_ACCUM_STEPS", "0"])


def _ddp_accum_worker(out_dir: str) -> None:
    import torch.distributed as dist

    from detgn.engine import init_distributed

    torch.set_num_threads(1)
    info = init_distributed("cpu")
    results = {}
    for ims, accum in ((2, 1), (1, 2)):
        t, m = _train(os.path.join(out_dir, f"b{ims}x{accum}"), ims, accum, max_iter=4, rank=info.rank,
                      **{"SOLVER.CHECKPOINT_PERIOD": 0})
        assert isinstance(t.model, nn.parallel.DistributedDataParallel)
        results[f"{ims}x{accum}"] = _params(m)
    torch.save(results, os.path.join(out_dir, f"rank{info.rank}.pt"))
    dist.barrier()
    dist.destroy_process_group()


def test_two_processes_accumulate_like_one_batch(tmp_path, monkeypatch):
    """2 gloo processes x 1 image x 2 batches == 2 processes x 2 images: the no_sync batches'
    gradients reach the all-reduce of the last one."""
    for var in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    launch(_ddp_accum_worker, 2, args=(str(tmp_path),))
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    for res in ranks:
        for k, v in res["2x1"].items():
            torch.testing.assert_close(res["1x2"][k], v, rtol=1e-5, atol=1e-6, msg=k)
    for k, v in ranks[0]["1x2"].items():
        assert torch.equal(v, ranks[1]["1x2"][k]), k


def test_resume_with_accumulation_and_unreadable_files_continues_the_stream(tmp_path):
    """The real loader (4 of 10 files unreadable, skipped) under 2 accumulated batches per
    step: the resumed run reads exactly the batches the uninterrupted one read after the
    checkpoint, and never the known bad files again."""
    sys.path.insert(0, str(HERE.parent / "data"))
    from test_bad_images import BAD, CountingMapper, make_records, reads

    from detgn.data import BadImageTracker
    from detgn.data.build import make_train_loader

    records = make_records(tmp_path / "images")

    class IdModel(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.ones(1))
            self.seen = []

        def forward(self, batch):
            self.seen.append([d["image_id"] for d in batch])
            x = torch.stack([d["image"].float().mean() / 255 for d in batch])
            return {"loss": ((x - 0.3) * self.w).pow(2).mean()}

    def run(out, log, *, stop=None):
        model, tracker = IdModel(), BadImageTracker(max_bad_images=4)
        cfg = toy_cfg(out, **{"SOLVER.IMS_PER_GPU": 1, "SOLVER.GRAD_ACCUM_STEPS": 2, "SOLVER.MAX_ITER": 8,
                              "SOLVER.STEPS": (5,)})
        t = build_trainer(cfg, model, bad_images=tracker, writers=[], data_loader_fn=lambda s: make_train_loader(
            records, mapper=CountingMapper(log), batch_size=1, seed=5, start_batch=s, bad_images=tracker))
        if stop:
            t.register_hooks([stop_after(stop)])
        start = t.resume_or_load("", resume=True)
        try:
            t.train()
        except StopRun:
            pass
        return start, model

    _, full = run(tmp_path / "full", tmp_path / "full.txt")
    assert len(full.seen) == 16  # 8 steps x 2 batches
    run(tmp_path / "part", tmp_path / "part.txt", stop=5)  # last checkpoint: after 4 steps
    start, resumed = run(tmp_path / "part", tmp_path / "resumed.txt")
    assert start == 4
    assert resumed.seen == full.seen[8:]
    bad_files = {records[i]["file_name"] for i in BAD}
    assert bad_files <= set(reads(tmp_path / "part.txt"))  # found before the interruption ...
    assert not set(reads(tmp_path / "resumed.txt")) & bad_files  # ... and not read again
    assert torch.equal(resumed.w, full.w)
