"""Synthetic classification set: determinism (also across workers), balanced labels that
match ImageFolder's, layout and info.json, strongly varying per-image statistics,
completing an interrupted run, style checks, CLI."""
import hashlib
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from detgn.data import load_image_folder
from detgn.data.datasets.synthetic import CATEGORIES
from detgn.data.datasets.synthetic_cls import ClsStyle, class_names, generate_synthetic_cls, render_cls_sample

REPO = Path(__file__).resolve().parents[2]
SEED, N_TRAIN, N_VAL = 5, 24, 8
STYLE = ClsStyle(size=32)  # small images: the generator's logic is size-independent


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("synthetic_cls")
    summary = generate_synthetic_cls(str(out), num_train=N_TRAIN, num_val=N_VAL, seed=SEED, style=STYLE, log=None)
    return out, summary


def digests(root: Path) -> dict:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_render_is_deterministic_and_labels_are_balanced():
    a, label = render_cls_sample(1, "train", 13)
    b, _ = render_cls_sample(1, "train", 13)
    assert a.shape == (64, 64, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b) and label == 13 % 8
    assert not np.array_equal(a, render_cls_sample(2, "train", 13)[0])  # seed matters
    assert not np.array_equal(a, render_cls_sample(1, "val", 13)[0])  # so does the split
    labels = [render_cls_sample(0, "train", i, STYLE)[1] for i in range(40)]
    assert np.bincount(labels).tolist() == [5] * 8
    few = ClsStyle(size=48, num_classes=3)
    img, label = render_cls_sample(0, "val", 7, few)
    assert img.shape == (48, 48, 3) and label == 1
    assert class_names(few) == sorted(c["name"] for c in CATEGORIES[:3])


def test_layout_info_and_imagefolder_labels(dataset):
    out, summary = dataset
    classes = class_names(STYLE)
    assert classes == sorted(classes) and len(classes) == 8
    for split, n in (("train", N_TRAIN), ("val", N_VAL)):
        assert sorted(os.listdir(out / split)) == classes
        assert summary[split]["images"] == summary[split]["written"] == n
        for i in range(n):
            path = out / split / classes[i % 8] / f"{i:06d}.png"
            img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
            assert img.shape == (32, 32, 3)
            # PNG is lossless: the file holds exactly the rendered pixels.
            assert np.array_equal(img, render_cls_sample(SEED, split, i, STYLE)[0])
        records, found = load_image_folder(str(out / split))
        assert found == classes and len(records) == n
        for r in records:
            index = int(Path(r["file_name"]).stem)
            assert r["label"] == render_cls_sample(SEED, split, index, STYLE)[1]
    info = json.loads((out / "info.json").read_text())
    assert info["seed"] == SEED and info["classes"] == classes and info["complete"] is True
    assert info["counts"] == {"train": N_TRAIN, "val": N_VAL}
    assert ClsStyle(**info["style"]) == STYLE
    assert not list(out.rglob("*.tmp"))


def test_same_bytes_with_two_workers(dataset, tmp_path):
    out, _ = dataset
    generate_synthetic_cls(str(tmp_path), num_train=N_TRAIN, num_val=N_VAL, seed=SEED, style=STYLE, workers=2,
                           log=None)
    assert digests(tmp_path) == digests(out)


def test_per_image_statistics_vary_strongly():
    """What makes BN's batch statistics noisy: image means and contrasts spread widely."""
    images = [render_cls_sample(0, "train", i)[0].astype(np.float32) for i in range(200)]
    means = np.array([im.mean() for im in images])
    stds = np.array([im.mean(axis=2).std() for im in images])
    assert means.std() > 30 and means.max() - means.min() > 150
    assert np.percentile(stds, 90) > 3 * np.percentile(stds, 10)
    # Per-channel means differ per image too (colour cast, backgrounds), not only gray level.
    channel_gap = np.array([np.ptp(im.reshape(-1, 3).mean(0)) for im in images])
    assert np.median(channel_gap) > 15


def test_rerun_completes_an_interrupted_run(dataset, tmp_path):
    out, _ = dataset
    work = tmp_path / "set"
    generate_synthetic_cls(str(work), num_train=N_TRAIN, num_val=N_VAL, seed=SEED, style=STYLE, log=None)
    (work / "train" / "cross" / "000001.png").unlink()
    (work / "val" / "ellipse" / "000003.png").unlink()
    truncated = work / "train" / "star" / "000006.png"
    truncated.write_bytes(truncated.read_bytes()[:100])  # as a copy cut short would leave it
    (work / "train" / "star" / ".000014.png.tmp").write_bytes(b"half")  # a write killed before its rename
    summary = generate_synthetic_cls(str(work), num_train=N_TRAIN, num_val=N_VAL, seed=SEED, style=STYLE, log=None)
    assert (summary["train"]["written"], summary["train"]["kept"]) == (2, N_TRAIN - 2)
    assert (summary["val"]["written"], summary["val"]["kept"]) == (1, N_VAL - 1)
    assert digests(work) == digests(out)  # the stale temp file is gone too


def test_other_seed_or_style_into_the_same_folder_is_refused(dataset, tmp_path):
    work = tmp_path / "set"
    generate_synthetic_cls(str(work), num_train=4, num_val=0, seed=SEED, style=STYLE, log=None)
    with pytest.raises(ValueError, match="seed 5"):
        generate_synthetic_cls(str(work), num_train=4, num_val=0, seed=SEED + 1, style=STYLE, log=None)
    with pytest.raises(ValueError, match="Use another --out folder"):
        generate_synthetic_cls(str(work), num_train=4, num_val=0, seed=SEED, style=ClsStyle(size=40), log=None)
    more = generate_synthetic_cls(str(work), num_train=10, num_val=0, seed=SEED, style=STYLE, log=None)
    assert (more["train"]["written"], more["train"]["kept"]) == (6, 4)  # same set, extended


@pytest.mark.parametrize("kwargs, match", [
    ({"size": 16}, "size must be in 32..128"),
    ({"num_classes": 9}, "num_classes must be in 2..8"),
    ({"object_scale": (0.9, 0.5)}, "object_scale"),
    ({"contrast": (0.0, 1.0)}, "contrast"),
    ({"background": (0, 0, 0)}, "background"),
])
def test_style_is_checked(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ClsStyle(**kwargs)


def test_cli(tmp_path, capsys):
    out = tmp_path / "cli"
    args = ["--out", str(out), "--train", "16", "--val", "8", "--seed", "3", "--size", "32"]
    # One real subprocess shows the script runs from a checkout (slow only because
    # detgn.data imports torch); the error case calls main() in-process.
    run = subprocess.run([sys.executable, str(REPO / "datasets" / "prepare_synthetic_cls.py"), *args, "--workers", "2"],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert "done in" in run.stdout and '"written": 16' in run.stdout
    assert sum(1 for _ in (out / "train").rglob("*.png")) == 16
    assert json.loads((out / "info.json").read_text())["style"]["size"] == 32
    script = REPO / "datasets" / "prepare_synthetic_cls.py"
    spec = importlib.util.spec_from_file_location("prepare_synthetic_cls", script)
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    assert cli.main(args[:-2] + ["--size", "8"]) == 2
    assert "size must be in 32..128" in capsys.readouterr().err
    assert cli.parse_args([]).out.endswith(os.path.join("", "synthetic_cls"))
