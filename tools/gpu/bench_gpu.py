#!/usr/bin/env python
"""The GPU measurements of tools/gpu/check_gpu.sh, in one process.

    python tools/gpu/bench_gpu.py bench --out DIR [--iters 20] [--height 800 --width 1216]
    python tools/gpu/bench_gpu.py quick --out DIR      # GN AMP train / inference s and syncs (before/after)
    python tools/gpu/bench_gpu.py syncs --out DIR      # host syncs of a training step, by site
    python tools/gpu/bench_gpu.py profile --out DIR    # where a step's GPU time goes

``bench``: R50-FPN GN 4conv1fc and R50-FPN BN* 2fc, 2 images per training step, training and
inference, AMP off and on, and torchvision's ``maskrcnn_resnet50_fpn`` in the same process
(ratios), with the peak GPU memory of each. ``syncs``: the CUDA sync debug mode's warnings
during training steps, counted by the detgn line that caused them, beside the CPU audit of
:mod:`detgn.benchmark.host_syncs`. ``profile``: ``torch.profiler`` with CUDA activity, top
operators by GPU time and by CPU time.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch  # noqa: E402

from detgn.config import load_config  # noqa: E402

CONFIGS = {"R50-FPN GN 4conv1fc": "gn_paper/mask_rcnn_R_50_FPN_4conv1fc_GN_2x.yaml",
           "R50-FPN BN* 2fc": "gn_paper/mask_rcnn_R_50_FPN_BNstar_2x.yaml"}


DEVICE = "cuda"  # --device cpu: a dry run of the script on a machine without a GPU


def _cfg(path: str, amp: bool, *extra: str, test_amp: bool = True):
    return load_config(path, ["MODEL.WEIGHTS", "", "MODEL.DEVICE", DEVICE, "SOLVER.IMS_PER_GPU", "2",
                              "SOLVER.AMP.ENABLED", str(amp), "VERBOSE_STARTUP", "False", *extra]
                       + (["TEST.AMP", str(amp)] if test_amp else []))


def bench(args) -> None:
    from detgn.benchmark.model import benchmark_model, benchmark_torchvision

    sizes = dict(height=args.height, width=args.width, warmup=args.warmup, iters=args.iters)
    rows = []
    variants = [(name, path, amp, ()) for name, path in CONFIGS.items() for amp in (False, True)]
    variants.append(("R50-FPN GN 4conv1fc, channels-last", CONFIGS["R50-FPN GN 4conv1fc"], True,
                     ("CPU.CHANNELS_LAST", "True")))
    for name, path, amp, extra in variants:
        cfg = _cfg(path, amp, *extra)
        for task in ("train", "inference"):
            key = "s_per_iter" if task == "train" else "s_per_image"
            ours = benchmark_model(cfg, task, **sizes)
            row = {"model": name, "task": task, "amp": amp, "s": ours[key], "peak_mb": ours["peak_mem_mb"]}
            if not extra:  # torchvision in the same process, same inputs
                tv = benchmark_torchvision(cfg, task, **sizes)
                row.update(tv_s=tv[key], tv_peak_mb=tv["peak_mem_mb"], ratio=ours[key] / tv[key])
            rows.append(row)
            print(json.dumps(row), flush=True)
    with open(os.path.join(args.out, "bench.json"), "w") as f:
        json.dump({"device": _device_name(), "torch": torch.__version__, "sizes": sizes, "rows": rows}, f, indent=1)
    print(f"\n{_device_name()}, torch {torch.__version__}, {args.height}x{args.width}, "
          f"2 images per training step, median of {args.iters} after {args.warmup} warm-up")
    print("| model | task | AMP | detgn s | detgn peak MB | torchvision s | torchvision peak MB | ratio |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        tv = f"{r['tv_s']:.4f} | {r['tv_peak_mb']:.0f} | {r['ratio']:.3f}" if "tv_s" in r else "| |"
        print(f"| {r['model']} | {r['task']} | {'on' if r['amp'] else 'off'} | {r['s']:.4f} | {r['peak_mb']:.0f} | {tv} |")


def quick(args) -> None:
    """R50-FPN GN 4conv1fc, AMP training and fp32 inference, and CUDA's syncs per training step:
    the figures compared before / after a change (run from each tree in turn)."""
    from detgn.benchmark.host_syncs import cuda_sync_sites
    from detgn.benchmark.model import benchmark_model

    cfg = _cfg(CONFIGS["R50-FPN GN 4conv1fc"], True, test_amp=False)
    sizes = dict(height=args.height, width=args.width, warmup=args.warmup, iters=args.iters)
    res = {"train_s": benchmark_model(cfg, "train", **sizes)["s_per_iter"],
           "inference_s": benchmark_model(cfg, "inference", **sizes)["s_per_image"]}
    if DEVICE == "cuda":
        model, batch, step = _train_steps(cfg, args.height, args.width)
        step()
        res["cuda_syncs_per_step"] = sum(cuda_sync_sites(step, 2).values()) / 2
    print(json.dumps(res), flush=True)
    with open(os.path.join(args.out, "quick.json"), "w") as f:
        json.dump(res, f)


def _device_name() -> str:
    return torch.cuda.get_device_name() if DEVICE == "cuda" else "CPU (dry run)"


def _train_steps(cfg, height: int, width: int):
    """A model and a closure running one Trainer-like step (forward, backward, SGD step)."""
    from detgn.benchmark.model import synthetic_batch
    from detgn.modeling import build_model

    torch.manual_seed(0)
    model = build_model(cfg)
    model.train()
    batch = synthetic_batch(2, height, width, num_classes=cfg.MODEL.ROI_HEADS.NUM_CLASSES)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-4, momentum=0.9)
    amp = cfg.SOLVER.AMP.ENABLED and DEVICE == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=amp)

    def step():
        with torch.autocast("cuda", dtype=torch.float16, enabled=amp):
            losses = model(batch)
        scaler.scale(sum(losses.values())).backward()
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=True)

    return model, batch, step


def syncs(args) -> None:
    from detgn.benchmark.host_syncs import audit_host_syncs, cuda_sync_sites

    cfg = _cfg(CONFIGS["R50-FPN GN 4conv1fc"], True)
    model, batch, step = _train_steps(cfg, args.height, args.width)
    for _ in range(2):
        step()
    lines = []
    if DEVICE == "cuda":
        sites = cuda_sync_sites(step, args.steps)
        lines += [f"CUDA sync debug mode, R50-FPN GN AMP training step: {sum(sites.values()) / args.steps:.1f} "
                  "syncs per step"] + [f"{c / args.steps:6.1f}  {w}" for w, c in sites.most_common()] + [""]
    audit = audit_host_syncs(_cfg(CONFIGS["R50-FPN GN 4conv1fc"], False, "MODEL.DEVICE", "cpu"), height=256, width=320)
    lines += [f"CPU audit (detgn.benchmark.host_syncs), same model at 256x320: {audit['train_total']} per "
              f"training step, {audit['inference_total']} per inference", audit["train"].table()]
    text = "\n".join(lines)
    print(text, flush=True)
    with open(os.path.join(args.out, "syncs.txt"), "w") as f:
        f.write(text + "\n")


def profile(args) -> None:
    from detgn.benchmark.model import synchronize
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    out = []
    for amp in (True, False):
        cfg = _cfg(CONFIGS["R50-FPN GN 4conv1fc"], amp)
        model, batch, step = _train_steps(cfg, args.height, args.width)
        for _ in range(3):
            step()
        synchronize(DEVICE)
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if DEVICE == "cuda" else [])
        with torch_profile(activities=activities) as prof:
            for _ in range(args.steps):
                step()
            synchronize(DEVICE)
        ka = prof.key_averages()
        sort = "device_time_total" if hasattr(next(iter(ka)), "device_time_total") else "cuda_time_total"
        out.append(f"## R50-FPN GN 4conv1fc training, AMP {'on' if amp else 'off'}, {args.steps} steps, "
                   f"{args.height}x{args.width}, 2 images\n\n### by GPU time\n")
        out.append(ka.table(sort_by=sort, row_limit=35, max_name_column_width=60))
        out.append("\n### by CPU time (self)\n")
        out.append(ka.table(sort_by="self_cpu_time_total", row_limit=25, max_name_column_width=60))
        del model
        if DEVICE == "cuda":
            torch.cuda.empty_cache()
    text = "\n".join(out)
    with open(os.path.join(args.out, "profile.md"), "w") as f:
        f.write(text)
    print(text[:6000], flush=True)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=["bench", "quick", "syncs", "profile"])
    ap.add_argument("--out", default=".")
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--steps", type=int, default=3, help="syncs / profile: steps recorded")
    ap.add_argument("--height", type=int, default=800)
    ap.add_argument("--width", type=int, default=1216)
    ap.add_argument("--device", default="cuda", help="cpu: a dry run of this script without a GPU")
    args = ap.parse_args(argv)
    global DEVICE
    DEVICE = args.device
    os.makedirs(args.out, exist_ok=True)
    {"bench": bench, "quick": quick, "syncs": syncs, "profile": profile}[args.what](args)


if __name__ == "__main__":
    main()
