"""load_weights: the report, errors, formats (.pth detgn / bare / torchvision layouts), zoo
names, class-count mismatches, and MODEL.WEIGHTS_ALLOW_PICKLE threading.
Detectron .pkl files are tested in test_c2_weights.py."""
import argparse
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
from torchvision.ops import FrozenBatchNorm2d as TvFrozenBN

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "engine"))
from engine_toys import ToyModel  # noqa: E402

from detgn.checkpoint import (  # noqa: E402
    WEIGHT_FORMATS,
    Checkpointer,
    CheckpointError,
    load_weights,
    register_weight_format,
)
from detgn.checkpoint.weights import group_keys  # noqa: E402
from detgn.config import get_cfg, load_config  # noqa: E402
from detgn.modeling import build_model  # noqa: E402

torch.set_num_threads(1)

R18 = ["MODEL.WEIGHTS", "", "MODEL.RESNETS.DEPTH", "18", "MODEL.RESNETS.RES2_OUT_CHANNELS", "64"]
SMALL_HEADS = ["MODEL.FPN.OUT_CHANNELS", "64", "MODEL.ROI_BOX_HEAD.CONV_DIM", "64", "MODEL.ROI_BOX_HEAD.FC_DIM", "128",
               "MODEL.ROI_MASK_HEAD.CONV_DIM", "64"]


