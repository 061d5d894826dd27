"""The export's equality rule still catches real errors.

The rule (:mod:`detgn.export.compare`) lets detections differ where float32 precision decides
(boxes within a tolerance that grows with the box, near-ties at the score threshold, the top-k
cut and NMS). Each error planted here is one a broken export or runtime could make; each must
be refused on trained-like (decisive) weights, while the faithful export passes.
"""
import copy

import cv2
import numpy as np
import pytest
import torch

from export_testdata import decisive_weights, export_cfg, make_image

from detgn.engine import Predictor
from detgn.export import ExportedPredictor, export_model
from detgn.export.compare import compare_predictors
from detgn.export.exporter import export_detector, metadata_from_config

pytestmark = pytest.mark.usefixtures("one_thread")

SIZES = [(120, 150)]  # 100 detections with masks: one image decides


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("planted")
    cfg = export_cfg()
    cfg.MODEL.WEIGHTS = decisive_weights(cfg, root / "w.pth")
    folder = export_model(cfg, root / "good", fmt="torch_export").parent
    return cfg, Predictor(cfg), folder, root


def _matches(predictor, other):
    return compare_predictors(predictor, other, [make_image(h, w, seed=11) for h, w in SIZES])


def _refused(predictor, other, why: str = "detections") -> bool:
    """Refused, and for ``why``: "detections" without a partner or a reason, or "masks" alone."""
    matches = _matches(predictor, other)
    if why == "masks":
        return any(m.bad_masks for m in matches) and not any(m.unmatched or m.extra for m in matches)
    return any(m.unmatched or m.extra for m in matches)


def _export_changed(cfg, predictor, folder, change):
    model = copy.deepcopy(predictor.model)
    change(model)
    export_detector(model, folder, fmt="torch_export", metadata=metadata_from_config(cfg),
                    min_size_test=cfg.INPUT.MIN_SIZE_TEST, max_size_test=cfg.INPUT.MAX_SIZE_TEST, verify=False)
    return ExportedPredictor(folder)


def test_the_faithful_export_passes(exported):
    _, predictor, folder, _ = exported
    assert all(m.ok for m in _matches(predictor, ExportedPredictor(folder)))


def test_wrong_nms_threshold_is_refused(exported):
    cfg, predictor, _, root = exported

    def looser_nms(model):
        model.roi_heads.box_predictor.test_nms_thresh = 0.6

    assert _refused(predictor, _export_changed(cfg, predictor, root / "nms", looser_nms))


def test_swapped_channels_are_refused(exported):
    _, predictor, folder, _ = exported
    runtime = ExportedPredictor(folder)
    assert _refused(predictor, lambda image: runtime(np.ascontiguousarray(image[:, :, ::-1])))


def test_wrong_resize_rule_is_refused(exported):
    _, predictor, folder, _ = exported
    runtime = ExportedPredictor(folder)
    runtime.mapper.min_size_test += 8  # shorter side to 104 px, not 96
    assert _refused(predictor, runtime)


def test_dropped_mask_paste_step_is_refused(exported, monkeypatch):
    """Masks resized into their rounded box, the paste's sub-pixel interpolation left out."""
    _, predictor, folder, _ = exported

    def crude_paste(probs, boxes, image_shape, threshold=0.5, method=None):
        out = torch.zeros((len(probs),) + tuple(image_shape), dtype=torch.bool)
        for k, (prob, box) in enumerate(zip(probs.numpy(), boxes.round().int().tolist())):
            x1, y1 = max(box[0], 0), max(box[1], 0)
            x2, y2 = min(max(box[2], x1 + 1), image_shape[1]), min(max(box[3], y1 + 1), image_shape[0])
            resized = cv2.resize(prob, (x2 - x1, y2 - y1), interpolation=cv2.INTER_NEAREST)
            out[k, y1:y2, x1:x2] = torch.from_numpy(resized >= threshold)
        return out

    monkeypatch.setattr("detgn.export.runtime.paste_masks_in_image", crude_paste)
    assert _refused(predictor, ExportedPredictor(folder), why="masks")


def test_box_head_weight_changed_by_one_percent_is_refused(exported):
    cfg, predictor, _, root = exported

    def nudge(model):
        head = model.roi_heads.box_head
        fc = getattr(head, head.fc_names[-1])
        with torch.no_grad():
            flat = fc.weight.view(-1)
            flat[flat.abs().argmax()] *= 1.01

    assert _refused(predictor, _export_changed(cfg, predictor, root / "weight", nudge))
