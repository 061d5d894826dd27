"""Exact resume with the real model and data loader, through tools/train_net.py.

- An uninterrupted run of MAX_ITER iterations (the reference) against a run killed
  with SIGKILL part-way (once a checkpoint exists) and continued with ``--resume``:
  the final weights agree to float tolerance. The two first runs go side by side.
- A truncated checkpoint (the one ``last_checkpoint`` names): ``--resume`` says it
  skips that file, names the previous good one it takes, and ends with the
  reference's weights again.
- A diverging run (a huge LR) stops with the error naming the iteration and the
  image ids of the batch.

Tiny GN Mask R-CNN, NUM_WORKERS 0, one image per step, one thread, no evaluation.
"""
import os
import re
import shutil
import signal
import time

import pytest

MAX_ITER = 10
RUN_OPTS = ["SOLVER.MAX_ITER", str(MAX_ITER), "SOLVER.STEPS", "(6,)", "SOLVER.CHECKPOINT_PERIOD", "2",
            "DATASETS.TEST", "()"]


class _Run:
    """A train_net.py subprocess whose result is collected on first use."""

    def __init__(self, h, env, cmd, out, console):
        self.h, self.out, self.console = h, out, console
        self.proc = h.start(cmd, env, console)
        self._result = None

    def result(self, timeout=300):
        if self._result is None:
            self._result = self.h.finish(self.proc, self.console, timeout)
        return self._result


@pytest.fixture(scope="module")
def reference(tools_helpers, tools_synthetic_root, tiny_config, tmp_path_factory):
    """The uninterrupted run, started now and collected when a test needs it."""
    h = tools_helpers
    base = tmp_path_factory.mktemp("reference")
    run = _Run(h, h.subprocess_env(tools_synthetic_root), h.train_net_cmd(tiny_config, base / "run", *RUN_OPTS),
               base / "run", base / "console.txt")
    yield run
    if run.proc.poll() is None:
        run.proc.kill()
        run.proc.wait()


def _reference_weights(reference):
    rc, text = reference.result()
    assert rc == 0, reference.h.tail(text)
    return reference.h.final_weights(reference.out)


def _pointer(out):
    p = out / "last_checkpoint"
    return p.read_text().strip() if p.exists() else ""


def test_sigkill_then_resume_matches_uninterrupted_run(reference, tools_helpers, tools_synthetic_root, tiny_config,
                                                       tmp_path):
    h = tools_helpers
    env = h.subprocess_env(tools_synthetic_root)
    out = tmp_path / "run"
    killed = h.start(h.train_net_cmd(tiny_config, out, *RUN_OPTS), env, tmp_path / "console1.txt")
    try:
        deadline = time.time() + 240
        # The first periodic checkpoint (after 2 of 10 steps) exists: kill it right there.
        while not (out / "model_0000001.pth").exists() or not _pointer(out):
            if killed.poll() is not None:
                text = (tmp_path / "console1.txt").read_text()
                pytest.fail("the run ended before it could be killed:\n" + h.tail(text))
            assert time.time() < deadline, "the run to kill saved no checkpoint in 240 s"
            time.sleep(0.02)
        killed.send_signal(signal.SIGKILL)
        assert killed.wait(timeout=60) == -signal.SIGKILL
    finally:
        if killed.poll() is None:
            killed.kill()
            killed.wait()
    # Killed part-way: a periodic checkpoint is the newest state, no final one.
    pointed = _pointer(out)
    assert re.fullmatch(r"model_\d{7}\.pth", pointed), pointed
    assert not (out / "model_final.pth").exists()
    done = int(pointed[6:13]) + 1

    rc, text = h.finish(h.start(h.train_net_cmd(tiny_config, out, *RUN_OPTS, resume=True), env,
                                tmp_path / "console2.txt"), tmp_path / "console2.txt", timeout=300)
    assert rc == 0, h.tail(text)
    assert f"Resuming from {out / pointed}: {done} iterations done, continuing at iteration {done}" in text
    assert f"Starting training at iteration {done} of {MAX_ITER}" in text
    h.assert_same_weights(h.final_weights(out), _reference_weights(reference))


def test_truncated_checkpoint_resumes_from_the_previous_good_one(reference, tools_helpers, tools_synthetic_root,
                                                                 tiny_config, tmp_path):
    h = tools_helpers
    expected = _reference_weights(reference)
    out = tmp_path / "run"
    shutil.copytree(reference.out, out)
    assert _pointer(out) == "model_final.pth"
    final = out / "model_final.pth"
    with open(final, "r+b") as f:  # a copy cut short, as by a full disk
        f.truncate(os.path.getsize(final) // 2)
    previous = out / f"model_{MAX_ITER - 3:07d}.pth"  # after MAX_ITER - 2 iterations
    assert previous.exists()

    rc, text = h.finish(h.start(h.train_net_cmd(tiny_config, out, *RUN_OPTS, resume=True),
                                h.subprocess_env(tools_synthetic_root), tmp_path / "console.txt"),
                        tmp_path / "console.txt", timeout=300)
    assert rc == 0, h.tail(text)
    assert f"Skipping checkpoint {final}" in text
    assert f"Resuming from {previous}: {MAX_ITER - 2} iterations done" in text
    # The two replayed steps rewrite model_final.pth with the reference's weights.
    h.assert_same_weights(h.final_weights(out), expected)


@pytest.mark.usefixtures("use_synthetic_root", "restore_process_state")
def test_diverging_loss_names_iteration_and_images(tools_helpers, tiny_config, tmp_path, capsys):
    from detgn.config import load_config
    from detgn.data import build_detection_train_loader

    train_net = tools_helpers.load_tool("train_net")
    opts = ["SOLVER.BASE_LR", "1e10", "SOLVER.WARMUP_ITERS", "0", *RUN_OPTS, "OUTPUT_DIR", str(tmp_path / "run")]
    # The message alone on stderr (no traceback) and exit status 1.
    assert train_net.cli(["--config", str(tiny_config), *opts]) == 1
    err = capsys.readouterr().err
    assert err.startswith("Error: Loss is not finite at iteration") and "Traceback" not in err, err
    msg = err
    m = re.search(r"Loss is not finite at iteration (\d+):", msg)
    assert m, msg
    it = int(m.group(1))
    assert 1 <= it < MAX_ITER  # the first step is finite; the huge update breaks a later one
    # The ids named are those of the batch the loader gives at that iteration.
    cfg = load_config(str(tiny_config), opts)
    batch = next(iter(build_detection_train_loader(cfg, start_batch=it)))
    assert f"image ids of the batch: {[d['image_id'] for d in batch]}" in msg
    assert "lower SOLVER.BASE_LR" in msg
    log = (tmp_path / "run" / "log.txt").read_text()
    assert f"Training stopped at iteration {it}: Loss is not finite at iteration {it}" in log
    assert "Traceback" not in log
