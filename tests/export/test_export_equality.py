"""The exported model gives the eager Predictor's detections (the product of the export).

For a small GN FPN Mask R-CNN, exported once to ONNX (run in onnxruntime) and once with
torch.export (run in torch): same count, labels, boxes within 0.01 px, scores within 1e-4,
mask IoU >= 0.99 on four images whose resized sizes differ from each other and from the
export's tracing sizes (non-square, portrait, very wide), and an image with no detection.
"""
import json

import numpy as np
import pytest
import torch

from export_testdata import IMAGE_SIZES, assert_same_detections, decisive_weights, export_cfg, make_image

from detgn.engine import Predictor
from detgn.export import ExportedPredictor, export_model, read_metadata

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def fpn_gn(tmp_path_factory):
    root = tmp_path_factory.mktemp("export_fpn_gn")
    cfg = export_cfg()
    cfg.MODEL.WEIGHTS = decisive_weights(cfg, root / "w.pth")
    folders = {fmt: export_model(cfg, root / fmt, fmt=fmt, config_name="tiny").parent
               for fmt in ("onnx", "torch_export")}
    return cfg, Predictor(cfg), folders


@pytest.mark.parametrize("fmt", ["onnx", "torch_export"])
def test_same_detections_as_predictor_at_any_size(fpn_gn, fmt):
    cfg, predictor, folders = fpn_gn
    runtime = ExportedPredictor(folders[fmt])
    assert runtime.backend == ("onnxruntime" if fmt == "onnx" else "torch")
    traced = set()
    for h, w in IMAGE_SIZES:
        image = make_image(h, w)
        ref, got = predictor(image), runtime(image)
        assert len(ref) >= 50  # a real comparison: many detections with masks
        assert_same_detections(ref, got, predictor)
        traced.add(tuple(runtime.input_for(image)["image"].shape[1:]))
    assert len(traced) == len(IMAGE_SIZES)  # four different network input sizes
    assert (96, 128) not in traced  # the tracing size (a 480x640 image) is not among them


def test_torch_export_program_is_bit_exact(fpn_gn):
    """torch.export runs the same kernels: not only within tolerance but equal."""
    _, predictor, folders = fpn_gn
    image = make_image(130, 170)
    ref, got = predictor(image), ExportedPredictor(folders["torch_export"])(image)
    assert torch.equal(ref.pred_boxes.tensor, got.pred_boxes.tensor)
    assert torch.equal(ref.scores, got.scores)
    assert torch.equal(ref.pred_masks, got.pred_masks)


def test_metadata_describes_the_model(fpn_gn):
    cfg, _, folders = fpn_gn
    meta = read_metadata(folders["onnx"])
    assert meta["format"] == "onnx" and meta["model_file"] == "model.onnx"
    assert meta["config"] == "tiny" and "ROI_HEADS" in meta["config_yaml"]
    assert meta["num_classes"] == cfg.MODEL.ROI_HEADS.NUM_CLASSES
    assert meta["input"]["format"] == cfg.INPUT.FORMAT and meta["input"]["min_side"] == 65
    assert meta["resize"]["min_size_test"] == 96 and meta["resize"]["max_size_test"] == 160
    assert meta["score_threshold"] == 0.0 and meta["mask_paste"] == "grid_sample"
    assert meta["outputs"] == ["boxes", "scores", "classes", "mask_probs"]
    import detgn

    assert meta["detgn_version"] == detgn.__version__
    # The same metadata is inside the model file.
    import onnx

    embedded = {p.key: p.value for p in onnx.load(str(folders["onnx"] / "model.onnx")).metadata_props}
    assert json.loads(embedded["detgn_export"])["class_names"] == meta["class_names"]


def test_image_with_no_detection(tmp_path):
    cfg = export_cfg("FPN", "GN", "2fc", "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.999")
    cfg.MODEL.WEIGHTS = decisive_weights(cfg, tmp_path / "w.pth")
    folder = export_model(cfg, tmp_path / "onnx", fmt="onnx").parent
    image = make_image(110, 140)
    ref, got = Predictor(cfg)(image), ExportedPredictor(folder)(image)
    assert len(ref) == 0 and len(got) == 0
    assert got.image_size == (110, 140)
    assert tuple(got.pred_masks.shape) == (0, 110, 140) and got.pred_boxes.tensor.shape == (0, 4)


def test_extreme_aspect_ratio_is_refused_clearly(fpn_gn):
    _, _, folders = fpn_gn
    runtime = ExportedPredictor(folders["onnx"])
    with pytest.raises(ValueError, match="sides 65..8192"):
        runtime(np.zeros((40, 400, 3), np.uint8))  # resized to 16 x 160
    with pytest.raises(ValueError, match="uint8 BGR"):
        runtime(np.zeros((100, 100, 3), np.float32))
