"""RoIAlign on several CPU threads (detgn.layers.ops): the same values and gradients as
torchvision's single call, bit for bit, and the plain call where it does not apply."""
from __future__ import annotations

import pytest
import torch
from torchvision.ops import roi_align as tv_roi_align

from detgn.layers import ops


def _inputs(seed, n=2, c=16, h=40, w=56, r=37):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, h, w, generator=g)
    xy = torch.rand(r, 2, generator=g) * torch.tensor([w * 6.0, h * 6.0])
    wh = 1 + torch.rand(r, 2, generator=g) * 80
    rois = torch.cat([torch.randint(0, n, (r, 1), generator=g).float(), xy - 10, xy + wh], 1)
    return x, rois, torch.randn(r, c, 7, 7, generator=g)


@pytest.mark.parametrize("sampling_ratio, aligned", [(2, True), (0, True), (2, False), (0, False)])
def test_threaded_roi_align_is_bit_identical(two_threads, sampling_ratio, aligned):
    for seed, layout in ((0, torch.contiguous_format), (1, torch.channels_last)):
        x, rois, grad = _inputs(seed)
        x = x.contiguous(memory_format=layout)
        a = x.clone().requires_grad_()
        b = x.clone().requires_grad_()
        out = ops.roi_align(a, rois, 7, 1 / 8, sampling_ratio, aligned)
        ref = tv_roi_align(b, rois, 7, 1 / 8, sampling_ratio, aligned)
        assert torch.equal(out, ref)
        out.backward(grad)
        ref.backward(grad)
        assert torch.equal(a.grad, b.grad)
        assert a.grad.abs().sum() > 0


def test_the_threaded_path_is_the_one_taken(two_threads, monkeypatch):
    calls = []
    apply = ops._ThreadedRoIAlign.apply
    monkeypatch.setattr(ops._ThreadedRoIAlign, "apply", lambda *a: calls.append(1) or apply(*a))
    x, rois, _ = _inputs(2)
    ops.roi_align(x, rois, 7, 1 / 8, 2, True)
    assert calls == [1]
    ops.roi_align(x, rois[:3], 7, 1 / 8, 2, True)  # too few RoIs to split: one call
    torch.set_num_threads(1)
    ops.roi_align(x, rois, 7, 1 / 8, 2, True)  # one thread: torchvision's call
    assert calls == [1]


def test_bf16_features_sample_in_float32_on_threads(two_threads):
    x, rois, grad = _inputs(3)
    a = x.to(torch.bfloat16).requires_grad_()
    out = ops.roi_align(a, rois, 7, 1 / 8, 2, True)
    assert out.dtype == torch.bfloat16
    ref = tv_roi_align(a.detach().float(), rois, 7, 1 / 8, 2, True)
    assert torch.equal(out, ref.to(torch.bfloat16))
    out.backward(grad.to(torch.bfloat16))
    assert a.grad.dtype == torch.bfloat16 and a.grad.shape == a.shape


def test_no_rois_still_gives_a_zero_gradient(two_threads):
    x, rois, _ = _inputs(4)
    a = x.requires_grad_()
    out = ops.roi_align(a, rois[:0], 7, 1 / 8, 2, True)
    assert out.shape == (0, 16, 7, 7)
    out.sum().backward()
    assert torch.equal(a.grad, torch.zeros_like(a))
