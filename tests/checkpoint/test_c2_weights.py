"""Detectron (Caffe2) .pkl weights: built here from detgn models' own random weights with
Detectron's blob names (an independent reverse mapping: detgn key -> blob name, background
class inserted first, FrozenBN folded to ``_bn_s``/``_bn_b``), pickled, loaded back with
``load_weights`` and compared tensor by tensor and output by output. No test needs
``allow_pickle``: .pkl files are read with the restricted unpickler (test_safe_pickle.py),
except the one that shows the escape hatch."""
import collections
import hashlib
import os
import pickle
import re
import shutil

import numpy as np
import pytest
import torch
from torch import nn

from detgn.checkpoint import CheckpointError, load_weights
from detgn.checkpoint.c2_names import convert_c2_blobs, rename_c2_blob
from detgn.config import load_config
from detgn.layers import FrozenBatchNorm2d
from detgn.modeling import build_model
from detgn.modeling.proposal_generator.anchors import generate_cell_anchors
from detgn.structures import Boxes
from py2_cpickle import py2_dumps

torch.set_num_threads(1)

FAST_TEST = ["MODEL.WEIGHTS", "", "MODEL.RPN.POST_NMS_TOPK_TEST", "20", "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0",
             "TEST.DETECTIONS_PER_IMAGE", "10"]
# Tests not about R-50 names: R-18 with narrow FPN and heads (GN needs multiples of 32).
SMALL = ["MODEL.RESNETS.DEPTH", "18", "MODEL.RESNETS.RES2_OUT_CHANNELS", "64", "MODEL.FPN.OUT_CHANNELS", "64",
         "MODEL.ROI_BOX_HEAD.CONV_DIM", "64", "MODEL.ROI_BOX_HEAD.FC_DIM", "128", "MODEL.ROI_MASK_HEAD.CONV_DIM", "64"]
PREDICTOR = ("roi_heads.box_predictor.", "roi_heads.mask_head.mask_fcn_logits.")


def build(name, *opts, seed=0):
    """A detgn model of config ``name`` with seeded, non-trivial random weights and statistics."""
    torch.manual_seed(seed)
    model = build_model(load_config(name, FAST_TEST + list(opts))).eval()
    g = torch.Generator().manual_seed(seed + 100)
    with torch.no_grad():  # state_dict() tensors share storage with the model's
        for k, t in model.state_dict().items():
            if not t.is_floating_point():
                continue
            if k.endswith("running_var"):
                t.copy_(0.5 + torch.rand(t.shape, generator=g))
            elif k.endswith(("running_mean", "bias")):
                t.copy_(0.1 * torch.randn(t.shape, generator=g))
            elif k.endswith("norm.weight"):
                t.copy_(0.5 + 0.5 * torch.rand(t.shape, generator=g))
            elif k.startswith(PREDICTOR):  # big enough that scores differ clearly
                t.copy_(0.05 * torch.randn(t.shape, generator=g))
    return model


