"""CPU.BF16 auto | on | off: bf16 autocast by default exactly where the CPU has native bf16.

The CPU's instructions are mocked, so the decision is tested for a CPU with AMX / AVX512-BF16
and one without, whatever CPU runs the suite."""
import pytest
import torch

import detgn.utils.cpu as cpu
from detgn.config import ConfigError, get_cfg, load_config
from detgn.utils.cpu import normalize_bf16_setting, resolve_bf16


@pytest.fixture
def native(monkeypatch):
    monkeypatch.setattr(cpu, "cpu_bf16_support", lambda: (True, "AMX-BF16/AVX512-BF16"))


@pytest.fixture
def emulated(monkeypatch):
    monkeypatch.setattr(cpu, "cpu_bf16_support", lambda: (False, "no AMX-BF16 or AVX512-BF16"))


def test_default_is_auto():
    assert get_cfg().CPU.BF16 == "auto"


def test_auto_on_a_cpu_with_native_bf16(native):
    choice = resolve_bf16("auto")
    assert choice.enabled and "AMX-BF16" in choice.reason and "auto" in choice.reason


def test_auto_on_a_cpu_without_native_bf16(emulated):
    choice = resolve_bf16("auto")
    assert not choice.enabled and "emulated" in choice.reason


def test_on_and_off_override(native, monkeypatch):
    assert not resolve_bf16("off").enabled
    monkeypatch.setattr(cpu, "cpu_bf16_support", lambda: (False, "none"))
    choice = resolve_bf16("on")
    assert choice.enabled and "emulated" in choice.reason


def test_never_on_another_device(native):
    choice = resolve_bf16("on", "cuda:0")
    assert not choice.enabled and "SOLVER.AMP" in choice.reason


@pytest.mark.parametrize("value,expected", [(True, "on"), (False, "off"), ("True", "on"), ("off", "off"),
                                            ("AUTO", "auto"), ("1", "on")])
def test_spellings(value, expected):
    assert normalize_bf16_setting(value) == expected


def test_config_keeps_old_booleans_and_rejects_nonsense(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("CPU:\n  BF16: True\n")
    assert load_config(str(f)).CPU.BF16 == "on"
    assert load_config(str(f), ["CPU.BF16", "False"]).CPU.BF16 == "off"
    with pytest.raises(ConfigError, match="CPU.BF16"):
        load_config(str(f), ["CPU.BF16", "fast"])


def _tiny(*opts):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "modeling"))
    from detector_testdata import tiny_cfg

    cfg = tiny_cfg("FPN", "GN", "4conv1fc")
    cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST = 96, 160
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 0.0
    cfg.merge_from_list(list(opts))
    return cfg


def test_model_follows_the_decision(native):
    from detgn.modeling import build_model

    assert build_model(_tiny()).inference_bf16  # auto on a (mocked) native-bf16 CPU
    assert not build_model(_tiny("CPU.BF16", "off")).inference_bf16


def test_model_follows_the_decision_without_native_bf16(emulated):
    from detgn.modeling import build_model

    assert not build_model(_tiny()).inference_bf16


def test_bf16_inference_keeps_outputs_float32_and_close_to_fp32():
    import numpy as np

    from detgn.engine import Predictor

    torch.manual_seed(0)
    p32 = Predictor(_tiny("CPU.BF16", "off"))
    p16 = Predictor(_tiny("CPU.BF16", "on"))
    p16.model.load_state_dict(p32.model.state_dict())
    assert p16.model.inference_bf16 and not p32.model.inference_bf16
    image = np.random.default_rng(0).integers(0, 255, (120, 150, 3), dtype=np.uint8)
    a, b = p32(image), p16(image)
    assert b.pred_boxes.tensor.dtype == torch.float32 and b.scores.dtype == torch.float32
    assert b.pred_masks.dtype == torch.bool and b.pred_masks.shape[1:] == a.pred_masks.shape[1:]
    assert len(b) == len(a) == 100
    assert (a.scores.max() - b.scores.max()).abs() < 0.05


@pytest.mark.parametrize("env, native", [
    ({}, True),
    ({"ONEDNN_MAX_CPU_ISA": "AVX2"}, False),  # an AVX2-only CPU emulated on a newer one
    ({"ONEDNN_MAX_CPU_ISA": "avx512_core_vnni"}, False),
    ({"ATEN_CPU_CAPABILITY": "avx2"}, False),
    ({"DNNL_MAX_CPU_ISA": "AVX512_CORE_BF16"}, "AVX512-BF16"),  # bf16 kept, AMX capped away
    ({"ONEDNN_MAX_CPU_ISA": "ALL"}, True),
])
def test_instruction_set_caps_of_the_environment(monkeypatch, env, native):
    """auto follows what the kernels may use, not only what the CPU has."""
    for var in ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY"):
        monkeypatch.delenv(var, raising=False)
    for var, value in env.items():
        monkeypatch.setenv(var, value)
    monkeypatch.setattr(cpu, "_cpuinfo_flags", lambda: frozenset({"avx2", "avx512_bf16", "amx_bf16"}))
    found, what = cpu.cpu_bf16_support()
    if native is False:
        assert not found and "within" in what
        assert not cpu.resolve_bf16("auto").enabled
    else:
        assert found and (native is True and what == "AMX-BF16/AVX512-BF16" or what == native)
