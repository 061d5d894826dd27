"""Backbone pre-training (tools/pretrain_backbone.py), its trunk in a detector, and tools/calibrate_norm.py.

A tiny synthetic classification set (32 px, 8 classes) and a ResNet-10 at 8-64 channels keep
every run to seconds on one CPU thread.
"""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
TINY = ["MODEL.RESNETS.DEPTH", "10", "MODEL.RESNETS.STEM_OUT_CHANNELS", "8", "MODEL.RESNETS.RES2_OUT_CHANNELS", "8",
        "INPUT.CLASSIFY.TRAIN_CROP", "32", "INPUT.CLASSIFY.TEST_RESIZE", "32", "INPUT.CLASSIFY.TEST_CROP", "32",
        "SOLVER.IMS_PER_GPU", "4", "SOLVER.REFERENCE_IMS_PER_BATCH", "4", "SOLVER.MAX_ITER", "6",
        "SOLVER.STEPS", "(4,)", "SOLVER.WARMUP_ITERS", "1", "SOLVER.CHECKPOINT_PERIOD", "3", "LOG_PERIOD", "1",
        "CPU.NUM_THREADS", "1", "VERBOSE_STARTUP", "False", "CPU.CHANNELS_LAST", "False"]
CONFIG = "classification/synthetic_cls_R18_GN.yaml"


@pytest.fixture(scope="module")
def cls_root(tmp_path_factory):
    from detgn.data.datasets.synthetic_cls import ClsStyle, generate_synthetic_cls

    root = tmp_path_factory.mktemp("cls_datasets")
    generate_synthetic_cls(str(root / "synthetic_cls"), num_train=48, num_val=16, seed=0, style=ClsStyle(size=32),
                           workers=1, log=None)
    return root


def _run(tool, args, root, timeout=300):
    import os

    env = dict(os.environ, DETGN_DATASETS=str(root), OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, str(REPO / "tools" / tool), *args], env=env, capture_output=True, text=True,
                          timeout=timeout)
    return proc.returncode, proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def bn_run(cls_root, tmp_path_factory):
    """A BN classifier pre-trained with EvalNorm online and PreciseBN before each evaluation."""
    out = tmp_path_factory.mktemp("pretrain") / "bn"
    rc, text = _run("pretrain_backbone.py", ["--config", CONFIG, *TINY, "MODEL.RESNETS.NORM", "BN",
                                             "MODEL.EVALNORM.ENABLED", "True", "TEST.PRECISE_BN.ENABLED", "True",
                                             "TEST.PRECISE_BN.NUM_ITER", "2", "TEST.EVAL_PERIOD", "3",
                                             "OUTPUT_DIR", str(out)], cls_root)
    assert rc == 0, text[-3000:]
    return out, text


def test_pretraining_writes_metrics_checkpoints_and_trunk(bn_run):
    out, text = bn_run
    assert text.count("PreciseBN: running statistics of") == 2  # at iterations 3 and 6 (the end)
    metrics = json.loads((out / "inference" / "synthetic_cls_val" / "metrics.json").read_text())
    assert 0 <= metrics["classification"]["top1_err"] <= 100
    records = [json.loads(line) for line in (out / "metrics.json").read_text().splitlines() if line.strip()]
    assert any("loss_evalnorm" in r for r in records) and any("classification/top1_err" in r for r in records)
    trunk = torch.load(out / "trunk_final.pth", weights_only=True)
    assert trunk["meta"]["depth"] == 10 and trunk["meta"]["norm"] == "BN"
    assert "stem.conv1.weight" in trunk["trunk"] and "res5.0.conv2.norm.train_batch_size" in trunk["trunk"]
    assert float(trunk["trunk"]["res5.0.conv2.norm.train_batch_size"]) == 4
    assert (out / "training_curves.png").is_file() and (out / "model_final.pth").is_file()


