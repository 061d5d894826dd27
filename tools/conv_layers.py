#!/usr/bin/env python
"""Time every convolution of a config's training step alone, with three kernels, and print
the GFLOP/s they reach: is the step bound by the convolutions' arithmetic or by the kernels?

    python tools/conv_layers.py --config synthetic/demo_gn_scratch.yaml --height 288 --width 384 \
        [--top 20] [KEY VALUE ...]

Runs one training step of the config's model (random weights, ``SOLVER.IMS_PER_GPU``
synthetic images of the given size) to record each ``nn.Conv2d``'s input shape, then times
each distinct layer forward + backward (only the gradients the step needs) with oneDNN on
channels-last tensors, oneDNN on NCHW tensors, and PyTorch's own ``slow_conv2d`` (oneDNN
off). Prints the slowest layers, the totals per kernel, the best kernel per layer, and the
step's convolution GFLOP with the GFLOP/s of each kernel. ``CPU.NUM_THREADS`` sets the threads.
"""
from __future__ import annotations

import argparse
import collections
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from detgn.benchmark.model import synthetic_batch  # noqa: E402
from detgn.config import load_config  # noqa: E402
from detgn.modeling import build_model  # noqa: E402

KERNELS = (("onednn_channels_last", True, True), ("onednn_nchw", False, True), ("slow_conv2d_nchw", False, False))


def record_layers(model: nn.Module, batch) -> collections.Counter:
    """Counter of (conv hyper-parameters, input shape, weight needs grad, input needs grad)."""
    layers: collections.Counter = collections.Counter()

    def hook(m, inp):
        x = inp[0]
        layers[(m.in_channels, m.out_channels, m.kernel_size, m.stride, m.padding, m.dilation, m.groups,
                m.bias is not None, tuple(x.shape), m.weight.requires_grad, x.requires_grad)] += 1

    handles = [m.register_forward_pre_hook(hook) for m in model.modules() if isinstance(m, nn.Conv2d)]
    losses = model(batch)
    sum(losses.values()).backward()
    for h in handles:
        h.remove()
    return layers


def conv_flops(key) -> int:
    """Multiply-adds x 2 of the forward pass and of the backward passes the step needs."""
    ci, co, k, s, p, d, g, _, xs, w_grad, x_grad = key
    ho = (xs[2] + 2 * p[0] - d[0] * (k[0] - 1) - 1) // s[0] + 1
    wo = (xs[3] + 2 * p[1] - d[1] * (k[1] - 1) - 1) // s[1] + 1
    forward = 2 * xs[0] * co * ho * wo * (ci // g) * k[0] * k[1]
    return forward * (1 + int(w_grad) + int(x_grad))


def time_layer(key, channels_last: bool, onednn: bool, reps: int) -> float:
    """Median seconds of forward + backward of one layer."""
    ci, co, k, s, p, d, g, bias, xs, w_grad, x_grad = key
    conv = nn.Conv2d(ci, co, k, s, p, d, g, bias=bias)
    conv.weight.requires_grad_(w_grad)
    if conv.bias is not None:
        conv.bias.requires_grad_(w_grad)
    x = torch.randn(xs)
    if channels_last:
        conv = conv.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_(x_grad)
    times = []
    with torch.backends.mkldnn.flags(enabled=onednn):
        grad = torch.randn_like(conv(x))
        for _ in range(reps + 2):
            t0 = time.perf_counter()
            y = conv(x)
            if y.requires_grad:
                y.backward(grad)
            times.append(time.perf_counter() - t0)
    return statistics.median(times[2:])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", required=True)
    ap.add_argument("--height", type=int, default=288)
    ap.add_argument("--width", type=int, default=384)
    ap.add_argument("--reps", type=int, default=5, help="timed repetitions per layer and kernel")
    ap.add_argument("--top", type=int, default=15, help="slowest layers listed")
    ap.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    args = ap.parse_args(argv)
    cfg = load_config(args.config, [*args.opts, "VERBOSE_STARTUP", "False"])
    if cfg.CPU.NUM_THREADS > 0:
        torch.set_num_threads(cfg.CPU.NUM_THREADS)
    torch.manual_seed(0)
    model = build_model(cfg).train()
    batch = synthetic_batch(cfg.SOLVER.IMS_PER_GPU, args.height, args.width, num_classes=cfg.MODEL.ROI_HEADS.NUM_CLASSES)
    layers = record_layers(model, batch)
    totals = collections.defaultdict(float)
    best = 0.0
    rows = []
    for key, n in layers.items():
        t = {name: n * time_layer(key, cl, dnn, args.reps) for name, cl, dnn in KERNELS}
        for name, v in t.items():
            totals[name] += v
        best += min(t.values())
        rows.append((key, n, t))
    rows.sort(key=lambda r: -r[2][KERNELS[0][0]])
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s); {args.config} at "
          f"{args.height}x{args.width}, {cfg.SOLVER.IMS_PER_GPU} image(s); ms per step (layer time x calls)")
    for key, n, t in rows[:args.top]:
        ci, co, k, s = key[:4]
        print(f"  {ci}->{co} {k[0]}x{k[1]}/{s[0]} input {tuple(key[8])} x{n}: "
              + ", ".join(f"{name} {v * 1e3:.1f}" for name, v in t.items()))
    gflop = sum(n * conv_flops(key) for key, n in layers.items()) / 1e9
    print(f"convolution per step: {gflop:.1f} GFLOP (forward + the backward passes needed)")
    for name, v in totals.items():
        print(f"  {name}: {v * 1e3:.1f} ms, {gflop / v:.0f} GFLOP/s")
    print(f"  best kernel per layer: {best * 1e3:.1f} ms, {gflop / best:.0f} GFLOP/s")


if __name__ == "__main__":
    main()
