"""Unreadable training images through tools/train_net.py: found once, skipped, checkpointed.

A copy of the tiny synthetic set with 2 of its 8 training images broken (a truncated
JPEG, an HTML page saved as .jpg), chosen so that both are found in the first epoch
and come round again right after the checkpoint the resumed run starts from.

- Run A trains MAX_ITER iterations uninterrupted: each bad file is warned about once,
  the end-of-training line and ``metrics.json`` name both.
- Run B resumes a copy of A's folder from the checkpoint after 8 iterations (by then
  both files are known; the loader has consumed 10 batches of the stream, 2 of them
  skipped): its log has no new warning for them, the loader starts at stream batch 10,
  the final weights equal A's, and ``main()`` returns ``skipped_images``.
- Run C has MAX_BAD_IMAGES 1: it stops with the message alone (no traceback), exit 1.

Tiny GN Mask R-CNN, one image per step, one thread, no evaluation.
"""
import json
import shutil

import pytest

MAX_ITER = 12
RESUME_AT = 8  # iterations done in the checkpoint B resumes from
RUN_OPTS = ["SOLVER.MAX_ITER", str(MAX_ITER), "SOLVER.STEPS", "(8,)", "SOLVER.CHECKPOINT_PERIOD", "2",
            "SOLVER.MAX_TO_KEEP", "0", "DATASETS.TEST", "()"]


@pytest.fixture
def broken_root(tools_synthetic_root, tmp_path, monkeypatch):
    """A copy of the synthetic set with two broken training images; returns (root, [files])."""
    from detgn.data import get_detection_dataset_dicts
    from detgn.data.samplers import epoch_permutation

    root = tmp_path / "datasets"
    shutil.copytree(tools_synthetic_root, root)
    monkeypatch.setenv("DETGN_DATASETS", str(root))
    records = get_detection_dataset_dicts("synthetic_train")
    # SEED 0, one process, one image per batch: stream batch k is epoch k // 8's permutation
    # entry k % 8. Epoch 1's entries 2 and 3 are stream batches 10 and 11, the first two
    # batches the resumed run reads (8 iterations + 2 skipped batches of epoch 0).
    second_epoch = epoch_permutation(len(records), 0, 1)
    bad = [records[second_epoch[2]]["file_name"], records[second_epoch[3]]["file_name"]]
    with open(bad[0], "r+b") as f:
        f.truncate(len(f.read()) // 2)
    with open(bad[1], "w") as f:
        f.write("<html>404 Not Found</html>")
    return root, bad


def _skip_warnings(text, files):
    return {f: sum(1 for line in text.splitlines() if "Skipping training image" in line and f in line) for f in files}


@pytest.mark.usefixtures("restore_process_state")
def test_bad_images_skipped_once_checkpointed_and_resumed_exactly(tools_helpers, broken_root, tiny_config, tmp_path):
    h = tools_helpers
    root, bad = broken_root
    env = h.subprocess_env(root)
    a_out, c_out = tmp_path / "a", tmp_path / "c"
    run_a = h.start(h.train_net_cmd(tiny_config, a_out, *RUN_OPTS), env, tmp_path / "a.txt")
    run_c = h.start(h.train_net_cmd(tiny_config, c_out, *RUN_OPTS, "DATALOADER.MAX_BAD_IMAGES", "1",
                                    "DATALOADER.MAX_BAD_IMAGES_FRACTION", "0.0"), env, tmp_path / "c.txt")
    try:
        rc, text_a = h.finish(run_a, tmp_path / "a.txt", timeout=300)
        assert rc == 0, h.tail(text_a)
        rc_c, text_c = h.finish(run_c, tmp_path / "c.txt", timeout=300)
    finally:
        for p in (run_a, run_c):
            if p.poll() is None:
                p.kill()
                p.wait()

    # A: each file warned about once, though both come round again in the second epoch.
    assert _skip_warnings(text_a, bad) == {bad[0]: 1, bad[1]: 1}, h.tail(text_a)
    summary = [line for line in text_a.splitlines() if "failed to read and were left out from then on" in line]
    assert len(summary) == 1 and "2 training image file(s)" in summary[0] and all(f in summary[0] for f in bad)
    records = [json.loads(line) for line in (a_out / "metrics.json").read_text().splitlines() if line.strip()]
    assert records[-1]["skipped_images"]["count"] == 2 and set(records[-1]["skipped_images"]["files"]) == set(bad)
    assert [r["bad_images"] for r in records if "bad_images" in r][-1] == 2

    # C: over the limit: the message alone, naming both files and what to do.
    assert rc_c == 1, h.tail(text_c)
    assert "Traceback" not in text_c, h.tail(text_c)
    assert "2 of 8 distinct training image files failed to read, more than the limit of 1" in text_c
    assert all(f in text_c for f in bad) and "tools/validate_dataset.py --json" in text_c

    # B: A's folder as a run that stopped after its checkpoint of 8 iterations.
    b_out = tmp_path / "b"
    shutil.copytree(a_out, b_out)
    (b_out / "model_final.pth").unlink()
    for it in range(RESUME_AT, MAX_ITER):
        (b_out / f"model_{it:07d}.pth").unlink(missing_ok=True)
    (b_out / "last_checkpoint").write_text(f"model_{RESUME_AT - 1:07d}.pth\n")
    (b_out / "log.txt").unlink()
    from detgn.engine import default_argument_parser
    from detgn.engine import run as train_net

    args = default_argument_parser().parse_args(
        ["--config", str(tiny_config), "--resume", *RUN_OPTS, "OUTPUT_DIR", str(b_out)])
    results = train_net.main(args)
    log_b = (b_out / "log.txt").read_text()
    assert f"{RESUME_AT} iterations done, continuing at iteration {RESUME_AT}" in log_b
    assert "The data loader resumes at stream batch 10 for iteration 8 (2 batch(es) were skipped" in log_b
    assert _skip_warnings(log_b, bad) == {bad[0]: 0, bad[1]: 0}, log_b[-3000:]
    assert "skipped without reading" in log_b
    assert set(results["skipped_images"]["files"]) == set(bad) and results["skipped_images"]["count"] == 2
    h.assert_same_weights(h.final_weights(b_out), h.final_weights(a_out))
    records_b = [json.loads(line) for line in (b_out / "metrics.json").read_text().splitlines() if line.strip()]
    skipped = [r for r in records_b if "skipped_images" in r]
    assert len(skipped) == 1 and skipped[0]["iteration"] == MAX_ITER - 1  # A's line was replaced by B's
    assert set(skipped[0]["skipped_images"]["files"]) == set(bad)
