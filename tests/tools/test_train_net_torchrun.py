"""tools/train_net.py under torchrun: 2 gloo processes on the CPU, the real tiny model.

Trains a few iterations with a periodic checkpoint and the final evaluation, then
checks that DDP left both ranks with identical weights (each rank logs a digest of
its final state dict; rank 0's also matches ``model_final.pth``) and that the
distributed evaluation ran every val image exactly once (per-rank counts in the
logs sum to the dataset size; the gathered results cover every image id).
"""
import json
import re
import sys

import torch

MAX_ITER = 4


def _digest(log_text: str, rank: int) -> str:
    found = re.findall(rf"Final weights digest \(rank {rank}\): ([0-9a-f]{{64}})", log_text)
    assert len(found) == 1, f"rank {rank} logged {len(found)} digests"
    return found[0]


def _images_run(log_text: str) -> int:
    found = re.findall(r"Total inference time: .* over (\d+) images on this process", log_text)
    assert len(found) == 1, found
    return int(found[0])


def test_two_process_torchrun_train_checkpoint_evaluate(tools_helpers, tools_synthetic_root, tiny_config, tmp_path):
    h = tools_helpers
    out = tmp_path / "run"
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
        "--master_addr", "127.0.0.1", "--master_port", str(h.free_port()),
        str(h.REPO / "tools" / "train_net.py"), "--config", str(tiny_config),
        "OUTPUT_DIR", str(out), "MODEL.DEVICE", "cpu", "SOLVER.MAX_ITER", str(MAX_ITER), "SOLVER.STEPS", "(3,)",
        "SOLVER.CHECKPOINT_PERIOD", "2", "TEST.EVAL_PERIOD", "0",
        # Every image then has detections, so the results file names every image evaluated.
        "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0",
    ]
    console = tmp_path / "console.txt"
    rc, text = h.finish(h.start(cmd, h.subprocess_env(tools_synthetic_root), console), console, timeout=300)
    assert rc == 0 and "Traceback" not in text, h.tail(text)

    log0 = (out / "log.txt").read_text()
    log1 = (out / "log.txt.rank1").read_text()

    # Training: both ranks end with the weights rank 0 saved.
    ckpt = torch.load(out / "model_final.pth", map_location="cpu", weights_only=True)
    assert ckpt["iteration"] == MAX_ITER and ckpt["world_size"] == 2 and len(ckpt["rng_states"]) == 2
    from detgn.checkpoint import weights_digest

    assert _digest(log0, 0) == _digest(log1, 1) == weights_digest(ckpt["model"])
    assert (out / "model_0000001.pth").exists()  # the periodic checkpoint (period 2)
    assert not (out / "log.txt.rank0").exists() and not list(out.glob("*.tmp"))

    # Evaluation: the 5 val images split 3 + 2, each run once, all gathered on rank 0.
    counts = [_images_run(log0), _images_run(log1)]
    assert sorted(counts) == [2, 3], counts
    assert "Evaluating on" not in log0  # the evaluator's warning for a partial set
    val_ids = h.dataset_image_ids(tools_synthetic_root, "val")
    assert len(val_ids) == sum(counts) == h.NUM_VAL
    results = json.loads((out / "inference" / "synthetic_val" / "coco_instances_results.json").read_text())
    assert {r["image_id"] for r in results} == set(val_ids)
    assert "Results on synthetic_val: bbox AP=" in log0
    metrics = [json.loads(line) for line in (out / "metrics.json").read_text().splitlines() if line.strip()]
    assert any("bbox/AP" in m for m in metrics)
