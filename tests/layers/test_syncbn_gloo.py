"""SyncBatchNorm2d in a real 2-process gloo group against BN on the concatenated batch."""
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from detgn.layers import SyncBatchNorm2d

C = 4


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _inputs(sizes):
    g = torch.Generator().manual_seed(0)
    xs = [torch.randn(n, C, 5, 6, generator=g) * 2 + 1 for n in sizes]
    ws = [torch.randn(n, C, 5, 6, generator=g) for n in sizes]  # loss weights
    weight = torch.rand(C, generator=g) + 0.5
    bias = torch.randn(C, generator=g)
    return xs, ws, weight, bias


CASES = [(2, 3), (3, 0)]  # samples per rank; in the second, rank 1 has none


def _worker(rank, world_size, port, out_dir):
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size
    )
    try:
        for case, sizes in enumerate(CASES):
            _run_case(rank, sizes, os.path.join(out_dir, f"case{case}_rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def _run_case(rank, sizes, path):
    xs, ws, weight, bias = _inputs(sizes)
    m = SyncBatchNorm2d(C, momentum=0.1)
    with torch.no_grad():
        m.weight.copy_(weight)
        m.bias.copy_(bias)
    x = xs[rank].clone().requires_grad_(True)
    y = m(x)
    # A rank with no samples still back-propagates (a zero gradient) through y.
    (y * ws[rank]).sum().backward()
    torch.save(
        {
            "y": y.detach(),
            "x_grad": x.grad,
            "w_grad": m.weight.grad,
            "b_grad": m.bias.grad,
            "running_mean": m.running_mean,
            "running_var": m.running_var,
        },
        path,
    )


def _reference(sizes):
    xs, ws, weight, bias = _inputs(sizes)
    bn = nn.BatchNorm2d(C, momentum=0.1)
    with torch.no_grad():
        bn.weight.copy_(weight)
        bn.bias.copy_(bias)
    x = torch.cat(xs).requires_grad_(True)
    y = bn(x)
    (y * torch.cat(ws)).sum().backward()
    return bn, x, y


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("syncbn")
    mp.spawn(_worker, args=(2, _free_port(), str(out_dir)), nprocs=2, join=True)
    return out_dir


@pytest.mark.parametrize("case", range(len(CASES)))
def test_syncbn_matches_bn_on_concatenated_batch(results, case):
    sizes = CASES[case]
    outs = [torch.load(results / f"case{case}_rank{r}.pt") for r in range(2)]
    bn, x, y = _reference(sizes)
    tol = dict(rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(torch.cat([o["y"] for o in outs]), y.detach(), **tol)
    torch.testing.assert_close(torch.cat([o["x_grad"] for o in outs]), x.grad, **tol)
    # Each rank holds the gradient of its own loss term; DDP would sum (average) them.
    torch.testing.assert_close(outs[0]["w_grad"] + outs[1]["w_grad"], bn.weight.grad, **tol)
    torch.testing.assert_close(outs[0]["b_grad"] + outs[1]["b_grad"], bn.bias.grad, **tol)
    for o in outs:
        torch.testing.assert_close(o["running_mean"], bn.running_mean, **tol)
        torch.testing.assert_close(o["running_var"], bn.running_var, **tol)
    if sizes[1] == 0:
        assert outs[1]["y"].shape == (0, C, 5, 6)
        assert outs[1]["x_grad"].shape == (0, C, 5, 6)