# ---------------------------------------------------------------------------- #
# detgn -> Detectron names (written from Detectron's naming, not from c2_names)
# ---------------------------------------------------------------------------- #
def _conv_blob(path, model, *, mask_prefix):
    """Detectron prefix of the conv/fc module at ``path`` (``backbone.bottom_up.res2.0.conv1`` ...)."""
    m = re.fullmatch(r"(?:backbone\.bottom_up\.|backbone\.|roi_heads\.)(stem\.conv1|res(\d)\.(\d+)\.(\w+))", path)
    if m:
        if m.group(1) == "stem.conv1":
            return "conv1"
        branch = {"conv1": "branch2a", "conv2": "branch2b", "conv3": "branch2c", "shortcut": "branch1"}[m.group(4)]
        return f"res{m.group(2)}_{m.group(3)}_{branch}"
    m = re.fullmatch(r"backbone\.fpn_(lateral|output)(\d)", path)
    if m:
        level = int(m.group(2))
        last = len(getattr(model.backbone.bottom_up, f"res{level}")) - 1  # depends on the depth
        if m.group(1) == "output":
            return f"fpn_res{level}_{last}_sum"
        return f"fpn_inner_res{level}_{last}_sum" + ("" if level == 5 else "_lateral")
    m = re.fullmatch(r"proposal_generator\.rpn_head\.(conv|objectness_logits|anchor_deltas)", path)
    if m:
        fpn = hasattr(model.backbone, "bottom_up")
        if fpn:
            return {"conv": "rpn_conv", "objectness_logits": "rpn_cls_logits", "anchor_deltas": "rpn_bbox_pred"}[m.group(1)] + "_fpn2"
        return {"conv": "conv_rpn", "objectness_logits": "rpn_cls_logits", "anchor_deltas": "rpn_bbox_pred"}[m.group(1)]
    m = re.fullmatch(r"roi_heads\.box_head\.(conv(\d)|fc\d)", path)
    if m:
        return f"head_conv{m.group(2)}" if m.group(2) else m.group(1)
    m = re.fullmatch(r"roi_heads\.(?:box_predictor|mask_head)\.(cls_score|bbox_pred|conv5_mask|mask_fcn_logits)", path)
    if m:
        return m.group(1)
    m = re.fullmatch(r"roi_heads\.mask_head\.mask_fcn(\d)", path)
    if m:
        return f"{mask_prefix}{m.group(1)}"
    raise AssertionError(f"no Detectron name for {path}")


def _background_first(name, arr, rng):
    """Detectron's predictor layout: background row/channel first, 4 bbox rows for it."""
    if name.startswith("cls_score"):
        return np.concatenate([arr[-1:], arr[:-1]])
    if name.startswith("bbox_pred"):
        return np.concatenate([rng.standard_normal((4,) + arr.shape[1:]).astype(np.float32), arr])
    if name.startswith("mask_fcn_logits"):
        return np.concatenate([rng.standard_normal((1,) + arr.shape[1:]).astype(np.float32), arr])
    return arr


def detectron_blobs(model, *, only=None, mask_prefix="_[mask]_fcn"):
    """{blob name: float32 array} for ``model``'s state (keys starting with ``only``, if given)."""
    sd = {k: v.detach().float().numpy() for k, v in model.state_dict().items() if only is None or k.startswith(only)}
    modules = dict(model.named_modules())
    rng = np.random.default_rng(0)
    blobs = {}
    for key, arr in sd.items():
        path, param = key.rsplit(".", 1)
        if path.endswith(".norm"):
            conv = path[: -len(".norm")]
            norm = modules[path]
            if isinstance(norm, nn.GroupNorm):
                base = _conv_blob(conv, model, mask_prefix=mask_prefix) + "_gn"
                blobs[base + {"weight": "_s", "bias": "_b"}[param]] = arr
            elif isinstance(norm, FrozenBatchNorm2d) and param == "weight":
                base = _conv_blob(conv, model, mask_prefix=mask_prefix)
                base = "res_conv1_bn" if base == "conv1" else base + "_bn"
                w, b = sd[path + ".weight"], sd[path + ".bias"]
                mean, var = sd[path + ".running_mean"], sd[path + ".running_var"]
                scale = w / np.sqrt(var + norm.eps)  # BN* folded into an affine
                blobs[base + "_s"], blobs[base + "_b"] = scale, b - mean * scale
            continue
        name = _conv_blob(path, model, mask_prefix=mask_prefix) + {"weight": "_w", "bias": "_b"}[param]
        blobs[name] = _background_first(name, arr, rng)
    return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in blobs.items()}


def write_pkl(path, blobs, *, wrap=True, protocol=pickle.HIGHEST_PROTOCOL):
    """Pickle ``blobs`` as Detectron does (``{"blobs": ...}``, or bare with ``wrap=False``).

    Detectron wrote protocol 2 (Python 2 cPickle); one test uses it, the others a faster
    protocol since numpy arrays in protocol 2 go through slow latin1 strings.
    """
    with open(path, "wb") as f:
        pickle.dump({"blobs": blobs} if wrap else blobs, f, protocol=protocol)
    return str(path)


