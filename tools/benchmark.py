#!/usr/bin/env python
"""Speed and memory of a config: training step, inference, data loading, FLOPs.

    python tools/benchmark.py --config fpn_gn_long.yaml --task train [--iters 20] [KEY VALUE ...]
    python tools/benchmark.py --config NAME --task inference --torchvision   # + torchvision's Mask R-CNN

Prints median time per iteration / image after warm-up, images/s, peak memory and
FLOPs (fvcore, one inference pass). A benchmark prints figures; it asserts nothing.
``--torchvision`` measures torchvision's ``maskrcnn_resnet50_fpn`` (random weights,
same input sizes, same number of images per step) in the same process and prints the
ratio detgn / torchvision.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from detgn.config import load_config  # noqa: E402


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def synthetic_batch(cfg, n: int, height: int, width: int, num_instances: int = 6, seed: int = 0, train=True):
    """n mapped-looking inputs (random pixels, random boxes and box-shaped polygon masks)."""
    from detgn.structures import Boxes, Instances, PolygonMasks

    g = torch.Generator().manual_seed(seed)
    batch = []
    for i in range(n):
        img = torch.randint(0, 256, (3, height, width), generator=g, dtype=torch.uint8)
        d = {"image": img, "height": height, "width": width, "image_id": i, "file_name": f"bench_{i}"}
        if train:
            xy = torch.rand(num_instances, 2, generator=g) * torch.tensor([width * 0.7, height * 0.7])
            wh = 16 + torch.rand(num_instances, 2, generator=g) * torch.tensor([width * 0.3, height * 0.3])
            boxes = torch.cat([xy, xy + wh], 1)
            polys = [[[b[0], b[1], b[2], b[1], b[2], b[3], b[0], b[3]]] for b in boxes.tolist()]
            inst = Instances((height, width))
            inst.gt_boxes = Boxes(boxes)
            inst.gt_classes = torch.randint(0, cfg.MODEL.ROI_HEADS.NUM_CLASSES, (num_instances,), generator=g)
            inst.gt_masks = PolygonMasks(polys)
            d["instances"] = inst
        batch.append(d)
    return batch


def time_loop(fn, warmup: int, iters: int, device) -> list:
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return times


def bench_detgn(cfg, task: str, args) -> dict:
    from detgn.modeling import build_model

    torch.manual_seed(0)
    model = build_model(cfg)
    device = cfg.MODEL.DEVICE
    h, w = args.height, args.width
    n = cfg.SOLVER.IMS_PER_GPU
    res = {"model": "detgn", "config": args.config, "input": f"{h}x{w}", "images_per_step": n}
    if cfg.CPU.CHANNELS_LAST:
        model = model.to(memory_format=torch.channels_last)
    if task == "train":
        model.train()
        opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-4, momentum=0.9)
        batch = synthetic_batch(cfg, n, h, w)
        use_bf16 = cfg.CPU.BF16 and torch.device(device).type == "cpu"

        def step():
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=use_bf16):
                losses = model(batch)
            loss = sum(losses.values())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        times = time_loop(step, args.warmup, args.iters, device)
        res["s_per_iter"] = statistics.median(times)
        res["images_per_s"] = n / res["s_per_iter"]
    elif task == "inference":
        model.eval()
        batch = synthetic_batch(cfg, 1, h, w, train=False)

        @torch.no_grad()
        def infer():
            model(batch)

        times = time_loop(infer, args.warmup, args.iters, device)
        res["s_per_image"] = statistics.median(times)
        res["images_per_s"] = 1.0 / res["s_per_image"]
        if args.flops:
            res["gflops_inference"] = count_flops(model, batch)
    res["peak_mem_mb"] = (
        torch.cuda.max_memory_allocated() / 2**20 if torch.device(device).type == "cuda" else peak_rss_mb()
    )
    res["params"] = sum(p.numel() for p in model.parameters())
    return res


def count_flops(model, batch) -> float:
    """GFLOPs of one inference pass (fvcore; one multiply-add counted as one flop)."""
    from fvcore.nn import FlopCountAnalysis

    class Wrapper(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, image):
            out = self.m([dict(batch[0], image=image)])[0]["instances"]
            fields = [out.pred_boxes.tensor, out.scores, out.pred_classes]
            if out.has("pred_masks"):
                fields.append(out.pred_masks)
            return tuple(fields)

    with torch.no_grad():
        fca = FlopCountAnalysis(Wrapper(model).eval(), (batch[0]["image"],))
        fca.unsupported_ops_warnings(False)
        fca.uncalled_modules_warnings(False)
        return fca.total() / 1e9


def bench_torchvision(cfg, task: str, args) -> dict:
    """torchvision's maskrcnn_resnet50_fpn (FrozenBN backbone, as when fine-tuning) at the same size."""
    import torchvision
    from torchvision.models.detection import MaskRCNN
    from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
    from torchvision.ops import FrozenBatchNorm2d

    torch.manual_seed(0)
    trunk = torchvision.models.resnet50(weights=None, norm_layer=FrozenBatchNorm2d)
    backbone = _resnet_fpn_extractor(trunk, 3)
    h, w = args.height, args.width
    model = MaskRCNN(backbone, num_classes=cfg.MODEL.ROI_HEADS.NUM_CLASSES + 1,
                     min_size=min(h, w), max_size=max(h, w)).to(cfg.MODEL.DEVICE)
    n = cfg.SOLVER.IMS_PER_GPU
    device = cfg.MODEL.DEVICE
    res = {"model": "torchvision maskrcnn_resnet50_fpn", "input": f"{h}x{w}", "images_per_step": n}
    batch = synthetic_batch(cfg, n, h, w)
    images = [b["image"].float().div(255).to(device) for b in batch]
    if task == "train":
        targets = []
        for b in batch:
            inst = b["instances"]
            targets.append({
                "boxes": inst.gt_boxes.tensor.to(device),
                "labels": (inst.gt_classes + 1).to(device),
                "masks": inst.gt_masks.to_bitmasks(h, w).tensor.to(torch.uint8).to(device),
            })
        model.train()
        opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-4, momentum=0.9)

        def step():
            losses = model(images, targets)
            loss = sum(losses.values())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        times = time_loop(step, args.warmup, args.iters, device)
        res["s_per_iter"] = statistics.median(times)
        res["images_per_s"] = n / res["s_per_iter"]
    else:
        model.eval()

        @torch.no_grad()
        def infer():
            model(images[:1])

        times = time_loop(infer, args.warmup, args.iters, device)
        res["s_per_image"] = statistics.median(times)
        res["images_per_s"] = 1.0 / res["s_per_image"]
    res["params"] = sum(p.numel() for p in model.parameters())
    return res


