"""MODEL.COMPILE: torch.compile of the backbone gives the eager backbone's features, and is
refused where inductor would generate AVX2 code (NaN features with torch 2.14.1)."""
import pytest
import torch

from detgn.config import ConfigError, load_config
from detgn.modeling import build_model
from detgn.modeling import build as build_module

TINY = ["MODEL.RESNETS.STEM_OUT_CHANNELS", "8", "MODEL.RESNETS.RES2_OUT_CHANNELS", "8",
        "MODEL.FPN.OUT_CHANNELS", "16", "MODEL.ROI_BOX_HEAD.CONV_DIM", "16", "MODEL.ROI_BOX_HEAD.FC_DIM", "32",
        "MODEL.ROI_MASK_HEAD.CONV_DIM", "16", "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0",
        "VERBOSE_STARTUP", "False"]


def test_unknown_part_is_refused():
    cfg = load_config("synthetic/demo_gn_scratch.yaml", TINY + ["MODEL.COMPILE", "heads"])
    with pytest.raises(ConfigError, match="MODEL.COMPILE"):
        build_model(cfg)


def test_avx2_code_generation_is_refused(monkeypatch):
    monkeypatch.setattr(build_module, "_inductor_vec_isa", lambda: "avx2")
    cfg = load_config("synthetic/demo_gn_scratch.yaml", TINY + ["MODEL.COMPILE", "backbone"])
    with pytest.raises(ConfigError, match="NaN"):
        build_model(cfg)


def test_compiled_backbone_gives_the_eager_features_and_the_same_state_dict():
    if build_module._inductor_vec_isa() == "avx2":
        pytest.skip("inductor generates AVX2 code here: MODEL.COMPILE is refused (test above)")
    torch.manual_seed(0)
    eager = build_model(load_config("synthetic/demo_gn_scratch.yaml", TINY)).eval()
    compiled = build_model(load_config("synthetic/demo_gn_scratch.yaml", TINY + ["MODEL.COMPILE", "backbone"])).eval()
    assert list(compiled.state_dict()) == list(eager.state_dict())
    compiled.load_state_dict(eager.state_dict())
    x = torch.randn(2, 3, 96, 128)
    with torch.no_grad():
        feats_e = eager.backbone(x)
        feats_c = compiled.backbone(x)
    assert compiled.backbone._compiled_call_impl is not None  # the inductor graph ran, not eager code
    assert list(feats_c) == list(feats_e)
    for name in feats_e:
        torch.testing.assert_close(feats_c[name], feats_e[name], atol=1e-4, rtol=1e-4)