def _image(h=96, w=128, seed=3):
    g = torch.Generator().manual_seed(seed)
    return [{"image": torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=g), "height": h, "width": w}]


def assert_same_outputs(a, b):
    with torch.no_grad():
        x, y = a(_image())[0]["instances"], b(_image())[0]["instances"]
    assert len(x) > 0
    for field in ("pred_boxes", "scores", "pred_classes", "pred_masks"):
        u, v = x.get(field), y.get(field)
        u, v = (u.tensor, v.tensor) if field == "pred_boxes" else (u, v)
        assert torch.equal(u, v), field


def assert_loaded_equal(src, dst, keys):
    s, d = src.state_dict(), dst.state_dict()
    for k in keys:
        assert torch.equal(s[k], d[k]), k


# ---------------------------------------------------------------------------- #
# Tests
# ---------------------------------------------------------------------------- #
@pytest.fixture(scope="module")
def fpn_gn_src():
    return build("gn_paper/fpn_gn_long.yaml", seed=1)


def test_imagenet_r50_gn_into_fpn_gn_long(tmp_path, fpn_gn_src, capsys):
    blobs = detectron_blobs(fpn_gn_src, only="backbone.bottom_up.")
    assert "res4_5_branch2c_gn_s" in blobs and "conv1_gn_b" in blobs and "res2_0_branch1_w" in blobs
    blobs["pred_w"] = np.zeros((10, 2048), np.float32)  # the ImageNet classifier
    blobs["pred_b"] = np.zeros(10, np.float32)
    path = write_pkl(tmp_path / "R-50-GN.pkl", blobs)
    dst = build("gn_paper/fpn_gn_long.yaml", seed=2)
    report = load_weights(dst, path)
    print(report)

    trunk = [k for k in dst.state_dict() if k.startswith("backbone.bottom_up.")]
    assert report.loaded == trunk and len(trunk) == 159
    assert_loaded_equal(fpn_gn_src, dst, trunk)
    assert report.unused == [] and sorted(report.ignored) == ["pred_b", "pred_w"]
    # FPN, RPN and RoI heads are not in an ImageNet file: missing, as expected.
    assert len(report.missing) == 64 and not any(k.startswith("backbone.bottom_up.") for k in report.missing)
    assert {k.split(".")[0] + "." + k.split(".")[1] for k in report.missing} == {
        "backbone.fpn_lateral2", "backbone.fpn_lateral3", "backbone.fpn_lateral4", "backbone.fpn_lateral5",
        "backbone.fpn_output2", "backbone.fpn_output3", "backbone.fpn_output4", "backbone.fpn_output5",
        "proposal_generator.rpn_head", "roi_heads.box_head", "roi_heads.box_predictor", "roi_heads.mask_head"}
    text = str(report)
    assert "159 tensors loaded, 64 missing in the file, 0 unused, 2 ignored" in text
    assert "backbone.fpn_lateral{2..5}.norm.{bias,weight}" in text and "pred_{b,w}" in text
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        a, b = fpn_gn_src.backbone.bottom_up(x), dst.backbone.bottom_up(x)
    for name in a:
        assert torch.equal(a[name], b[name]), name


