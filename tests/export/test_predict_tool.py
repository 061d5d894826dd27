"""tools/predict.py and tools/export_model.py from the command line: images, folders, globs and
video; pictures or a video with masks drawn; a COCO results file that evaluate_results reads;
unreadable inputs named and skipped."""
import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from export_testdata import decisive_weights, export_cfg, make_image

from detgn.export import ExportedPredictor

ROOT = Path(__file__).resolve().parents[2]


def _run(tool, *args, cwd=None):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, str(ROOT / "tools" / tool), *map(str, args)], capture_output=True,
                          text=True, env=env, cwd=cwd, timeout=300)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("predict_tool")
    cfg = export_cfg("FPN", "GN", "2fc", "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.05")
    weights = decisive_weights(cfg, root / "w.pth")
    config = root / "tiny.yaml"
    config.write_text(cfg.dump())
    out = root / "export"
    r = _run("export_model.py", "--config", config, "--format", "onnx", "--output", out, "MODEL.WEIGHTS", weights)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "Exported onnx model model.onnx" in r.stdout
    return root, config, weights, out


def test_export_tool_needs_weights(exported, tmp_path):
    _, config, _, _ = exported
    r = _run("export_model.py", "--config", config, "--output", tmp_path / "x", "MODEL.WEIGHTS", "")
    assert r.returncode == 2 and "MODEL.WEIGHTS" in r.stderr


def test_folder_with_an_unreadable_image(exported, tmp_path):
    root, _, _, model = exported
    images = tmp_path / "images"
    images.mkdir()
    for k, (h, w) in enumerate([(120, 150), (140, 110)]):
        cv2.imwrite(str(images / f"img{k}.png"), make_image(h, w))
    (images / "broken.jpg").write_bytes(b"not an image")
    out = tmp_path / "out"
    r = _run("predict.py", "--model", model, "--input", images, "--output", out)
    assert r.returncode == 1, r.stderr[-2000:]
    assert "broken.jpg" in r.stderr and "skipped" in r.stderr
    assert sorted(p.name for p in out.glob("*.png")) == ["img0.png", "img1.png"]
    assert "images/s" in r.stdout and "ETA" in r.stdout
    records = json.loads((out / "coco_instances_results.json").read_text())
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert summary["images"] == 2 and summary["skipped"] == 1 and len(records) == summary["detections"]
    # The records are what the runtime returns, image by image.
    runtime = ExportedPredictor(model)
    inst = runtime(cv2.imread(str(images / "img0.png")))
    mine = [r for r in records if r["file_name"].endswith("img0.png")]
    assert len(mine) == len(inst) > 0
    assert {"image_id", "category_id", "bbox", "score", "segmentation"} <= set(mine[0])
    np.testing.assert_allclose(mine[0]["score"], float(inst.scores[0]), rtol=1e-6)


def test_glob_and_eager_backend_agree(exported, tmp_path):
    root, config, weights, model = exported
    images = tmp_path / "images"
    images.mkdir()
    for k, (h, w) in enumerate([(120, 150), (100, 180), (150, 120)]):
        cv2.imwrite(str(images / f"a{k}.png"), make_image(h, w, seed=k))
    cv2.imwrite(str(images / "skip.jpg"), make_image(100, 100))  # not matched by the pattern
    outs = {}
    for name, args in {"onnx": ["--model", model], "torch": ["--config", config, "MODEL.WEIGHTS", weights]}.items():
        out = tmp_path / name
        r = _run("predict.py", *args, "--input", str(images / "a*.png"), "--output", out, "--no-draw")
        assert r.returncode == 0, r.stderr[-2000:]
        assert not list(out.glob("*.png"))
        outs[name] = json.loads((out / "coco_instances_results.json").read_text())
    assert len(outs["onnx"]) == len(outs["torch"]) > 0
    assert {r["file_name"] for r in outs["onnx"]} == {str(images / f"a{k}.png") for k in range(3)}
    for a, b in zip(sorted(outs["onnx"], key=lambda r: (r["image_id"], -r["score"])),
                    sorted(outs["torch"], key=lambda r: (r["image_id"], -r["score"]))):
        assert a["category_id"] == b["category_id"] and abs(a["score"] - b["score"]) < 1e-4
        np.testing.assert_allclose(a["bbox"], b["bbox"], atol=0.02)


def test_video_in_video_out(exported, tmp_path):
    _, _, _, model = exported
    video = tmp_path / "clip.mp4"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"mp4v"), 5.0, (160, 120))
    assert writer.isOpened()
    for k in range(4):
        writer.write(make_image(120, 160, seed=k))
    writer.release()
    out = tmp_path / "out"
    r = _run("predict.py", "--model", model, "--input", video, "--output", out)
    assert r.returncode == 0, r.stderr[-2000:]
    drawn = cv2.VideoCapture(str(out / "clip.mp4"))
    frames = 0
    while drawn.read()[0]:
        frames += 1
    assert frames == 4
    records = json.loads((out / "coco_instances_results.json").read_text())
    assert {r["image_id"] for r in records} <= {0, 1, 2, 3} and records


def test_bad_command_lines(exported, tmp_path):
    _, _, _, model = exported
    r = _run("predict.py", "--model", model, "--input", tmp_path / "missing", "--output", tmp_path / "o")
    assert r.returncode == 1 and "no such file" in r.stderr
    r = _run("predict.py", "--model", tmp_path, "--input", tmp_path, "--output", tmp_path / "o")
    assert r.returncode == 1 and "not an export folder" in r.stderr
    r = _run("predict.py", "--model", model, "--input", tmp_path, "--output", tmp_path / "o", "MODEL.WEIGHTS", "x")
    assert r.returncode == 2
