"""tools/visualize.py (and the Predictor and drawing it runs) on an image, a folder and a
dataset split, with a tiny untrained model.

An untrained detector's class scores sit near 1/(K+1), so ``--score-thresh 0`` draws
its detections and a threshold above 1 draws none: the first must change pixels,
the second must leave the image exactly as read (PNG is lossless).
"""
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

pytestmark = pytest.mark.usefixtures("use_synthetic_root", "restore_process_state")

LOW = ["--score-thresh", "0.0", "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0"]


@pytest.fixture(scope="module")
def vis(tools_helpers):
    return tools_helpers.load_tool("visualize")


@pytest.fixture(scope="module")
def tiny_weights(tiny_config, tmp_path_factory):
    from detgn.config import load_config
    from detgn.modeling import build_model

    cfg = load_config(str(tiny_config), [])
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("tiny_weights") / "untrained.pth"
    torch.save(build_model(cfg).state_dict(), path)
    return path


@pytest.fixture
def val_images(tools_synthetic_root):
    return sorted((tools_synthetic_root / "synthetic" / "val").glob("*.jpg"))


def _read(path):
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    assert img is not None, f"{path} is not a readable image"
    return img


def test_render_draws_detections_only_above_the_threshold(tiny_config, tiny_weights, val_images):
    from detgn.config import load_config
    from detgn.engine import Predictor
    from detgn.visualization.predictions import class_names_for
    from detgn.visualization.draw import render

    cfg = load_config(str(tiny_config),
                      ["MODEL.WEIGHTS", str(tiny_weights), "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0"])
    predictor = Predictor(cfg)
    assert not predictor.model.training
    raw = _read(val_images[0])
    inst = predictor(raw)
    assert len(inst) > 0 and inst.image_size == raw.shape[:2]
    assert tuple(inst.pred_masks.shape[1:]) == raw.shape[:2]
    drawn = render(raw, inst, score_thresh=0.0)
    assert drawn.shape == raw.shape and (drawn != raw).any()
    assert np.array_equal(render(raw, inst, score_thresh=1.01), raw)
    # The names come from synthetic_val's metadata (the config's TEST set) ...
    names = class_names_for(cfg)
    assert names is not None and len(names) == 8 and names[0] == "ellipse"
    # ... and are numbers when the TEST set is not registered.
    other = load_config(str(tiny_config), ["DATASETS.TEST", "('not_a_registered_set',)"])
    assert class_names_for(other) is None


def test_single_image(vis, tiny_config, tiny_weights, val_images, tmp_path, capsys):
    out = tmp_path / "out"
    # Overrides before --input, as in the documented command line.
    rc = vis.main(["--config", str(tiny_config), "MODEL.WEIGHTS", str(tiny_weights),
                   "--input", str(val_images[0]), "--output", str(out), *LOW])
    assert rc == 0, capsys.readouterr()
    pngs = sorted(out.glob("*.png"))
    assert [p.name for p in pngs] == [val_images[0].stem + ".png"]
    raw, png = _read(val_images[0]), _read(pngs[0])
    assert png.shape == raw.shape and (png != raw).any()
    stdout = capsys.readouterr().out
    assert f"[1/1] {val_images[0]}" in stdout and "detection(s) with score >= 0.00" in stdout


def test_folder_with_a_corrupt_file(vis, tiny_config, tiny_weights, val_images, tmp_path, capsys):
    folder = tmp_path / "images"
    folder.mkdir()
    for p in val_images[:2]:
        shutil.copy(p, folder / p.name)
    (folder / "broken.png").write_bytes(b"not a png at all")
    (folder / "notes.txt").write_text("not an image: ignored")
    out = tmp_path / "out"
    rc = vis.main(["--config", str(tiny_config), "--input", str(folder), "--output", str(out),
                   "MODEL.WEIGHTS", str(tiny_weights), *LOW])
    captured = capsys.readouterr()
    # The good images are drawn; the bad one is named and makes the exit status 1.
    assert rc == 1
    assert "broken.png" in captured.err and "not a decodable image" in captured.err
    assert sorted(p.name for p in out.glob("*.png")) == sorted(p.stem + ".png" for p in val_images[:2])
    for p in val_images[:2]:
        raw, png = _read(p), _read(out / (p.stem + ".png"))
        assert png.shape == raw.shape and (png != raw).any()
    assert captured.out.count("detection(s) with score >=") == 2


def test_dataset_split_with_ground_truth(vis, tiny_config, tiny_weights, tools_synthetic_root, tmp_path, capsys):
    from detgn.data import DatasetCatalog

    out = tmp_path / "out"
    # The default threshold (0.5) is above every untrained score: the left panel is the
    # raw image, the right one shows the ground truth.
    rc = vis.main(["--config", str(tiny_config), "MODEL.WEIGHTS", str(tiny_weights),
                   "--dataset", "synthetic_val", "--num", "2", "--output", str(out)])
    assert rc == 0, capsys.readouterr()
    records = DatasetCatalog.get("synthetic_val")[:2]
    assert sorted(p.name for p in out.glob("*.png")) == sorted(Path(r["file_name"]).stem + ".png" for r in records)
    from detgn.visualization.draw import CAPTION_H as caption, GAP

    for r in records:
        raw = _read(r["file_name"])
        h, w = raw.shape[:2]
        png = _read(out / (Path(r["file_name"]).stem + ".png"))
        assert png.shape == (h + caption, 2 * w + GAP, 3)
        assert np.array_equal(png[caption:, :w], raw)  # no prediction above 0.5
        assert any(not a["iscrowd"] for a in r["annotations"])
        assert (png[caption:, w + GAP:] != raw).any()  # the ground truth is drawn
    assert capsys.readouterr().out.count("[2/2]") == 1


def test_errors_are_clear(vis, tiny_config, tiny_weights, tmp_path, capsys):
    out = str(tmp_path / "out")
    assert vis.main(["--config", str(tiny_config), "--input", str(tmp_path / "missing.jpg"), "--output", out]) == 1
    assert "missing.jpg: no such file or folder" in capsys.readouterr().err

    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"")
    assert vis.main(["--config", str(tiny_config), "MODEL.WEIGHTS", str(tiny_weights),
                     "--input", str(bad), "--output", out]) == 1
    assert f"{bad} (image): not a decodable image" in capsys.readouterr().err

    assert vis.main(["--config", str(tiny_config), "MODEL.WEIGHTS", str(tmp_path / "nope.pth"),
                     "--input", str(bad), "--output", out]) == 1
    assert "nope.pth' does not exist" in capsys.readouterr().err

    assert vis.main(["--config", str(tiny_config), "SOLVER.NO_SUCH_KEY", "1",
                     "--input", str(bad), "--output", out]) == 2
    assert "Unknown config key 'SOLVER.NO_SUCH_KEY'" in capsys.readouterr().err

    assert vis.main(["--config", str(tiny_config), "--dataset", "synthetic_vall", "--output", out]) == 1
    err = capsys.readouterr().err
    assert "Dataset 'synthetic_vall' is not registered" in err and "'synthetic_val'" in err

    with pytest.raises(SystemExit):
        vis.main(["--config", str(tiny_config), "--input", str(bad), "--output", out, "--no-such-flag"])
    assert "unrecognized option(s): --no-such-flag" in capsys.readouterr().err