def test_bnstar_r50_folded_into_frozen_bn(tmp_path):
    src = build("gn_paper/mask_rcnn_R_50_FPN_BNstar_2x.yaml", seed=3)
    blobs = detectron_blobs(src, only="backbone.bottom_up.")
    assert "res_conv1_bn_s" in blobs and "res3_0_branch1_bn_b" in blobs and not any("running" in k for k in blobs)
    dst = build("gn_paper/mask_rcnn_R_50_FPN_BNstar_2x.yaml", seed=4)
    (tmp_path / "MSRA").mkdir()
    report = load_weights(dst, write_pkl(tmp_path / "MSRA" / "R-50.pkl", blobs, wrap=False))
    assert report.unused == [] and len(report.loaded) == sum(k.startswith("backbone.bottom_up.") for k in dst.state_dict())
    # The zoo's BN* files are MSRA's (stride on the 1x1 conv): the shipped BN* config says so,
    # and a config striding on the 3x3 is told.
    assert report.notes == []
    strided_3x3 = build("gn_paper/mask_rcnn_R_50_FPN_BNstar_2x.yaml", "MODEL.RESNETS.STRIDE_IN_1X1", "False")
    notes = load_weights(strided_3x3, report.source).notes
    assert len(notes) == 1 and "MODEL.RESNETS.STRIDE_IN_1X1 True" in notes[0]

    src_mods = dict(src.named_modules())
    frozen = [(n, m) for n, m in dst.named_modules() if isinstance(m, FrozenBatchNorm2d)]
    assert len(frozen) == 53
    for name, norm in frozen:
        conv = name[: -len(".norm")].replace("backbone.bottom_up.", "")
        base = "res_conv1_bn" if conv == "stem.conv1" else _conv_blob("backbone.bottom_up." + conv, dst, mask_prefix="") + "_bn"
        s, b = torch.from_numpy(blobs[base + "_s"]), torch.from_numpy(blobs[base + "_b"])
        assert torch.equal(norm.weight, s) and torch.equal(norm.bias, b)
        assert torch.equal(norm.running_mean, torch.zeros_like(s))
        assert torch.equal(norm.running_var, torch.full_like(s, 1 - norm.eps))
        xc = torch.randn(2, s.numel(), 3, 3)
        folded = xc * s.view(1, -1, 1, 1) + b.view(1, -1, 1, 1)  # the affine Detectron stored
        torch.testing.assert_close(norm(xc), folded, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(norm(xc), src_mods[name](xc), rtol=1e-5, atol=1e-5)
    for k in dst.state_dict():
        if k.startswith("backbone.bottom_up.") and "norm" not in k:
            assert torch.equal(dst.state_dict()[k], src.state_dict()[k]), k
    img = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        a, b = src.backbone.bottom_up(img), dst.backbone.bottom_up(img)
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=1e-4, atol=1e-4 * a[name].abs().max().item())


def test_fpn_gn_detection_checkpoint_all_parts(tmp_path, fpn_gn_src):
    # Detectron's GN mask head names its convs "_mask_fcn{i}" (its plain head "_[mask]_fcn{i}").
    blobs = detectron_blobs(fpn_gn_src, mask_prefix="_mask_fcn")
    for name in ("fpn_inner_res5_2_sum_gn_s", "fpn_inner_res4_5_sum_lateral_w", "fpn_res2_2_sum_gn_b",
                 "rpn_conv_fpn2_w", "rpn_bbox_pred_fpn2_b", "head_conv4_gn_s", "fc6_w", "_mask_fcn1_gn_b",
                 "conv5_mask_w", "mask_fcn_logits_w"):
        assert name in blobs, name
    assert blobs["cls_score_w"].shape == (81, 1024) and blobs["bbox_pred_w"].shape == (324, 1024)
    dst = build("gn_paper/fpn_gn_long.yaml", seed=5)
    report = load_weights(dst, write_pkl(tmp_path / "model_final.pkl", blobs))
    assert report.missing == [] and report.unused == [] and report.dropped == []
    assert len(report.loaded) == len(dst.state_dict()) == 223
    assert_loaded_equal(fpn_gn_src, dst, report.loaded)
    assert_same_outputs(fpn_gn_src, dst)


