"""detgn's GroupNorm normalises a bf16 channels-last input in float32 (torch's kernel for that
case is slow on the CPU): same outputs and gradients as nn.GroupNorm in float32, up to bf16's
rounding of the output, and exactly nn.GroupNorm on every other input."""
import pytest
import torch
from torch import nn

from detgn.layers import GroupNorm, get_norm
from detgn.layers.norm import _native_reduced_channels_last_is_faster


def _pair(groups=8, channels=64):
    torch.manual_seed(0)
    ours, ref = GroupNorm(groups, channels), nn.GroupNorm(groups, channels)
    with torch.no_grad():
        ours.weight.uniform_(0.5, 1.5)
        ours.bias.uniform_(-0.5, 0.5)
    ref.load_state_dict(ours.state_dict())
    return ours, ref


def test_norm_layers_are_detgn_group_norm():
    for name in ("GN", "LN", "IN"):
        m = get_norm(name, 64)
        assert type(m) is GroupNorm and isinstance(m, nn.GroupNorm)
    assert set(get_norm("GN", 64).state_dict()) == {"weight", "bias"}


def test_bf16_channels_last_matches_float32_reference():
    ours, ref = _pair()
    x = (torch.randn(2, 64, 12, 16) * 3 + 1).to(memory_format=torch.channels_last)
    xb = x.bfloat16().requires_grad_()
    xf = xb.detach().float().requires_grad_()
    y = ours(xb)
    y_ref = ref(xf)
    assert y.dtype == torch.bfloat16 and y.is_contiguous(memory_format=torch.channels_last)
    # The float32 result rounded once to bf16.
    assert torch.equal(y, y_ref.bfloat16())
    g = torch.randn_like(y_ref)
    y.backward(g.bfloat16())
    y_ref.backward(g.bfloat16().float())
    assert xb.grad.dtype == torch.bfloat16
    torch.testing.assert_close(xb.grad.float(), xf.grad, rtol=0.02, atol=0.02)
    torch.testing.assert_close(ours.weight.grad, ref.weight.grad, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("dtype, channels_last", [(torch.float32, True), (torch.float32, False),
                                                  (torch.bfloat16, False), (torch.float64, True)])
def test_other_inputs_take_torch_path_unchanged(dtype, channels_last):
    ours, ref = _pair()
    ours, ref = ours.to(dtype), ref.to(dtype)
    x = torch.randn(2, 64, 6, 8, dtype=dtype)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    assert torch.equal(ours(x), ref(x))


def test_export_takes_detgn_group_norm_into_its_export_form():
    from detgn.export.exporter import _GroupNormForExport, prepare_for_export

    model = nn.Sequential(nn.Conv2d(3, 32, 3), get_norm("GN", 32), nn.ReLU(), get_norm("IN", 32))
    x = torch.randn(2, 3, 10, 10)
    before = model(x)
    prepare_for_export(model)
    assert [type(m) for m in model if isinstance(m, nn.GroupNorm)] == [_GroupNormForExport] * 2
    assert torch.equal(model(x), before)


@pytest.mark.parametrize("shape, groups", [((1, 512, 6, 8), 32), ((1, 64, 250, 200), 8)])
def test_wide_groups_and_large_maps_take_torchs_own_kernel(shape, groups):
    """Where torch's bf16 channels-last kernel is faster (16+ channels per group, or 8+ on maps
    of 50,000+ pixels), the output is nn.GroupNorm's own."""
    ours, ref = _pair(groups, shape[1])
    x = torch.randn(*shape).bfloat16().to(memory_format=torch.channels_last)
    with torch.no_grad():
        assert torch.equal(ours(x), ref(x))
    assert _native_reduced_channels_last_is_faster(shape, groups)


@pytest.mark.parametrize("shape, groups", [((1, 256, 100, 152), 32), ((1, 64, 200, 304), 32), ((512, 256, 7, 7), 32),
                                           ((2, 64, 72, 96), 8)])
def test_where_the_float32_detour_measured_faster_it_is_taken(shape, groups):
    assert not _native_reduced_channels_last_is_faster(shape, groups)
