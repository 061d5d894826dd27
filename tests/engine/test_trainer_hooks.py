"""Trainer hooks and writers: NaN stop, console/JSON/TensorBoard output, curves, schedule changes."""
import json
import logging
import os
import sys
from pathlib import Path

import pytest
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from engine_toys import StopRun, make_toy_trainer, single_thread, stop_after  # noqa: E402,F401

from detgn.checkpoint import CheckpointError  # noqa: E402
from detgn.engine import NonFiniteLossError  # noqa: E402
from detgn.utils.events import ConsoleWriter, EventStorage, JSONWriter, TensorboardWriter, read_metrics  # noqa: E402
from detgn.utils.plot import curve_series  # noqa: E402

pytestmark = pytest.mark.usefixtures("single_thread")


def test_nan_loss_stops_with_iteration_terms_images_and_hint(tmp_path):
    t = make_toy_trainer(tmp_path, writers=[JSONWriter(str(tmp_path / "metrics.json"))])
    t.toy_model.nan_at = 3
    t.resume_or_load("", resume=False)
    with pytest.raises(NonFiniteLossError) as e:
        t.train()
    msg = str(e.value)
    print(msg)
    assert "not finite at iteration 3" in msg
    assert "loss_reg=nan <--" in msg and "loss_cls=" in msg
    assert "non-finite: loss_reg" in msg
    assert "image ids of the batch: [6, 7]" in msg
    assert "--num-gpus" in msg and "SOLVER.IMS_PER_GPU=2" in msg and "SOLVER.BASE_LR=0.05" in msg
    assert "linear scaling rule" in msg
    # The step was not taken and nothing after it was saved.
    assert (tmp_path / "last_checkpoint").read_text().strip() == "model_0000001.pth"


def test_console_and_json_writers(tmp_path, caplog):
    metrics = tmp_path / "metrics.json"
    t = make_toy_trainer(
        tmp_path,
        eval_fn=lambda: {"bbox": {"AP": 12.5, "AP50": 30.0}, "segm": {"AP": 10.0}},
        writers=[ConsoleWriter(show_memory=False), JSONWriter(str(metrics))],
        **{"TEST.EVAL_PERIOD": 5, "LOG_PERIOD": 4},
    )
    t.resume_or_load("", resume=False)
    with caplog.at_level(logging.INFO, logger="detgn"):
        t.train()
    lines = [r.getMessage() for r in caplog.records if r.name == "detgn.engine" and r.getMessage().startswith("iter:")]
    print("\n".join(lines))
    assert lines[0].startswith("iter: 4/10  eta: ")
    for key in ("loss_cls: ", "loss_reg: ", "total_loss: ", "lr: ", "time: ", "data_time: "):
        assert key in lines[0]
    assert any("eval: bbox/AP=12.50, bbox/AP50=30.00, segm/AP=10.00" in line for line in lines)
    records = read_metrics(str(metrics))
    its = [r["iteration"] for r in records]
    assert its == [3, 4, 7, 9]  # every 4, after the evaluation at 5 done, and the end
    for r in records:
        assert {"loss_cls", "loss_reg", "total_loss", "lr", "time", "data_time"} <= set(r)
        assert r["total_loss"] == pytest.approx(r["loss_cls"] + r["loss_reg"], rel=1e-3)
    assert records[1]["bbox/AP"] == 12.5 and "bbox/AP" not in records[0]
    assert records[-1]["segm/AP"] == 10.0
    assert records[0]["lr"] == pytest.approx(0.05)  # iteration 3: warmup over
    assert records[-1]["lr"] == pytest.approx(0.05 * 0.01)  # after both steps


def test_json_writer_drops_lines_of_a_dead_run_and_torn_lines(tmp_path):
    p = tmp_path / "metrics.json"
    p.write_text("".join(json.dumps({"iteration": i, "loss": 1.0}) + "\n" for i in range(8)) + '{"iteration": 8, "lo')
    w = JSONWriter(str(p), start_iter=5)
    s = EventStorage(5)
    s.put_scalar("loss", 2.0)
    w.write(s, max_iter=10)
    w.close()
    assert [r["iteration"] for r in read_metrics(str(p))] == [0, 1, 2, 3, 4, 5]


def test_tensorboard_and_curves_png(tmp_path):
    t = make_toy_trainer(
        tmp_path,
        eval_fn=lambda: {"bbox": {"AP": 20.0}},
        writers=[JSONWriter(str(tmp_path / "metrics.json")), TensorboardWriter(str(tmp_path))],
        **{"TEST.EVAL_PERIOD": 4},
    )
    t.resume_or_load("", resume=False)
    t.train()
    events = [f for f in os.listdir(tmp_path) if f.startswith("events.out.tfevents")]
    assert events and os.path.getsize(tmp_path / events[0]) > 100
    png = tmp_path / "training_curves.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert png.stat().st_size > 10_000
    losses, aps = curve_series(read_metrics(str(tmp_path / "metrics.json")))
    assert {"loss_cls", "loss_reg", "total_loss"} <= set(losses)
    assert [it for it, _ in aps["bbox/AP"]] == [3, 7, 9]


def _interrupted_run(out, **overrides):
    t = make_toy_trainer(out, **overrides)
    t.register_hooks([stop_after(7)])
    t.resume_or_load("", resume=True)
    with pytest.raises(StopRun):
        t.train()


