"""Checkpointer: atomic writes, keep-last-K, corrupt files, weights_only loading.

load_weights (pre-trained and foreign weights) is tested in test_load_weights.py.
"""
import os
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "engine"))
from engine_toys import ToyModel  # noqa: E402

import detgn.checkpoint.checkpointer as ckpt_mod  # noqa: E402
from detgn.checkpoint import (  # noqa: E402
    Checkpointer,
    CheckpointError,
    list_checkpoints,
    load_checkpoint_file,
    load_weights,
    verify_checkpoint,
)
from detgn.solver import Schedule, WarmupMultiStepLR  # noqa: E402

SCHED = Schedule(ims_per_batch=2, base_lr=0.1, max_iter=10, steps=(5,), warmup_iters=2,
                 warmup_factor=0.5, gamma=0.1, checkpoint_period=2, eval_period=0)


def _setup(tmp_path, **kw):
    torch.manual_seed(0)
    model = ToyModel()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    sched = WarmupMultiStepLR(opt, milestones=[5], warmup_iters=2, warmup_factor=0.5)
    ck = Checkpointer(model, str(tmp_path), optimizer=opt, scheduler=sched, schedule=SCHED, **kw)
    return model, opt, sched, ck


def test_checkpoint_content_loads_weights_only(tmp_path):
    model, opt, sched, ck = _setup(tmp_path)
    path = ck.save("model_0000003", iteration=4)
    assert os.path.basename(path) == "model_0000003.pth"
    data = torch.load(path, weights_only=True)  # must not need pickle
    assert data["iteration"] == 4 and data["format_version"] == 1
    assert set(data) >= {"model", "optimizer", "scheduler", "rng_states", "schedule", "iteration"}
    assert data["schedule"]["max_iter"] == 10
    rng = data["rng_states"][0]
    assert set(rng) >= {"python", "numpy", "torch"}
    assert (tmp_path / "last_checkpoint").read_text().strip() == "model_0000003.pth"


def test_failure_mid_save_leaves_previous_file_intact(tmp_path, monkeypatch):
    model, opt, sched, ck = _setup(tmp_path)
    good = ck.save("model_final", iteration=10)
    before = Path(good).read_bytes()

    def exploding_save(obj, f, *a, **k):
        f.write(b"PK\x03\x04 partial bytes of a checkpoint")
        raise OSError("disk full (simulated)")

    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    monkeypatch.setattr(ckpt_mod.torch, "save", exploding_save)
    with pytest.raises(OSError, match="disk full"):
        ck.save("model_final", iteration=10)
    assert Path(good).read_bytes() == before
    assert verify_checkpoint(good) is None
    assert sorted(os.listdir(tmp_path)) == ["last_checkpoint", "model_final.pth"]  # no temp file left


def test_keep_last_k_and_final(tmp_path):
    model, opt, sched, ck = _setup(tmp_path, max_to_keep=2)
    for it in (1, 3, 5, 7, 9):
        ck.save(f"model_{it:07d}", iteration=it + 1)
    ck.save("model_final", iteration=12)
    names = sorted(os.listdir(tmp_path))
    assert names == ["last_checkpoint", "model_0000007.pth", "model_0000009.pth", "model_final.pth"]
    assert [os.path.basename(p) for p in list_checkpoints(str(tmp_path))] == [
        "model_final.pth", "model_0000009.pth", "model_0000007.pth"]


def test_stale_temp_file_from_killed_save_is_removed(tmp_path):
    model, opt, sched, ck = _setup(tmp_path)
    ck.save("model_0000001", iteration=2)
    (tmp_path / ".model_0000003.pth.abc123.tmp").write_bytes(b"PK half")
    state = ck.resume_or_load("", resume=True)
    assert state.start_iter == 2
    assert not (tmp_path / ".model_0000003.pth.abc123.tmp").exists()


@pytest.mark.parametrize("damage", ["truncate", "flip", "empty"])
def test_corrupt_checkpoint_names_file_and_previous_good(tmp_path, damage):
    model, opt, sched, ck = _setup(tmp_path)
    for it in (1, 3, 5):
        ck.save(f"model_{it:07d}", iteration=it + 1)
    bad = tmp_path / "model_0000005.pth"
    data = bytearray(bad.read_bytes())
    if damage == "truncate":
        bad.write_bytes(bytes(data[: len(data) // 2]))
    elif damage == "flip":
        data[len(data) // 2] ^= 0xFF
        bad.write_bytes(bytes(data))
    else:
        bad.write_bytes(b"")
    with pytest.raises(CheckpointError) as e:
        load_checkpoint_file(str(bad))
    msg = str(e.value)
    print(msg)
    assert str(bad) in msg and "truncated or corrupt" in msg
    assert "model_0000003.pth" in msg  # the previous good one
    with pytest.raises(CheckpointError, match="model_0000003.pth"):
        load_weights(ToyModel(), str(bad))


def test_resume_skips_corrupt_newest_and_says_which(tmp_path, caplog):
    model, opt, sched, ck = _setup(tmp_path)
    for it in (1, 3):
        ck.save(f"model_{it:07d}", iteration=it + 1)
    newest = tmp_path / "model_0000003.pth"
    newest.write_bytes(newest.read_bytes()[:1000])
    _, _, _, ck2 = _setup(tmp_path)
    with caplog.at_level("INFO", logger="detgn"):
        state = ck2.resume_or_load("", resume=True)
    assert state.start_iter == 2
    assert state.path.endswith("model_0000001.pth")
    text = caplog.text
    assert "Skipping checkpoint" in text and "model_0000003.pth" in text
    assert "Resuming from" in text and "model_0000001.pth" in text


def test_no_good_checkpoint_left(tmp_path):
    model, opt, sched, ck = _setup(tmp_path)
    p = ck.save("model_0000001", iteration=2)
    Path(p).write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="No other good checkpoint"):
        load_checkpoint_file(p)


def test_pretrained_weights_never_restore_training_state(tmp_path):
    model, opt, sched, ck = _setup(tmp_path / "a")
    for _ in range(3):
        opt.step(); sched.step()
    path = ck.save("model_final", iteration=7)
    model2, opt2, sched2, ck2 = _setup(tmp_path / "b")
    with torch.no_grad():
        for p in model2.parameters():
            p.zero_()
    state = ck2.resume_or_load(path, resume=True)  # nothing to resume in b: load weights only
    assert state.start_iter == 0 and state.rng_state is None
    assert opt2.state_dict()["state"] == {}
    assert sched2.last_epoch == 0
    for (k, a), b in zip(model.state_dict().items(), model2.state_dict().values()):
        assert torch.equal(a, b), k


class _Scale:
    """Stands in for the AMP GradScaler: any object with state_dict/load_state_dict."""

    def __init__(self, scale):
        self.scale = scale

    def state_dict(self):
        return {"scale": self.scale}

    def load_state_dict(self, d):
        self.scale = d["scale"]


def test_extra_checkpointables_are_saved_and_restored(tmp_path):
    model, opt, sched, ck = _setup(tmp_path)
    ck.add_checkpointable("grad_scaler", _Scale(1024.0))
    ck.save("model_0000001", iteration=2)
    _, _, _, ck2 = _setup(tmp_path)
    restored = _Scale(65536.0)
    ck2.add_checkpointable("grad_scaler", restored)
    ck2.resume_or_load("", resume=True)
    assert restored.scale == 1024.0
    with pytest.raises(ValueError, match="reserved"):
        ck2.add_checkpointable("optimizer", _Scale(1.0))
