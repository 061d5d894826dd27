"""Speed and memory of a config: training step, inference, data loading, FLOPs; the evaluator's cost.

    detgn benchmark --config fpn_gn_long.yaml --task train [--iters 20] [KEY VALUE ...]
    detgn benchmark --config NAME --task inference --torchvision   # + torchvision's Mask R-CNN
    detgn benchmark --task evaluator --iters 20 --dets-per-image 100 --width 512

Prints median time per iteration / image after warm-up, images/s, peak memory and
FLOPs (fvcore, one inference pass). A benchmark prints figures; it asserts nothing.
The training step timed is the Trainer's own (:mod:`detgn.benchmark.model`).
``--task inference --backend torch,torch_bf16,onnxruntime,openvino`` times the same model on each
backend (eager fp32, eager bf16 autocast, its ONNX export in onnxruntime / OpenVINO, ...) on the
same images in this process, backends taking turns, and checks each one's detections against
the fp32 model's (:mod:`detgn.benchmark.backends`); ``--backend all`` takes every backend.
``--modes fp32,autocast,default`` times the config in each speed mode (today's fp32, plain bf16
autocast, the defaults; ``detgn.benchmark.model.SPEED_MODES``), each in its own process with its own
peak memory, and prints the ratios. ``--profile FILE.md`` writes where a step's time goes
(``torch.profiler``: categories, scopes, top operators; :mod:`detgn.benchmark.profiling`).
``--torchvision`` measures torchvision's ``maskrcnn_resnet50_fpn`` (random weights,
same input sizes, same number of images per step) in the same process and prints the
ratio detgn / torchvision.
"""
from __future__ import annotations

import argparse
import json
import sys

import torch

from detgn.config import load_config
from detgn.benchmark.evaluator import benchmark_evaluator
from detgn.benchmark.loader import benchmark_loader
from detgn.benchmark.model import benchmark_model, benchmark_torchvision, compare_modes, peak_memory_mb


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", help="required but for --task evaluator")
    ap.add_argument("--task", choices=["train", "inference", "data", "evaluator"], required=True,
                    help="evaluator: COCOEvaluator's time per image on synthetic predictions (--iters images of "
                         "--width x 3/4 --width, --dets-per-image each; one thread)")
    ap.add_argument("--dets-per-image", type=int, default=100, help="evaluator: detections per image")
    ap.add_argument("--iters", type=int, default=10, help="timed iterations (data: images)")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--height", type=int, default=800, help="input height (images are already resized)")
    ap.add_argument("--width", type=int, default=1216, help="input width")
    ap.add_argument("--flops", action="store_true", help="count inference FLOPs with fvcore")
    ap.add_argument("--torchvision", action="store_true", help="also measure torchvision's Mask R-CNN R50-FPN")
    ap.add_argument("--backend", help="inference: comma-separated backends to compare (or 'all'): "
                    "torch, torch_bf16, onnxruntime, openvino, openvino_bf16, torch_export")
    ap.add_argument("--modes", help="comma-separated speed modes to compare, each in its own process: "
                    "fp32, autocast, autocast_cl, fp32_cl, default, compiled")
    ap.add_argument("--profile", metavar="FILE.md", help="profile --iters steps under torch.profiler; write the tables")
    ap.add_argument("--json", help="append the results as JSON lines to this file")
    ap.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    args = ap.parse_args(argv)
    if args.task == "evaluator":
        torch.set_num_threads(1)
        stats = benchmark_evaluator(args.iters, args.dets_per_image, args.width)
        print(json.dumps(stats, indent=2))
        return [stats]
    if not args.config:
        ap.error("--config is required for --task " + args.task)
    if args.modes:
        return _print(args, compare_modes(args.config, args.opts, args.task, args.modes.split(","),
                                          height=args.height, width=args.width, warmup=args.warmup, iters=args.iters))
    cfg = load_config(args.config, args.opts)
    if cfg.CPU.NUM_THREADS > 0:
        torch.set_num_threads(cfg.CPU.NUM_THREADS)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {cfg.MODEL.DEVICE}", flush=True)
    sizes = dict(height=args.height, width=args.width, warmup=args.warmup, iters=args.iters)
    if args.profile:
        from detgn.benchmark.profiling import profile_config

        return [profile_config(cfg, args.task, args.profile, title=f"{args.config} {' '.join(args.opts)}".strip(),
                               **sizes)]
    if args.backend:
        if args.task != "inference":
            ap.error("--backend compares inference backends: use it with --task inference")
        from detgn.benchmark.backends import BENCH_BACKENDS, benchmark_backends

        names = list(BENCH_BACKENDS) if args.backend == "all" else args.backend.split(",")
        results = [{"config": args.config, **r} for r in benchmark_backends(cfg, names, **sizes)]
        results[-1]["peak_mem_mb_process"] = peak_memory_mb(cfg.MODEL.DEVICE)
    elif args.task == "data":
        results = [benchmark_loader(cfg, args.iters)]
    else:
        results = [{"config": args.config, **benchmark_model(cfg, args.task, flops=args.flops, **sizes)}]
        if args.torchvision:
            results.append(benchmark_torchvision(cfg, args.task, **sizes))
    return _print(args, results)


def _print(args, results):
    key = "s_per_iter" if args.task == "train" else "s_per_image"
    for r in results:
        print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()}), flush=True)
    if len(results) == 2 and not args.backend and not args.modes:
        print(f"ratio detgn / torchvision ({key}): {results[0][key] / results[1][key]:.3f}")
    if args.json:
        with open(args.json, "a") as f:
            for r in results:
                f.write(json.dumps(r) + "\n")
    return results


def cli(argv=None) -> int:
    """The command: :func:`main` (which returns the figures it printed), exit status 0."""
    main(argv)
    return 0


if __name__ == "__main__":
    sys.exit(cli())
