"""model_zoo.configs.get_config / get: config names, trained-weights names, model wiring."""
from __future__ import annotations

import hashlib
import io
import pytest
import torch

from detgn import model_zoo
from detgn.model_zoo import configs as zoo_configs
from detgn.config import ConfigError


@pytest.fixture
def configs(tmp_path, monkeypatch, zoo_env):
    root = tmp_path / "configs"
    (root / "paper").mkdir(parents=True)
    # A small model (R18, narrow FPN and box head) keeps the real build fast on a CPU.
    (root / "paper" / "tiny.yaml").write_text(
        'MODEL:\n  MASK_ON: False\n  WEIGHTS: ""\n'
        "  RESNETS:\n    DEPTH: 18\n    RES2_OUT_CHANNELS: 64\n"
        "  FPN:\n    OUT_CHANNELS: 32\n  ROI_BOX_HEAD:\n    FC_DIM: 64\n"
        "SOLVER:\n  MAX_ITER: 7\n"
    )
    (root / "paper" / "pre.yaml").write_text('MODEL:\n  WEIGHTS: "detgn://ImageNetPretrained/R-50-GN"\n')
    monkeypatch.setenv("DETGN_CONFIGS", str(root))
    return root


def test_get_config_by_file_or_zoo_name(configs):
    for name in ("tiny.yaml", "tiny", "paper/tiny.yaml", "detgn://tiny/model_final"):
        cfg = zoo_configs.get_config(name)
        assert cfg.SOLVER.MAX_ITER == 7 and cfg.MODEL.MASK_ON is False and cfg.MODEL.WEIGHTS == ""
    assert zoo_configs.get_config("pre").MODEL.WEIGHTS == "detgn://ImageNetPretrained/R-50-GN"
    assert zoo_configs.get_config("tiny", opts=["SOLVER.MAX_ITER", "9"]).SOLVER.MAX_ITER == 9
    with pytest.raises(ConfigError, match="No config file"):
        zoo_configs.get_config("nonexistent.yaml")


def test_trained_needs_a_published_entry(configs):
    with pytest.raises(ValueError, match=r"No trained weights for config 'tiny'.*none yet"):
        zoo_configs.get_config("tiny.yaml", trained=True)
    model_zoo.register_model("tiny/model_final", "tiny/model_final.pth", "ab" * 32)
    for name in ("tiny.yaml", "paper/tiny", "detgn://tiny/model_final"):
        assert zoo_configs.get_config(name, trained=True).MODEL.WEIGHTS == "detgn://tiny/model_final"
    # A catalog keyed by the path under configs/ is found from the bare name too.
    model_zoo.register_model("paper/pre/model_final", "pre/model_final.pth", "cd" * 32)
    assert zoo_configs.trained_weights_name("pre.yaml") == "detgn://paper/pre/model_final"


def test_get_wires_build_model_and_load_weights(configs, monkeypatch):
    calls = []

    def fake_build(cfg):
        calls.append(("build", cfg.MODEL.DEVICE, cfg.MODEL.WEIGHTS))
        return torch.nn.Linear(2, 2)

    def fake_load(model, path_or_name, *, allow_pickle=False):
        calls.append(("load", type(model).__name__, path_or_name))

    # Stand-ins for the model code the façade builds and loads through.
    import detgn.engine.predictor as predictor_mod

    monkeypatch.setattr(predictor_mod, "build_model", fake_build)
    monkeypatch.setattr(predictor_mod, "load_weights", fake_load)
    zoo_configs.get("tiny.yaml")
    assert calls == [("build", "cpu", "")]  # empty MODEL.WEIGHTS: nothing to load
    calls.clear()
    zoo_configs.get("pre.yaml")
    assert calls == [("build", "cpu", "detgn://ImageNetPretrained/R-50-GN"),
                     ("load", "Linear", "detgn://ImageNetPretrained/R-50-GN")]
    calls.clear()
    model_zoo.register_model("tiny/model_final", "tiny/model_final.pth", "ab" * 32)
    zoo_configs.get("detgn://tiny/model_final", trained=True)
    assert calls == [("build", "cpu", "detgn://tiny/model_final"), ("load", "Linear", "detgn://tiny/model_final")]


def test_get_trained_end_to_end(configs, server):
    """Real build + real load of weights served by the loopback zoo server.

    Assumes load_weights accepts a ``torch.save({"model": state_dict})`` file.
    """
    model = zoo_configs.get("tiny.yaml")
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01)
    stream = io.BytesIO()
    torch.save({"model": model.state_dict()}, stream)
    data = stream.getvalue()
    server.files["tiny/model_final.pth"] = data
    model_zoo.register_model("tiny/model_final", "tiny/model_final.pth", hashlib.sha256(data).hexdigest())
    trained = zoo_configs.get("tiny", trained=True)
    want = model.state_dict()
    got = trained.state_dict()
    for k, v in want.items():
        assert torch.equal(got[k], v), k
    assert model_zoo.is_verified(model_zoo.get_checkpoint_path("detgn://tiny/model_final"))


def test_zoo_functions_are_attributes_of_the_zoo(configs):
    """``model_zoo.get_config(name)`` as in detectron2: the functions of model_zoo.configs."""
    for name in ("get", "get_config", "get_config_file", "trained_weights_name"):
        assert getattr(model_zoo, name) is getattr(zoo_configs, name)
        assert name in dir(model_zoo)
    assert model_zoo.get_config_file("tiny") == str(configs / "paper" / "tiny.yaml")
    assert model_zoo.get_config("detgn://paper/tiny/model_final").SOLVER.MAX_ITER == 7
    with pytest.raises(AttributeError, match="no attribute 'get_cfg'"):
        model_zoo.get_cfg