def bench_data(cfg, args) -> dict:
    from detgn.data.benchmark import benchmark_loader

    return benchmark_loader(cfg, args.iters)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", required=True)
    ap.add_argument("--task", choices=["train", "inference", "data"], required=True)
    ap.add_argument("--iters", type=int, default=10, help="timed iterations (data: images)")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--height", type=int, default=800, help="input height (images are already resized)")
    ap.add_argument("--width", type=int, default=1216, help="input width")
    ap.add_argument("--flops", action="store_true", help="count inference FLOPs with fvcore")
    ap.add_argument("--torchvision", action="store_true", help="also measure torchvision's Mask R-CNN R50-FPN")
    ap.add_argument("--json", help="append the results as JSON lines to this file")
    ap.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    args = ap.parse_args(argv)
    cfg = load_config(args.config, args.opts)
    if cfg.CPU.NUM_THREADS > 0:
        torch.set_num_threads(cfg.CPU.NUM_THREADS)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {cfg.MODEL.DEVICE}", flush=True)
    results = []
    if args.task == "data":
        results.append(bench_data(cfg, args))
    else:
        results.append(bench_detgn(cfg, args.task, args))
        if args.torchvision:
            results.append(bench_torchvision(cfg, args.task, args))
    key = "s_per_iter" if args.task == "train" else "s_per_image"
    for r in results:
        print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()}), flush=True)
    if len(results) == 2:
        print(f"ratio detgn / torchvision ({key}): {results[0][key] / results[1][key]:.3f}")
    if args.json:
        with open(args.json, "a") as f:
            for r in results:
                f.write(json.dumps(r) + "\n")
    return results


if __name__ == "__main__":
    main()