@pytest.mark.parametrize("arch", ["FPN", "C4"])
def test_trunk_loads_into_a_detection_config(bn_run, arch):
    from detgn.checkpoint import load_weights
    from detgn.config import load_config
    from detgn.modeling import build_model

    out, _ = bn_run
    opts = ["MODEL.RESNETS.DEPTH", "10", "MODEL.RESNETS.STEM_OUT_CHANNELS", "8", "MODEL.RESNETS.RES2_OUT_CHANNELS", "8",
            "MODEL.RESNETS.NORM", "BN", "MODEL.BACKBONE.FREEZE_AT", "0", "MODEL.WEIGHTS", "", "VERBOSE_STARTUP", "False",
            "MODEL.FPN.OUT_CHANNELS", "16", "MODEL.GROUP_NORM.NUM_GROUPS", "4"]
    name = "synthetic/demo_gn_scratch.yaml" if arch == "FPN" else "gn_paper/mask_rcnn_R_50_C4_GN_2x.yaml"
    model = build_model(load_config(name, opts))
    trunk = torch.load(out / "trunk_final.pth", weights_only=True)["trunk"]
    report = load_weights(model, str(out / "trunk_final.pth"))
    assert report.format == "detgn pre-trained trunk" and not report.unused
    state = model.state_dict()
    # FPN: the whole trunk under backbone.bottom_up; C4: stem..res4 in the backbone, res5 in the RoI head.
    home, res5 = ("backbone.bottom_up.", "backbone.bottom_up.") if arch == "FPN" else ("backbone.", "roi_heads.")
    torch.testing.assert_close(state[res5 + "res5.0.conv1.weight"], trunk["res5.0.conv1.weight"], rtol=0, atol=0)
    torch.testing.assert_close(state[home + "stem.conv1.norm.running_var"],
                               trunk["stem.conv1.norm.running_var"], rtol=0, atol=0)
    # The classifier checkpoint itself loads the same way (its fc is ignored).
    report = load_weights(build_model(load_config(name, opts)), str(out / "model_final.pth"))
    assert report.format == "detgn classifier checkpoint" and report.ignored == ["fc.weight", "fc.bias"]


def test_export_from_any_checkpoint(bn_run, cls_root, tmp_path):
    out, _ = bn_run
    rc, text = _run("pretrain_backbone.py", ["--export", str(out / "model_0000002.pth"), "--output",
                                             str(tmp_path / "trunk.pth")], cls_root)
    assert rc == 0, text
    assert "stem.conv1.weight" in torch.load(tmp_path / "trunk.pth", weights_only=True)["trunk"]


@pytest.mark.parametrize("method", ["precise_bn", "evalnorm_offline", "evalnorm_rule"])
def test_calibrate_writes_a_checkpoint_train_net_evaluates(bn_run, cls_root, tmp_path, method):
    out, _ = bn_run
    rc, text = _run("calibrate_norm.py", ["--config", CONFIG, "--method", method, "--num-iter", "3", *TINY,
                                          "MODEL.RESNETS.NORM", "BN", "MODEL.WEIGHTS", str(out / "model_final.pth"),
                                          "OUTPUT_DIR", str(tmp_path)], cls_root)
    assert rc == 0, text[-3000:]
    new = torch.load(tmp_path / f"model_{method}.pth", weights_only=True)["model"]
    old = torch.load(out / "model_final.pth", weights_only=True)["model"]
    changed = sorted(k for k in old if not torch.equal(old[k], new[k]))
    allowed = ("running_mean", "running_var") if method == "precise_bn" else ("evalnorm_alpha", "evalnorm_beta")
    assert changed and all(k.endswith(allowed) for k in changed), changed
    if method == "evalnorm_rule":
        assert all(float(new[k]) == 1 / 16 for k in changed)  # trained at 4 images per batch
    rc, text = _run("train_net.py", ["--config", str(tmp_path / f"model_{method}.yaml"), "--eval-only",
                                     "OUTPUT_DIR", str(tmp_path / "eval")], cls_root)
    assert rc == 0, text[-3000:]
    assert ("EvalNorm at evaluation" in text) == (method != "precise_bn"), text[-2000:]
    assert (tmp_path / "eval" / "inference" / "synthetic_cls_val" / "metrics.json").is_file()


def test_calibrate_refuses_a_model_without_bn(cls_root, tmp_path):
    rc, text = _run("calibrate_norm.py", ["--config", CONFIG, "--method", "precise_bn", *TINY,
                                          "MODEL.WEIGHTS", str(tmp_path / "missing.pth"), "OUTPUT_DIR", str(tmp_path)],
                    cls_root)
    assert rc == 1 and "Traceback" not in text


def test_precise_bn_leaves_training_unchanged(cls_root, tmp_path):
    """The PreciseBN hook reads the data with a loader of its own and restores the RNGs:
    the losses of a run with it are those of a run without it."""
    losses = {}
    for on in (False, True):
        out = tmp_path / f"pbn_{on}"
        rc, text = _run("train_net.py", ["--config", CONFIG, *TINY, "MODEL.RESNETS.NORM", "BN",
                                         "TEST.PRECISE_BN.ENABLED", str(on), "TEST.PRECISE_BN.NUM_ITER", "2",
                                         "TEST.EVAL_PERIOD", "2", "OUTPUT_DIR", str(out)], cls_root)
        assert rc == 0, text[-3000:]
        records = [json.loads(line) for line in (out / "metrics.json").read_text().splitlines() if line.strip()]
        losses[on] = [r["loss_cls"] for r in records if "loss_cls" in r]
    assert len(losses[True]) >= 6 and losses[True] == losses[False]