def test_schedule_change_applied_with_message(tmp_path, caplog):
    _interrupted_run(tmp_path)  # last checkpoint: 6 iterations of (0.05, max 10, steps 5/8)
    t = make_toy_trainer(tmp_path, **{"SOLVER.MAX_ITER": 14, "SOLVER.STEPS": (8, 12)})
    with caplog.at_level(logging.INFO, logger="detgn"):
        start = t.resume_or_load("", resume=True)
    assert start == 6 and t.max_iter == 14
    assert "max_iter: 10 -> 14" in caplog.text and "steps: (5, 8) -> (8, 12)" in caplog.text
    # Iteration 6 is before the new first step: full LR again, and the new milestones rule.
    assert all(g["lr"] == pytest.approx(0.05) for g in t.optimizer.param_groups)
    t.train()
    assert t.iter + 1 == 14 and (tmp_path / "model_final.pth").exists()


def test_batch_change_converts_iteration_by_images_seen(tmp_path, caplog):
    _interrupted_run(tmp_path)  # 6 iterations x 2 images
    t = make_toy_trainer(tmp_path, **{"SOLVER.IMS_PER_GPU": 1})  # 1 image: x2 iterations, LR / 2
    with caplog.at_level(logging.INFO, logger="detgn"):
        start = t.resume_or_load("", resume=True)
    assert start == 12 and t.max_iter == 20
    assert "ims_per_batch: 2 -> 1" in caplog.text and "iteration 6 at 2 images/iter -> 12" in caplog.text
    # New schedule at iteration 12: steps (10, 16) -> one decay of the halved LR.
    assert all(g["lr"] == pytest.approx(0.025 * 0.1) for g in t.optimizer.param_groups)
    assert all(g["initial_lr"] == pytest.approx(0.025) for g in t.optimizer.param_groups)


def test_schedule_change_refused(tmp_path):
    _interrupted_run(tmp_path)
    t = make_toy_trainer(tmp_path, **{"SOLVER.BASE_LR": 0.1, "SOLVER.ON_SCHEDULE_CHANGE": "refuse"})
    with pytest.raises(CheckpointError) as e:
        t.resume_or_load("", resume=True)
    msg = str(e.value)
    assert "base_lr: 0.05 -> 0.1" in msg and "SOLVER.ON_SCHEDULE_CHANGE apply" in msg
    # Changing only how often to save or evaluate is not a training change: accepted.
    t2 = make_toy_trainer(tmp_path, **{"SOLVER.CHECKPOINT_PERIOD": 3, "TEST.EVAL_PERIOD": 5,
                                       "SOLVER.ON_SCHEDULE_CHANGE": "refuse"})
    assert t2.resume_or_load("", resume=True) == 6


def test_resume_of_a_finished_run_only_evaluates(tmp_path):
    calls = []
    t = make_toy_trainer(tmp_path, **{"SOLVER.MAX_ITER": 2, "SOLVER.STEPS": ()})
    t.resume_or_load("", resume=True)
    t.train()
    t2 = make_toy_trainer(tmp_path, eval_fn=lambda: calls.append(1) or {"bbox": {"AP": 1.0}},
                          **{"SOLVER.MAX_ITER": 2, "SOLVER.STEPS": ()})
    assert t2.resume_or_load("", resume=True) == 2
    before = {k: v.clone() for k, v in t2.toy_model.state_dict().items()}
    t2.train()
    assert calls == [1]
    for k, v in t2.toy_model.state_dict().items():
        assert torch.equal(v, before[k])


def test_amp_on_cpu_is_ignored_with_notice(tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="detgn"):
        t = make_toy_trainer(tmp_path, **{"SOLVER.AMP.ENABLED": True, "SOLVER.MAX_ITER": 2, "SOLVER.STEPS": ()})
    assert "SOLVER.AMP.ENABLED is ignored" in caplog.text
    assert t.amp is False and t.scaler is None


def test_bf16_and_channels_last_on_cpu(tmp_path):
    """CPU.CHANNELS_LAST is applied by build_model (tests/modeling/test_generalized_rcnn.py);
    the trainer trains such a model under bf16 autocast and keeps its memory format."""
    t = make_toy_trainer(tmp_path, **{"CPU.BF16": True, "CPU.CHANNELS_LAST": True,
                                      "SOLVER.MAX_ITER": 3, "SOLVER.STEPS": ()})
    t.toy_model.to(memory_format=torch.channels_last)  # what build_model does with CPU.CHANNELS_LAST
    assert t.bf16 is True
    t.resume_or_load("", resume=False)
    t.train()
    assert t.toy_model.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    assert all(torch.isfinite(p).all() for p in t.toy_model.parameters())


def test_finite_data_loader_is_a_clear_error(tmp_path):
    t = make_toy_trainer(tmp_path, writers=[])
    t.data_loader_fn = lambda start: iter([])
    t.resume_or_load("", resume=False)
    with pytest.raises(RuntimeError, match="ran out at iteration 0"):
        t.train()


def test_console_writer_announces_the_projected_end_once(caplog):
    """After 50 timed iterations the log says when training will end, once."""
    writer = ConsoleWriter(show_memory=False)
    storage = EventStorage(0)
    with caplog.at_level(logging.INFO, logger="detgn"):
        for it in range(120):
            storage.iter = it
            storage.put_scalar("time", 0.5)
            if (it + 1) % 20 == 0:
                writer.write(storage, 1000)
    said = [r.getMessage() for r in caplog.records if "projected to end" in r.getMessage()]
    assert len(said) == 1
    assert "0.500 s/iter" in said[0] and "the last 60 iterations" in said[0]
    assert "(in 0:07:50," in said[0]  # 940 iterations left at iteration 60