def test_c4_detection_checkpoint_res5_in_head(tmp_path):
    src = build("gn_paper/mask_rcnn_R_50_C4_BNstar_2x.yaml", seed=6)
    blobs = detectron_blobs(src)
    assert {"conv_rpn_w", "rpn_cls_logits_b", "rpn_bbox_pred_w", "res5_2_branch2c_bn_s", "res4_5_branch2c_w"} <= set(blobs)
    assert blobs["rpn_cls_logits_w"].shape[0] == 15  # 3 ratios x 5 sizes, ratio-major in both
    dst = build("gn_paper/mask_rcnn_R_50_C4_BNstar_2x.yaml", seed=7)
    report = load_weights(dst, write_pkl(tmp_path / "c4.pkl", blobs))
    assert report.missing == [] and report.unused == []
    assert any(k.startswith("roi_heads.res5.2.conv3.norm.") for k in report.loaded)
    exact = [k for k in report.loaded if ".norm." not in k]
    assert_loaded_equal(src, dst, exact)

    tol = dict(rtol=1e-4, atol=1e-4)
    x = torch.randn(1, 3, 96, 128)
    boxes = [Boxes(torch.tensor([[4.0, 6.0, 60.0, 50.0], [30.0, 20.0, 120.0, 90.0], [0.0, 0.0, 127.0, 95.0]]))]
    with torch.no_grad():
        outs = []
        for m in (src, dst):
            f = m.backbone(x)["res4"]
            logits, deltas = m.proposal_generator.rpn_head([f])
            r5 = m.roi_heads._shared_roi_transform([f], boxes)
            scores, box_deltas = m.roi_heads.box_predictor(r5.mean(dim=(2, 3)))
            outs.append([f, logits[0], deltas[0], r5, scores, box_deltas, m.roi_heads.mask_head(r5)])
    for a, b in zip(*outs):
        torch.testing.assert_close(b, a, rtol=tol["rtol"], atol=tol["atol"] * max(1.0, a.abs().max().item()))


def test_class_count_mismatch_drops_predictor_layers(tmp_path, caplog):
    src = build("gn_paper/fpn_gn_long.yaml", *SMALL, seed=8)  # 80 classes: 81 rows with the background
    blobs = detectron_blobs(src, mask_prefix="_mask_fcn")
    assert blobs["cls_score_b"].shape == (81,)
    dst = build("gn_paper/fpn_gn_long.yaml", *SMALL, "MODEL.ROI_HEADS.NUM_CLASSES", "8", seed=9)
    before = {k: v.clone() for k, v in dst.state_dict().items()}
    with caplog.at_level("WARNING", logger="detgn"):
        report = load_weights(dst, write_pkl(tmp_path / "coco.pkl", blobs))
    msg = "checkpoint has 80 classes, model 8: predictor layers not loaded"
    assert msg in caplog.text and msg in str(report)
    dropped = sorted(k for k, _, _ in report.dropped)
    assert dropped == sorted(f"roi_heads.{p}.{w}" for p in ("box_predictor.cls_score", "box_predictor.bbox_pred",
                                                            "mask_head.mask_fcn_logits") for w in ("weight", "bias"))
    assert ("roi_heads.box_predictor.cls_score.weight", (81, 128), (9, 128)) in report.dropped
    assert report.missing == [] and report.unused == []
    assert len(report.loaded) == len(dst.state_dict()) - 6
    assert_loaded_equal(src, dst, report.loaded)
    for k in dropped:
        assert torch.equal(dst.state_dict()[k], before[k]), k  # left at their initialisation


def test_shape_mismatch_elsewhere_is_an_error(tmp_path):
    src = build("gn_paper/fpn_gn_long.yaml", *SMALL, seed=10)
    dst = build("gn_paper/fpn_gn_long.yaml", *SMALL, "MODEL.ROI_BOX_HEAD.FC_DIM", "96", seed=11)
    before = {k: v.clone() for k, v in dst.state_dict().items()}
    path = write_pkl(tmp_path / "fc1024.pkl", detectron_blobs(src))
    with pytest.raises(CheckpointError) as e:
        load_weights(dst, path)
    msg = str(e.value)
    print(msg)
    assert "roi_heads.box_head.fc6.weight: file (128, 3136) vs model (96, 3136)" in msg
    assert "roi_heads.box_predictor.cls_score.weight: file (81, 128) vs model (81, 96)" in msg
    assert path in msg and "Nothing was loaded" in msg
    for k, v in dst.state_dict().items():
        assert torch.equal(v, before[k]), k


