"""The main command on stand-ins of the real things, as a new user meets them.

- ``coco2017_like``: the real COCO 2017 files' format and quirks under ``DETGN_DATASETS``
  (including the two zero-height records of instances_train2017.json);
- ``r50_gn_zoo_mirror``: a ``DETGN_MODEL_ZOO_MIRROR`` serving the config's default weights
  ``detgn://ImageNetPretrained/R-50-GN`` as a Detectron-format Python 2 pickle, with no
  sha256 pinned in the catalog (as today);
- ``tools/train_net.py --config fpn_gn_long.yaml`` with size and iteration overrides only.

The base URL points at a closed loopback port, so nothing can come from the network:
the weights must come from the mirror, and a run without a mirror must fail cleanly.
"""
import json
import logging
import socket

import pytest
import torch

SIZES = ["INPUT.MIN_SIZE_TRAIN", "(128,)", "INPUT.MAX_SIZE_TRAIN", "192",
         "INPUT.MIN_SIZE_TEST", "128", "INPUT.MAX_SIZE_TEST", "192"]


def _closed_port_url() -> str:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/"  # nothing listens there once the socket is closed


def _env(tools_helpers, coco2017_like, tmp_path, **extra):
    env = tools_helpers.subprocess_env(coco2017_like.root, DETGN_CACHE=str(tmp_path / "cache"),
                                       DETGN_MODEL_ZOO_URL=_closed_port_url())
    env.pop("DETGN_MODEL_ZOO_MIRROR", None)
    env.update(extra)
    return env


def _run(tools_helpers, cmd, env, log, timeout):
    proc = tools_helpers.start(cmd, env, log)
    return tools_helpers.finish(proc, log, timeout=timeout)


def test_fpn_gn_long_as_a_new_user_meets_it(tools_helpers, coco2017_like, r50_gn_zoo_mirror, tmp_path):
    """A new user's path: dataset + zoo mirror + the config's own weights, no flag."""
    mirror, blobs = r50_gn_zoo_mirror
    out = tmp_path / "out"
    env = _env(tools_helpers, coco2017_like, tmp_path, DETGN_MODEL_ZOO_MIRROR=str(mirror))
    cmd = tools_helpers.train_net_cmd("fpn_gn_long.yaml", out, *SIZES, "SOLVER.MAX_ITER", "1")
    rc, text = _run(tools_helpers, cmd, env, tmp_path / "run.log", timeout=900)
    assert rc == 0, tools_helpers.tail(text)
    assert "Traceback" not in text and "WEIGHTS_ALLOW_PICKLE" not in text, tools_helpers.tail(text)
    assert "Copying detgn://ImageNetPretrained/R-50-GN from the mirror" in text
    # Every trunk tensor of the file lands in the model; the ImageNet classifier is ignored.
    assert ("Weights from detgn://ImageNetPretrained/R-50-GN (Detectron .pkl): 159 tensors loaded, 64 missing "
            "in the file, 0 unused, 2 ignored") in text, tools_helpers.tail(text)
    assert ("dropped 2 annotations (2 degenerate boxes (no area in the image): ids 918 (image 200365), "
            "2206849 (image 550395))") in text
    assert "Starting training at iteration 0 of 16" in text  # 1 reference iteration of 16 images
    metrics = json.loads((out / "inference" / "coco_2017_val" / "metrics.json").read_text())
    assert {"bbox", "segm"} <= set(metrics) and "AP" in metrics["bbox"] and "AP" in metrics["segm"], metrics
    final = torch.load(out / "model_final.pth", map_location="cpu", weights_only=True)["model"]
    # FREEZE_AT 2: the stem and res2 keep the file's values exactly; res3 trained from them.
    torch.testing.assert_close(final["backbone.bottom_up.stem.conv1.weight"], torch.from_numpy(blobs["conv1_w"]),
                               rtol=0, atol=0)
    torch.testing.assert_close(final["backbone.bottom_up.res2.0.conv2.weight"],
                               torch.from_numpy(blobs["res2_0_branch2b_w"]), rtol=0, atol=0)
    res3 = torch.from_numpy(blobs["res3_0_branch2b_w"])
    moved = (final["backbone.bottom_up.res3.0.conv2.weight"] - res3).abs().max().item()
    assert 0 < moved < 1e-2, moved
    (tmp_path / "last_lines.txt").write_text("\n".join(text.splitlines()[-12:]))


