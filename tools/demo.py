#!/usr/bin/env python
"""The offline demo (`make demo`): synthetic data -> GN Mask R-CNN from scratch on the CPU
-> COCO evaluation -> pictures and training curves.

    python tools/demo.py [--output output/demo] [--config synthetic/demo_gn_scratch.yaml]
                         [--train 1500 --val 100 --seed 0] [--fresh] [KEY VALUE ...]

Steps, each skipped when its result is already there (so an interrupted demo picks up
where it stopped: training resumes from the newest good checkpoint):
  1. make the synthetic COCO-format set under $DETGN_DATASETS/synthetic (default ./datasets);
  2. train the demo config (tools/train_net.py, same logs/checkpoints/metrics as any run);
  3. evaluate it on synthetic_val (bbox + segm COCO AP, written by the final evaluation);
  4. draw predictions next to the ground truth for a few val images, and the training curves.
Prints the wall time of each step and a summary at the end.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from detgn.utils.file_io import atomic_write_text  # noqa: E402


def _datasets_root() -> Path:
    return Path(os.environ.get("DETGN_DATASETS", ROOT / "datasets"))


def step_dataset(args) -> float:
    t0 = time.time()
    out = _datasets_root() / "synthetic"
    ann = out / "annotations"
    if (ann / "instances_train.json").is_file() and (ann / "instances_val.json").is_file():
        print(f"[demo] 1/4 dataset: {out} exists, kept (delete it to regenerate)", flush=True)
        return 0.0
    print(f"[demo] 1/4 dataset: generating {args.train} train / {args.val} val images into {out}", flush=True)
    from detgn.data.datasets.synthetic import generate_synthetic_coco

    generate_synthetic_coco(out, num_train=args.train, num_val=args.val, seed=args.seed,
                            workers=min(2, os.cpu_count() or 1))
    return time.time() - t0


def _available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _processes_and_threads(procs: int) -> tuple:
    """Training processes (gloo DDP, ``IMS_PER_GPU`` images each) and torch threads per process.

    Two single-threaded processes train ~1.5x faster than one two-threaded process on
    2 cores (the demo's small convs scale poorly across threads), so the default is 2
    processes when there are at least 2 cores, sharing the cores between them. The
    config's schedule is written for 2 processes; with 1 the linear scaling rule halves
    the LR and doubles the iterations.
    """
    cores = _available_cores()
    if procs <= 0:
        procs = 2 if cores >= 2 else 1
    return procs, max(1, cores // procs)


def step_train(args) -> float:
    t0 = time.time()
    final = Path(args.output) / "model_final.pth"
    results = Path(args.output) / "inference" / "synthetic_val" / "metrics.json"
    if final.is_file() and results.is_file() and not args.fresh:
        print(f"[demo] 2-3/4 train + evaluate: {final} and its results exist, kept (--fresh to retrain)", flush=True)
        return 0.0
    procs, threads = _processes_and_threads(args.procs)
    cmd = [sys.executable, str(ROOT / "tools" / "train_net.py"), "--config", args.config,
           "--num-gpus", str(procs), "OUTPUT_DIR", args.output, "CPU.NUM_THREADS", str(threads), *args.opts]
    if not args.fresh and (Path(args.output) / "last_checkpoint").is_file():
        cmd.insert(4, "--resume")
    print("[demo] 2-3/4 train + evaluate:", " ".join(cmd), flush=True)
    rc = subprocess.run(cmd).returncode
    if rc != 0:  # train_net.py printed why (a user error: its message alone)
        print(f"[demo] training stopped (tools/train_net.py exit status {rc}); run make demo again to resume "
              "once the cause above is fixed", file=sys.stderr, flush=True)
        raise SystemExit(rc)
    return time.time() - t0


def step_visualize(args) -> float:
    t0 = time.time()
    from detgn.config import load_config
    from detgn.engine import Predictor
    from detgn.visualization.predictions import visualize_dataset

    cfg = load_config(args.config, [*args.opts, "OUTPUT_DIR", args.output, "VERBOSE_STARTUP", "False"])
    predictor = Predictor(cfg, weights=str(Path(args.output) / "model_final.pth"))
    out_dir = Path(args.output) / "visualizations"
    visualize_dataset(cfg, predictor, cfg.DATASETS.TEST[0], str(out_dir), args.num_vis, args.score_thresh)
    print(f"[demo] 4/4 pictures: {out_dir}", flush=True)
    return time.time() - t0


def summary(args, times) -> dict:
    from detgn.engine.run import run_summary

    out = Path(args.output)
    s = {
        **run_summary(str(out), "synthetic_val"),
        "wall_s": {k: round(v, 1) for k, v in times.items()},
        "curves": str(out / "training_curves.png"),
        "pictures": str(out / "visualizations"),
    }
    print("[demo] summary:", json.dumps(s, indent=1), flush=True)
    atomic_write_text(str(out / "demo_summary.json"), json.dumps(s, indent=1))
    return s


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="synthetic/demo_gn_scratch.yaml")
    ap.add_argument("--output", default=str(ROOT / "output" / "demo"))
    ap.add_argument("--train", type=int, default=1500, help="synthetic training images")
    ap.add_argument("--val", type=int, default=100, help="synthetic validation images")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--num-vis", type=int, default=8, help="validation images to draw")
    ap.add_argument("--score-thresh", type=float, default=0.5,
                    help="draw detections scoring at least this (0.5, the display threshold of detectron2's demo)")
    ap.add_argument("--procs", type=int, default=0,
                    help="training processes (0: 2 when there are 2+ cores, else 1)")
    ap.add_argument("--fresh", action="store_true", help="retrain even if a finished run exists")
    ap.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE overrides of the demo config")
    args = ap.parse_args(argv)
    times = {}
    t0 = time.time()
    times["dataset"] = step_dataset(args)
    times["train_and_eval"] = step_train(args)
    times["visualize"] = step_visualize(args)
    times["total"] = time.time() - t0
    return summary(args, times)


if __name__ == "__main__":
    main()
