"""Predictor: builds the config's model, loads its weights, evaluates on a BGR numpy image
with evaluation's preprocessing, returns detections at the original size; channels-last
comes from build_model, so the Predictor (and the zoo's get) have it too."""
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "modeling"))
from detector_testdata import tiny_cfg  # noqa: E402

from detgn.data import DatasetMapper  # noqa: E402
from detgn.engine import Predictor, build_and_load_model  # noqa: E402
from detgn.modeling import build_model  # noqa: E402


pytestmark = pytest.mark.usefixtures("one_thread")


def _cfg(*opts):
    cfg = tiny_cfg("FPN", "GN", "4conv1fc")
    cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST = 96, 160
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 0.0  # an untrained model's scores sit near 1/(K+1)
    cfg.merge_from_list(list(opts))
    return cfg


def _image(h=120, w=150, seed=0):
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 60, (h, w, 3), dtype=np.uint8)
    img[20:70, 30:100] = (40, 200, 230)  # BGR: channel order matters
    return img


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    torch.manual_seed(3)
    path = tmp_path_factory.mktemp("predictor") / "model.pth"
    torch.save({"model": build_model(_cfg()).state_dict()}, path)
    return path


def test_builds_loads_and_evaluates(weights):
    predictor = Predictor(_cfg("MODEL.WEIGHTS", str(weights)))
    assert not predictor.model.training
    assert predictor.weights_report is not None and not predictor.weights_report.missing
    saved = torch.load(weights, weights_only=True)["model"]
    for k, v in predictor.model.state_dict().items():
        assert torch.equal(v, saved[k]), k
    image = _image()
    inst = predictor(image)
    assert inst.image_size == image.shape[:2] and len(inst) > 0
    assert inst.pred_boxes.tensor.device.type == "cpu"
    assert tuple(inst.pred_masks.shape[1:]) == image.shape[:2] and inst.pred_masks.dtype == torch.bool
    assert (inst.pred_boxes.tensor[:, 2] <= image.shape[1]).all() and (inst.pred_boxes.tensor[:, 3] <= image.shape[0]).all()
    with pytest.raises(ValueError, match="uint8 BGR"):
        predictor(image.astype(np.float32))


@pytest.mark.parametrize("fmt", ["BGR", "RGB"])
def test_same_preprocessing_as_evaluation(weights, tmp_path, fmt):
    """A BGR array gives what the test-time mapper gives for the file, whatever INPUT.FORMAT is."""
    cfg = _cfg("MODEL.WEIGHTS", str(weights), "INPUT.FORMAT", fmt)
    predictor = Predictor(cfg)
    image = _image()
    path = tmp_path / "img.png"
    cv2.imwrite(str(path), image)
    record = {"file_name": str(path), "height": image.shape[0], "width": image.shape[1], "image_id": 1}
    with torch.no_grad():
        want = predictor.model([DatasetMapper.from_config(cfg, is_train=False)(record)])[0]["instances"]
    got = predictor(image)
    assert torch.equal(got.pred_boxes.tensor, want.pred_boxes.tensor)
    assert torch.equal(got.scores, want.scores) and torch.equal(got.pred_masks, want.pred_masks)


def test_without_weights_warns_and_uses_the_initialisation(caplog):
    model, report = build_and_load_model(_cfg())
    assert report is None and model.training  # as built: the zoo's get returns it so
    with caplog.at_level("WARNING", logger="detgn"):
        Predictor(_cfg())
    assert "randomly initialised" in caplog.text


def test_channels_last_where_the_model_is_built(weights):
    def convs_channels_last(model):
        convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
        return all(m.weight.is_contiguous(memory_format=torch.channels_last) for m in convs)

    assert not convs_channels_last(build_model(_cfg()))
    assert convs_channels_last(build_model(_cfg("CPU.CHANNELS_LAST", True)))
    predictor = Predictor(_cfg("CPU.CHANNELS_LAST", True, "MODEL.WEIGHTS", str(weights)))
    assert convs_channels_last(predictor.model)  # loading the weights keeps the format
    image = _image(seed=1)
    assert predictor(image).image_size == image.shape[:2]
