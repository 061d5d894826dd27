"""An export folder loads only as written: edited metadata, a swapped model file, a missing
file or a foreign folder are refused with a message naming the file and what differs."""
import json
import shutil

import pytest

from export_testdata import decisive_weights, export_cfg

from detgn.export import ExportError, ExportedPredictor, ExportMismatchError, export_model
from detgn.export.metadata import METADATA_FILE

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("export_meta")
    cfg = export_cfg("FPN", "GN", "2fc")
    cfg.MODEL.WEIGHTS = decisive_weights(cfg, root / "w.pth")
    a = export_model(cfg, root / "a", fmt="onnx").parent
    cfg2 = export_cfg("FPN", "GN", "2fc", "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.3")
    cfg2.MODEL.WEIGHTS = cfg.MODEL.WEIGHTS
    b = export_model(cfg2, root / "b", fmt="onnx").parent
    pt2 = export_model(cfg, root / "pt2", fmt="torch_export").parent
    return a, b, pt2


def _copy(src, dst):
    shutil.copytree(src, dst)
    return dst


def test_edited_metadata_is_refused(exported, tmp_path):
    folder = _copy(exported[0], tmp_path / "edited")
    meta = json.loads((folder / METADATA_FILE).read_text())
    meta["class_names"] = ["cat", "dog", "bird"]
    (folder / METADATA_FILE).write_text(json.dumps(meta))
    with pytest.raises(ExportMismatchError, match="class_names"):
        ExportedPredictor(folder)


def test_model_file_of_another_export_is_refused(exported, tmp_path):
    folder = _copy(exported[0], tmp_path / "swapped")
    shutil.copy(exported[1] / "model.onnx", folder / "model.onnx")
    with pytest.raises(ExportMismatchError, match="sha256"):
        ExportedPredictor(folder)


def test_metadata_of_another_export_with_its_hash_is_refused(exported, tmp_path):
    """Even with a matching hash (someone copied JSON and fixed the hash): the embedded copy differs."""
    folder = _copy(exported[0], tmp_path / "mixed")
    meta_b = json.loads((exported[1] / METADATA_FILE).read_text())
    meta_b["model_sha256"] = json.loads((folder / METADATA_FILE).read_text())["model_sha256"]
    (folder / METADATA_FILE).write_text(json.dumps(meta_b))
    with pytest.raises(ExportMismatchError, match="score_threshold"):
        ExportedPredictor(folder)


def test_missing_pieces_are_named(exported, tmp_path):
    with pytest.raises(ExportError, match="not an export folder"):
        ExportedPredictor(tmp_path)
    folder = _copy(exported[0], tmp_path / "nomodel")
    (folder / "model.onnx").unlink()
    with pytest.raises(ExportError, match="model.onnx"):
        ExportedPredictor(folder)
    folder = _copy(exported[0], tmp_path / "badjson")
    (folder / METADATA_FILE).write_text("{not json")
    with pytest.raises(ExportError, match="not readable JSON"):
        ExportedPredictor(folder)


def test_backend_must_fit_the_format(exported):
    with pytest.raises(ExportError, match="cannot run"):
        ExportedPredictor(exported[2], backend="onnxruntime")
    with pytest.raises(ExportError, match="cannot run"):
        ExportedPredictor(exported[0], backend="torch")
    assert ExportedPredictor(exported[0], backend="openvino").backend == "openvino"


def test_edited_pt2_metadata_is_refused(exported, tmp_path):
    folder = _copy(exported[2], tmp_path / "pt2")
    meta = json.loads((folder / METADATA_FILE).read_text())
    meta["resize"]["min_size_test"] = 800
    (folder / METADATA_FILE).write_text(json.dumps(meta))
    with pytest.raises(ExportMismatchError, match="resize"):
        ExportedPredictor(folder)


def test_a_failed_export_leaves_the_previous_one_intact(exported, tmp_path, monkeypatch):
    folder = _copy(exported[0], tmp_path / "keep")
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    cfg = export_cfg("FPN", "GN", "2fc")
    with pytest.raises(ExportError):
        export_model(cfg, folder, fmt="onnx_typo")
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    ExportedPredictor(folder)