def _randomize_(named_tensors, seed):
    """Non-trivial norm statistics/affines and biases (the initialisation has ones and zeros)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in named_tensors:
            if not t.is_floating_point():
                continue
            if name.endswith("running_var"):
                t.copy_(0.5 + torch.rand(t.shape, generator=g))
            elif name.endswith(("running_mean", "bias")):
                t.copy_(0.1 * torch.randn(t.shape, generator=g))
            elif "bn" in name or "norm" in name:
                t.copy_(0.5 + 0.5 * torch.rand(t.shape, generator=g))


def _build(name, *opts, seed=0):
    torch.manual_seed(seed)
    model = build_model(load_config(name, list(opts))).eval()
    _randomize_(model.state_dict().items(), seed + 100)
    return model


def test_group_keys():
    keys = [f"backbone.bottom_up.res2.{b}.conv{c}.{p}" for b in range(3) for c in (1, 2, 3) for p in ("weight", "norm.weight", "norm.bias")]
    keys += ["backbone.fpn_lateral2.weight", "backbone.fpn_lateral3.weight", "backbone.fpn_lateral5.weight", "x.1.y", "x.3.y"]
    assert group_keys(keys) == [
        "backbone.bottom_up.res2.{0..2}.conv{1..3}.weight",
        "backbone.bottom_up.res2.{0..2}.conv{1..3}.norm.{bias,weight}",
        "backbone.fpn_lateral{2,3,5}.weight",
        "x.{1,3}.y",
    ]
    assert group_keys(["res2_0_branch2a_w", "res2_1_branch2a_w", "pred_w", "pred_b"]) == ["res2_{0,1}_branch2a_w", "pred_{b,w}"]
    assert group_keys([]) == []


def test_report_loaded_missing_unused(tmp_path, caplog):
    src = ToyModel()
    state = {f"module.{k}": v for k, v in src.state_dict().items()}  # a DDP-saved state dict
    state["module.extra.weight"] = torch.zeros(2)
    del state["module.conv2.bias"]
    bare = tmp_path / "bare.pth"
    torch.save(state, bare)
    dst = ToyModel()
    with caplog.at_level("INFO", logger="detgn"):
        report = load_weights(dst, str(bare))
    text = str(report)
    print(text)
    assert report.format == "state dict" and "conv1.weight" in report.loaded
    assert report.missing == ["conv2.bias"] and report.unused == ["extra.weight"] and report.dropped == []
    assert torch.equal(dst.conv1.weight, src.conv1.weight)
    assert f"Weights from {bare} (state dict): 15 tensors loaded, 1 missing in the file, 1 unused" in text
    assert "missing (keep their initialisation): conv2.bias" in text
    assert "unused (in the file, not in the model): extra.weight" in text
    assert "bn.{bias,num_batches_tracked,running_mean,running_var,weight}" in text
    assert text in caplog.text  # every load logs its report


def test_shape_mismatch_is_an_error_naming_key_and_shapes(tmp_path):
    torch.save({"model": ToyModel(num_classes=4).state_dict()}, tmp_path / "w.pth")
    dst = ToyModel(num_classes=7)  # not a detector predictor: the shapes must fit
    before = {k: v.clone() for k, v in dst.state_dict().items()}
    with pytest.raises(CheckpointError) as e:
        load_weights(dst, str(tmp_path / "w.pth"))
    msg = str(e.value)
    assert "fc.weight: file (4, 8) vs model (7, 8)" in msg and "fc.bias: file (4,) vs model (7,)" in msg
    assert str(tmp_path / "w.pth") in msg and "Nothing was loaded" in msg
    for k, v in dst.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_load_weights_errors(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_weights(ToyModel(), str(tmp_path / "nope.pth"))
    (tmp_path / "w.bin").write_bytes(b"x")
    with pytest.raises(CheckpointError, match="No loader for '.bin'"):
        load_weights(ToyModel(), str(tmp_path / "w.bin"))
    # Old training scripts often stored their argparse namespace next to the weights.
    src = ToyModel()
    pickled = tmp_path / "pickled.pth"
    torch.save({"model": src.state_dict(), "args": argparse.Namespace(lr=0.1)}, pickled)
    with pytest.raises(CheckpointError, match="allow_pickle=True"):
        load_weights(ToyModel(), str(pickled))
    dst = ToyModel()
    report = load_weights(dst, str(pickled), allow_pickle=True)
    assert not report.missing and torch.equal(dst.fc.weight, src.fc.weight)


def test_allow_pickle_is_threaded_through_resume_or_load(tmp_path):
    assert get_cfg().MODEL.WEIGHTS_ALLOW_PICKLE is False
    src = ToyModel()
    pickled = tmp_path / "pickled.pth"
    torch.save({"model": src.state_dict(), "args": argparse.Namespace(lr=0.1)}, pickled)
    ck = Checkpointer(ToyModel(), str(tmp_path / "run"))
    with pytest.raises(CheckpointError, match="allow_pickle=True"):
        ck.resume_or_load(str(pickled), resume=False)
    state = ck.resume_or_load(str(pickled), resume=False, allow_pickle=True)
    assert state.start_iter == 0 and torch.equal(ck.model.fc.weight, src.fc.weight)


def test_load_weights_resolves_zoo_names_lazily(tmp_path, monkeypatch):
    import detgn.checkpoint.weights as weights_mod

    src = ToyModel()
    path = tmp_path / "zoo_file.pth"
    torch.save({"model": src.state_dict()}, path)
    calls = []
    monkeypatch.setattr(weights_mod, "download", lambda name, **k: calls.append(name) or str(path))
    dst = ToyModel()
    report = load_weights(dst, "detgn://Toy/model_final")
    assert calls == ["detgn://Toy/model_final"] and report.format == "detgn checkpoint"
    assert not report.missing and torch.equal(dst.fc.weight, src.fc.weight)


def test_registered_weight_format_gets_the_model(tmp_path, monkeypatch):
    """The extension point: a converter for another format receives the model to place keys."""
    src = ToyModel()
    np.savez(tmp_path / "w.npz", **{"fc_weight": src.fc.weight.detach().numpy()})
    seen = {}

    def npz_loader(path, *, model, allow_pickle):
        seen["keys"] = set(model.state_dict())
        seen["allow_pickle"] = allow_pickle
        blobs = np.load(path)
        return {"fc.weight": torch.from_numpy(blobs["fc_weight"])}

    monkeypatch.setitem(WEIGHT_FORMATS, ".npz", None)  # restored after the test
    register_weight_format(".NPZ", npz_loader)
    dst = ToyModel()
    report = load_weights(dst, str(tmp_path / "w.npz"))
    assert "fc.weight" in seen["keys"] and seen["allow_pickle"] is False
    assert report.loaded == ["fc.weight"] and "conv1.weight" in report.missing
    assert torch.equal(dst.fc.weight, src.fc.weight)


def test_torchvision_imagenet_resnet18_into_depth18(tmp_path):
    torch.manual_seed(0)
    tv = torchvision.models.resnet18(weights=None).eval()
    _randomize_(tv.state_dict().items(), 1)
    torch.save(tv.state_dict(), tmp_path / "resnet18.pth")
    dst = _build("gn_paper/mask_rcnn_R_50_FPN_BNstar_2x.yaml", *R18, seed=2)
    report = load_weights(dst, str(tmp_path / "resnet18.pth"))
    print(report)
    trunk = [k for k in dst.state_dict() if k.startswith("backbone.bottom_up.")]
    assert report.format == "torchvision ImageNet ResNet" and report.loaded == trunk
    assert sorted(report.unused) == sorted(["fc.weight", "fc.bias"] + [k for k in tv.state_dict() if k.endswith("num_batches_tracked")])
    assert dst.state_dict()["backbone.bottom_up.res3.0.shortcut.norm.running_var"].equal(tv.layer2[0].downsample[1].running_var)
    assert any("INPUT.FORMAT RGB" in n for n in report.notes)  # detgn's BGR/Detectron pixels differ
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        y = tv.maxpool(tv.relu(tv.bn1(tv.conv1(x))))
        ours = dst.backbone.bottom_up(x)
        for i, name in enumerate(["res2", "res3", "res4", "res5"]):
            y = getattr(tv, f"layer{i + 1}")(y)
            torch.testing.assert_close(ours[name], y, rtol=1e-5, atol=1e-5)


def test_torchvision_maskrcnn_state_dict_is_detected_and_converted(tmp_path):
    torch.manual_seed(3)
    trunk = torchvision.models.resnet18(weights=None, norm_layer=TvFrozenBN)
    tv = MaskRCNN(_resnet_fpn_extractor(trunk, 3), num_classes=5).eval()
    _randomize_(list(tv.state_dict().items()), 4)
    torch.save(tv.state_dict(), tmp_path / "maskrcnn.pth")
    dst = _build("gn_paper/mask_rcnn_R_50_FPN_BNstar_2x.yaml", *R18, "MODEL.POOLER_ALIGNED", "False",
                 "MODEL.ROI_HEADS.NUM_CLASSES", "4", seed=5)
    report = load_weights(dst, str(tmp_path / "maskrcnn.pth"))
    assert report.format == "torchvision Mask R-CNN"
    assert report.missing == [] and report.unused == [] and len(report.loaded) == len(dst.state_dict())
    ours = dst.state_dict()
    assert torch.equal(ours["roi_heads.box_predictor.cls_score.bias"][:4], tv.roi_heads.box_predictor.cls_score.bias[1:])
    assert torch.equal(ours["backbone.fpn_lateral2.weight"], tv.backbone.fpn.inner_blocks[0][0].weight)


def test_detgn_checkpoint_with_other_class_count(tmp_path, caplog):
    src = _build("gn_paper/fpn_gn_long.yaml", *R18, *SMALL_HEADS, seed=6)
    torch.save({"model": src.state_dict(), "iteration": 10}, tmp_path / "model_final.pth")
    dst = _build("gn_paper/fpn_gn_long.yaml", *R18, *SMALL_HEADS, "MODEL.ROI_HEADS.NUM_CLASSES", "8", seed=7)
    with caplog.at_level("WARNING", logger="detgn"):
        report = load_weights(dst, str(tmp_path / "model_final.pth"))
    assert "checkpoint has 80 classes, model 8: predictor layers not loaded" in caplog.text
    assert len(report.dropped) == 6 and report.missing == [] and report.unused == []
    assert "not loaded (class count): roi_heads.box_predictor.cls_score.weight file (81, 128) vs model (9, 128)" in str(report)
    s, d = src.state_dict(), dst.state_dict()
    for k in report.loaded:
        assert torch.equal(s[k], d[k]), k
