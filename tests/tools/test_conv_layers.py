"""tools/conv_layers.py: the convolution FLOP count and the per-layer timing report."""
from __future__ import annotations

import pytest


@pytest.fixture
def conv_layers(tools_helpers):
    return tools_helpers.load_tool("conv_layers")


def test_flops_count_forward_and_the_needed_backward(conv_layers):
    # 3 -> 8 channels, 3x3, stride 1, padding 1, on one 4x4 image: 2 * 8 * 16 * 3 * 9 per pass
    key = (3, 8, (3, 3), (1, 1), (1, 1), (1, 1), 1, False, (1, 3, 4, 4), True, False)
    assert conv_layers.conv_flops(key) == 2 * (2 * 8 * 16 * 3 * 9)  # forward + weight gradient
    frozen = key[:9] + (False, False)
    assert conv_layers.conv_flops(frozen) == 2 * 8 * 16 * 3 * 9
    strided = (3, 8, (3, 3), (2, 2), (1, 1), (1, 1), 1, False, (1, 3, 4, 4), True, True)
    assert conv_layers.conv_flops(strided) == 3 * (2 * 8 * 4 * 3 * 9)


def test_report_names_every_kernel_with_its_gflops(conv_layers, capsys):
    conv_layers.main(["--config", "synthetic/demo_gn_scratch.yaml", "--height", "64", "--width", "96", "--reps", "1",
                      "--top", "3", "CPU.NUM_THREADS", "1", "MODEL.RESNETS.STEM_OUT_CHANNELS", "8",
                      "MODEL.RESNETS.RES2_OUT_CHANNELS", "8", "MODEL.FPN.OUT_CHANNELS", "16"])
    out = capsys.readouterr().out
    totals = [line.strip() for line in out.splitlines() if "GFLOP/s" in line]
    for name in ("onednn_channels_last", "onednn_nchw", "slow_conv2d_nchw", "best kernel per layer"):
        assert any(line.startswith(name + ":") for line in totals), out
    assert "convolution per step:" in out