class _Boom:
    """A pickle that would create a file when unpickled (what a malicious .pkl could do)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pkl_asking_for_code_is_refused_and_nothing_loaded(tmp_path):
    marker = tmp_path / "unpickled_marker"
    path = tmp_path / "evil.pkl"
    blobs = {"conv1_w": np.zeros((64, 3, 7, 7), np.float32)}
    with open(path, "wb") as f:
        pickle.dump({"blobs": blobs, "x": _Boom(str(marker))}, f)
    model = build("gn_paper/fpn_gn_long.yaml", *SMALL)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    # A sidecar with the file's hash changes nothing: what is read is decided by the content.
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    (tmp_path / "evil.pkl.sha256").write_text(f"{digest}  evil.pkl\n")
    with pytest.raises(CheckpointError) as e:
        load_weights(model, str(path))
    msg = str(e.value)
    print(msg)
    assert f"Refusing to unpickle {path}: it asks for the Python global 'io.open'" in msg
    assert "only holds dicts, strings, numbers and numpy arrays" in msg
    assert "MODEL.WEIGHTS_ALLOW_PICKLE True" in msg and "allow_pickle=True" in msg and ".pth" in msg
    assert "Nothing was loaded" in msg
    assert not marker.exists()  # the payload never ran
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_python2_detectron_pkl_loads_without_the_flag(tmp_path):
    """What Detectron wrote (Python 2 cPickle, protocol 2, array data as Python 2 str), with
    string entries next to the blobs: loads with no flag, bit-exact, strings ignored."""
    src = build("gn_paper/fpn_gn_long.yaml", *SMALL, seed=17)
    blobs = detectron_blobs(src, only="backbone.bottom_up.")
    py2_blobs = {k.encode(): v for k, v in blobs.items()}  # Python 2 str keys
    py2_blobs[b"__author__"] = b"Kaiming He, Ren\xe9"
    py2_blobs[b"__version__"] = 1
    path = tmp_path / "R-18-GN.pkl"
    path.write_bytes(py2_dumps({b"blobs": py2_blobs, b"cfg": b"MODEL:\n  TYPE: generalized_rcnn\n"}))
    assert b"cnumpy.core.multiarray\n_reconstruct\n" in path.read_bytes()

    dst = build("gn_paper/fpn_gn_long.yaml", *SMALL, seed=18)
    report = load_weights(dst, str(path))
    trunk = [k for k in dst.state_dict() if k.startswith("backbone.bottom_up.")]
    assert report.loaded == trunk and report.unused == []
    assert sorted(report.ignored) == ["__author__", "__version__"]
    assert "2 ignored" in str(report)
    assert_loaded_equal(src, dst, trunk)
    sd = dst.state_dict()
    assert len(blobs) == len(trunk)
    for name, arr in blobs.items():  # against the file's own arrays (GN: no folding, no background)
        (key,) = [k for k in trunk if k.endswith("." + rename_c2_blob(name))]
        assert torch.equal(sd[key], torch.from_numpy(arr)), name


def test_non_weight_entries_are_ignored(tmp_path):
    src = build("gn_paper/fpn_gn_long.yaml", *SMALL, seed=19)
    blobs = detectron_blobs(src, only="backbone.bottom_up.")
    extra = {"__author__": "Detectron", "note": np.array(["text"]), "objs": np.array([{"a": 1}, None], dtype=object),
             "iter": np.float32(3), "conv1_b": "not an array"}
    path = write_pkl(tmp_path / "w.pkl", {**blobs, **extra})
    dst = build("gn_paper/fpn_gn_long.yaml", *SMALL, seed=20)
    report = load_weights(dst, path)
    assert sorted(report.ignored) == sorted(extra) and report.unused == []
    assert_loaded_equal(src, dst, report.loaded)
    only_text = write_pkl(tmp_path / "t.pkl", extra)
    with pytest.raises(CheckpointError, match="not a Detectron weights file"):
        load_weights(dst, only_text)


def test_allow_pickle_reads_a_trusted_pkl_the_restricted_unpickler_refuses(tmp_path, caplog):
    src = build("gn_paper/fpn_gn_long.yaml", *SMALL, seed=21)
    blobs = detectron_blobs(src, only="backbone.bottom_up.")
    path = tmp_path / "with_stats.pkl"
    with open(path, "wb") as f:  # harmless, but not what a weights file holds
        pickle.dump({"blobs": blobs, "stats": collections.Counter(images=118287)}, f, protocol=2)
    dst = build("gn_paper/fpn_gn_long.yaml", *SMALL, seed=22)
    with pytest.raises(CheckpointError, match="'collections.Counter'"):
        load_weights(dst, str(path))
    with caplog.at_level("WARNING", logger="detgn"):
        report = load_weights(dst, str(path), allow_pickle=True)
    assert "collections.Counter" in caplog.text and "full unpickling" in caplog.text
    assert report.loaded == [k for k in dst.state_dict() if k.startswith("backbone.bottom_up.")]
    assert_loaded_equal(src, dst, report.loaded)


@pytest.mark.parametrize("pinned", [True, False], ids=["pinned", "unpinned"])
def test_zoo_pkl_loads_without_the_flag(tmp_path, monkeypatch, pinned):
    """A zoo .pkl loads with no flag whether or not the catalog pins its sha256; the hash,
    where pinned, is checked (integrity) but is not what makes the file readable."""
    import detgn.model_zoo as zoo

    src = build("gn_paper/fpn_gn_long.yaml", *SMALL, seed=12)
    blobs = detectron_blobs(src, only="backbone.bottom_up.")
    rel = "ImageNetPretrained/test/R-18-GN.pkl"
    mirror = tmp_path / "mirror"
    (mirror / os.path.dirname(rel)).mkdir(parents=True)
    write_pkl(mirror / rel, blobs, protocol=2)
    digest = hashlib.sha256((mirror / rel).read_bytes()).hexdigest()
    monkeypatch.setenv("DETGN_MODEL_ZOO_MIRROR", str(mirror))
    monkeypatch.setenv("DETGN_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("DETGN_MODEL_ZOO_URL", "http://127.0.0.1:9/unreachable/")
    monkeypatch.setitem(zoo.MODEL_ZOO, "ImageNetPretrained/test/R-18-GN",
                        {"path": rel, "sha256": digest if pinned else None, "size": None})

    dst = build("gn_paper/fpn_gn_long.yaml", *SMALL, seed=13)
    report = load_weights(dst, "detgn://ImageNetPretrained/test/R-18-GN")
    cached = tmp_path / "cache" / rel
    assert zoo.is_verified(str(cached)) is pinned
    assert len(report.loaded) == sum(k.startswith("backbone.bottom_up.") for k in dst.state_dict())
    assert_loaded_equal(src, dst, report.loaded)
    # The cached file by its path, or any copy of it, loads the same way.
    assert load_weights(dst, str(cached)).loaded == report.loaded
    shutil.copy(cached, tmp_path / "copy.pkl")
    assert load_weights(dst, str(tmp_path / "copy.pkl")).loaded == report.loaded
    if pinned:  # integrity: a corrupted mirror copy is rejected before anything is unpickled
        from detgn.model_zoo import ChecksumError

        cached.unlink()
        (mirror / rel).write_bytes(b"\x80\x02" + (mirror / rel).read_bytes()[2:-1] + b"!")
        with pytest.raises(ChecksumError):
            load_weights(dst, "detgn://ImageNetPretrained/test/R-18-GN")


def test_truncated_pkl_is_a_clear_error(tmp_path):
    src = build("gn_paper/fpn_gn_long.yaml", *SMALL, seed=14)
    path = tmp_path / "R-18-GN.pkl"
    write_pkl(path, detectron_blobs(src, only="backbone.bottom_up."))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    for allow in (False, True):
        with pytest.raises(CheckpointError) as e:
            load_weights(src, str(path), allow_pickle=allow)
        msg = str(e.value)
        print(msg)
        assert str(path) in msg and "truncated" in msg and "Download it again" in msg
    path.write_bytes(pickle.dumps(["not", "blobs"], protocol=2))
    with pytest.raises(CheckpointError, match="not a Detectron weights file"):
        load_weights(src, str(path))


def test_blob_renaming_rules():
    cases = {
        "conv1_w": "stem.conv1.weight",
        "res_conv1_bn_s": "stem.conv1.norm.weight",
        "conv1_gn_b": "stem.conv1.norm.bias",
        "res3_0_branch1_gn_s": "res3.0.shortcut.norm.weight",
        "res22_0_branch2a_w": None,  # stages are res2..res5
        "res4_22_branch2c_bn_b": "res4.22.conv3.norm.bias",  # res4 has 23 blocks
        "fpn_inner_res5_2_sum_w": "fpn_lateral5.weight",
        "fpn_inner_res4_22_sum_lateral_gn_s": "fpn_lateral4.norm.weight",  # R-101 index
        "fpn_res3_3_sum_b": "fpn_output3.bias",
        "rpn_conv_fpn2_w": "rpn_head.conv.weight",
        "rpn_cls_logits_fpn3_w": None,  # other levels share fpn2's blobs; not in files
        "conv_rpn_b": "rpn_head.conv.bias",
        "rpn_bbox_pred_w": "rpn_head.anchor_deltas.weight",
        "head_conv3_gn_b": "box_head.conv3.norm.bias",
        "fc7_b": "box_head.fc7.bias",
        "_[mask]_fcn2_w": "mask_head.mask_fcn2.weight",
        "_mask_fcn4_gn_s": "mask_head.mask_fcn4.norm.weight",
        "fc6_s": None,
    }
    for blob, want in cases.items():
        assert rename_c2_blob(blob) == want, blob
    conv = convert_c2_blobs({
        "pred_w": np.zeros((2, 2), np.float32), "conv1_w_momentum": np.zeros(1, np.float32),
        "model_iter": np.zeros(1), "fpn_6_w": np.zeros(1, np.float32), "conv1_w": np.ones((1, 1), np.float32),
        "cls_score_b": np.arange(4, dtype=np.float32), "bbox_pred_b": np.arange(8, dtype=np.float32),  # agnostic
        "mask_fcn_logits_b": np.arange(4, dtype=np.float32),
    })
    assert sorted(conv.ignored) == ["conv1_w_momentum", "model_iter", "pred_w"] and conv.unknown == ["fpn_6_w"]
    assert conv.tensors["box_predictor.cls_score.bias"].tolist() == [1, 2, 3, 0]  # background last
    assert conv.tensors["box_predictor.bbox_pred.bias"].tolist() == [4, 5, 6, 7]
    assert conv.tensors["mask_head.mask_fcn_logits.bias"].tolist() == [1, 2, 3]
    assert conv.sources["stem.conv1.weight"] == "conv1_w"


def test_rpn_anchor_order_is_detectrons():
    """Detectron enumerates a location's anchors ratio-major over sizes (C4: 3 ratios x 5 sizes)
    with ratio = h / w, so RPN weights need no channel permutation."""
    sizes, ratios = (32, 64, 128, 256, 512), (0.5, 1.0, 2.0)
    cell = generate_cell_anchors(sizes, ratios)
    w, h = cell[:, 2] - cell[:, 0], cell[:, 3] - cell[:, 1]
    for a in range(15):
        r, s = divmod(a, len(sizes))
        torch.testing.assert_close(h[a] / w[a], torch.tensor(ratios[r]))
        torch.testing.assert_close((w[a] * h[a]).sqrt(), torch.tensor(float(sizes[s])))


def test_norm_kind_mismatch_is_noted(tmp_path):
    """A GN ImageNet file into a BN* (FrozenBN) model loads the affines but says the norms differ."""
    gn = build("gn_paper/fpn_gn_long.yaml", *SMALL, seed=15)
    path = write_pkl(tmp_path / "R-18-GN.pkl", detectron_blobs(gn, only="backbone.bottom_up."))
    bn = build("gn_paper/mask_rcnn_R_50_FPN_BNstar_2x.yaml", *SMALL, seed=16)
    report = load_weights(bn, path)
    assert len(report.notes) == 1 and "get a GN scale/bias from the file but are FrozenBatchNorm2d" in report.notes[0]
    assert any(k.endswith("running_var") for k in report.missing)  # GN files have no BN statistics