def test_fpn_gn_long_from_scratch_on_the_real_format(tools_helpers, coco2017_like, tmp_path):
    """MODEL.WEIGHTS "" on the COCO stand-in: trains, evaluates, logs the drop."""
    out = tmp_path / "out"
    env = _env(tools_helpers, coco2017_like, tmp_path)
    cmd = tools_helpers.train_net_cmd(
        "fpn_gn_long.yaml", out, *SIZES, "MODEL.WEIGHTS", "", "SOLVER.SCALE_SCHEDULE", "False",
        "SOLVER.MAX_ITER", "2", "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "64", "MODEL.RPN.POST_NMS_TOPK_TEST", "100")
    rc, text = _run(tools_helpers, cmd, env, tmp_path / "run.log", timeout=600)
    assert rc == 0 and "Traceback" not in text, tools_helpers.tail(text)
    assert "No MODEL.WEIGHTS given: training from the random initialisation" in text
    assert "ids 918 (image 200365), 2206849 (image 550395)" in text
    assert "Removed 2 of 10 images with no usable (non-crowd) annotation" in text  # empty + crowd-only
    metrics = json.loads((out / "inference" / "coco_2017_val" / "metrics.json").read_text())
    assert {"bbox", "segm"} <= set(metrics)
    assert (out / "model_final.pth").is_file() and not list((tmp_path / "cache").glob("**/*.pkl"))


@pytest.fixture
def train_net():
    from detgn.engine import run

    return run


@pytest.mark.usefixtures("restore_process_state")
def test_eval_only_without_detector_weights_says_how(train_net, coco2017_like, r50_gn_zoo_mirror, tmp_path,
                                                      monkeypatch, capsys):
    """Item 5: --eval-only with the config's ImageNet weights, none, or a backbone file: a message, no download."""
    monkeypatch.setenv("DETGN_DATASETS", str(coco2017_like.root))
    monkeypatch.setenv("DETGN_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("DETGN_MODEL_ZOO_URL", _closed_port_url())
    monkeypatch.delenv("DETGN_MODEL_ZOO_MIRROR", raising=False)
    base = ["--config", "fpn_gn_long.yaml", "--eval-only", "OUTPUT_DIR", str(tmp_path / "out"), *SIZES,
            "VERBOSE_STARTUP", "False"]
    assert train_net.cli(base) == 1
    err = capsys.readouterr().err
    assert ("Error: --eval-only evaluates trained detector weights, but MODEL.WEIGHTS is "
            "detgn://ImageNetPretrained/R-50-GN, the ImageNet backbone this config trains from") in err, err
    assert "--eval-only MODEL.WEIGHTS path/to/model_final.pth" in err and "--eval-only --resume" in err
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").rglob("*.pkl"))  # nothing fetched

    assert train_net.cli(base + ["MODEL.WEIGHTS", ""]) == 1
    assert "but MODEL.WEIGHTS is empty" in capsys.readouterr().err

    backbone_file = r50_gn_zoo_mirror[0] / "ImageNetPretrained" / "47261647" / "R-50-GN.pkl"
    assert train_net.cli(base + ["MODEL.WEIGHTS", str(backbone_file)]) == 1
    err = capsys.readouterr().err
    assert "holds no RPN or box-predictor weights (159 tensors loaded, all of the backbone)" in err, err

    assert train_net.cli(["--config", "fpn_gn_long.yaml", "--eval-only", "--resume", "OUTPUT_DIR",
                          str(tmp_path / "empty"), "VERBOSE_STARTUP", "False"]) == 1
    assert f"--eval-only --resume: no good checkpoint in {tmp_path / 'empty'}" in capsys.readouterr().err


@pytest.mark.usefixtures("restore_process_state")
def test_zoo_network_failure_prints_the_message_alone(train_net, coco2017_like, tmp_path, monkeypatch, capsys,
                                                     caplog):
    """Item 5: a failed download ends with its message on stderr, exit 1, no traceback anywhere."""
    monkeypatch.setenv("DETGN_DATASETS", str(coco2017_like.root))
    monkeypatch.setenv("DETGN_CACHE", str(tmp_path / "cache"))
    url = _closed_port_url()
    monkeypatch.setenv("DETGN_MODEL_ZOO_URL", url)
    monkeypatch.delenv("DETGN_MODEL_ZOO_MIRROR", raising=False)
    with caplog.at_level(logging.INFO):
        rc = train_net.cli(["--config", "fpn_gn_long.yaml", "OUTPUT_DIR", str(tmp_path / "out"), *SIZES,
                            "VERBOSE_STARTUP", "False"])
    err = capsys.readouterr().err
    assert rc == 1, err
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"Error: no network: cannot reach {url}ImageNetPretrained/47261647/R-50-GN.pkl"), err
    assert "DETGN_MODEL_ZOO_MIRROR" in last and "Traceback" not in err
    assert not [r for r in caplog.records if r.exc_info], "a log record carries a traceback"


def test_spawned_processes_report_user_errors_without_traceback(tools_helpers, coco2017_like, tmp_path):
    """--num-gpus 2 (two gloo processes): a missing dataset is reported by the processes, exit 1."""
    env = tools_helpers.subprocess_env(tmp_path / "no_datasets_here")
    cmd = tools_helpers.train_net_cmd("fpn_gn_long.yaml", tmp_path / "out", *SIZES, "MODEL.WEIGHTS", "",
                                      "VERBOSE_STARTUP", "False")
    cmd.insert(cmd.index("--config"), "--num-gpus")
    cmd.insert(cmd.index("--config"), "2")
    rc, text = _run(tools_helpers, cmd, env, tmp_path / "run.log", timeout=300)
    assert rc == 1, tools_helpers.tail(text)
    assert "Error (rank " in text and "Dataset 'coco_2017_train': annotations not found at" in text, text[-3000:]
    assert "Traceback" not in text, tools_helpers.tail(text)
