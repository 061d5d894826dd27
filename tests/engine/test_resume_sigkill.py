"""kill -9 at any moment, then --resume: the final weights equal an uninterrupted run's.

One scenario in three processes: the first is killed half-way through writing a
checkpoint, the second (resumed) is killed by SIGKILL from outside between steps,
the third resumes again and finishes. The reference runs here, uninterrupted.
"""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from engine_toys import make_toy_trainer, single_thread  # noqa: E402,F401

REPO = HERE.parents[1]
MAX_ITER = 20
OVERRIDES = {"SOLVER.MAX_ITER": MAX_ITER, "SOLVER.STEPS": (8, 16), "SOLVER.CHECKPOINT_PERIOD": 4}

SCRIPT = """
import io, os, signal, sys, time
sys.path.insert(0, {here!r})
import torch
torch.set_num_threads(1)
import detgn.checkpoint.checkpointer as ck
from detgn.engine import HookBase
from detgn.utils.logger import setup_logger
from engine_toys import make_toy_trainer

out, sleep_s, kill_in_save_at = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
if kill_in_save_at >= 0:
    real_save = torch.save
    def dying_save(obj, f, *a, **k):
        if isinstance(obj, dict) and obj.get("iteration") == kill_in_save_at:
            buf = io.BytesIO()
            real_save(obj, buf)
            f.write(buf.getvalue()[: len(buf.getvalue()) // 2])
            f.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        return real_save(obj, f, *a, **k)
    ck.torch.save = dying_save

setup_logger(out)

class Sleep(HookBase):
    def after_step(self):
        time.sleep(sleep_s)

trainer = make_toy_trainer(out, **{overrides!r})
trainer.register_hooks([Sleep()])
trainer.resume_or_load("", resume=True)
trainer.train()
print("DONE", trainer.iter + 1)
"""


def _start(script, out, sleep_s=0.0, kill_in_save_at=-1):
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    return subprocess.Popen(
        [sys.executable, str(script), str(out), str(sleep_s), str(kill_in_save_at)],
        env=env, cwd=str(REPO), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )


def _pointer(out):
    p = Path(out) / "last_checkpoint"
    return p.read_text().strip() if p.exists() else ""


@pytest.mark.usefixtures("single_thread")
def test_killed_in_save_then_killed_between_steps_then_resumed(tmp_path):
    script = tmp_path / "toy_train.py"
    script.write_text(SCRIPT.format(here=str(HERE), overrides=OVERRIDES))
    out = tmp_path / "run"

    # 1. Killed half-way through writing the checkpoint of iteration 8 (model_0000007).
    p1 = _start(script, out, kill_in_save_at=8)
    text, _ = p1.communicate(timeout=300)
    assert p1.returncode == -signal.SIGKILL, text
    assert _pointer(out) == "model_0000003.pth"
    assert not (out / "model_0000007.pth").exists()
    assert [f for f in os.listdir(out) if f.endswith(".tmp")], "the killed save leaves its temp file"

    # 2. Resumed, then SIGKILLed from outside once it has saved again (between steps or in a save).
    p2 = _start(script, out, sleep_s=0.1)
    deadline = time.time() + 240
    while _pointer(out) < "model_0000011.pth":
        if p2.poll() is not None:
            pytest.fail("run 2 ended before it could be killed:\n" + p2.stdout.read())
        assert time.time() < deadline, "run 2 made no progress"
        time.sleep(0.05)
    time.sleep(0.15)
    p2.send_signal(signal.SIGKILL)
    text2, _ = p2.communicate(timeout=60)
    assert p2.returncode == -signal.SIGKILL
    assert "model_0000003.pth: 4 iterations done" in text2  # resumed from the last good one
    assert not (out / "model_final.pth").exists()

    # 3. Resumed again, to the end.
    p3 = _start(script, out)
    text3, _ = p3.communicate(timeout=300)
    assert p3.returncode == 0, text3
    assert "Resuming from" in text3 and f"DONE {MAX_ITER}" in text3
    assert not [f for f in os.listdir(out) if f.endswith(".tmp")]
    final = torch.load(out / "model_final.pth", weights_only=True)["model"]

    ref = make_toy_trainer(tmp_path / "reference", **OVERRIDES)
    ref.resume_or_load("", resume=True)
    ref.train()
    expected = ref.toy_model.state_dict()
    assert final.keys() == expected.keys()
    for k in expected:
        # Same ops, same thread count: bit-identical in practice; float tolerance is the promise.
        torch.testing.assert_close(final[k], expected[k], rtol=1e-6, atol=1e-7, msg=k)
