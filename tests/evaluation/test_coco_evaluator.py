"""COCOEvaluator against pycocotools called directly on the same detections."""
import json
import logging
import math
import sys
import types

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_util

from detgn.evaluation import (
    COCOEvaluator,
    encode_masks,
    evaluate_results_file,
    instances_to_coco_json,
    merge_predictions,
)
from detgn.structures import BitMasks, Boxes, Instances
from detgn.utils import comm
from eval_testdata import (
    CROWD_BOX,
    CROWD_CAT,
    CROWD_IMAGE,
    METRICS,
    assert_same_metrics,
    box_det,
    direct_pycocotools,
    make_gt,
    perfect_detections,
    to_model_io,
    write_gt,
)


@pytest.fixture
def gt_json(tmp_path):
    return write_gt(tmp_path / "instances.json")


def run_evaluator(json_file, dets, *, with_masks=True, **kwargs):
    gt = make_gt()
    evaluator = COCOEvaluator.from_json(json_file, distributed=False, **kwargs)
    inputs, outputs = to_model_io(dets, gt, with_masks=with_masks)
    for i in range(len(inputs)):  # batches of one, like the test loader
        evaluator.process(inputs[i:i + 1], outputs[i:i + 1])
    return evaluator.evaluate()


def perturbed_detections():
    gt = make_gt()
    dets = perfect_detections(gt)
    # shift a box (and its mask) far enough to fail the high IoU thresholds only
    dets[0]["bbox"][0] += 6
    dets[0]["mask"] = np.roll(dets[0]["mask"], 6, axis=1)
    dets[1]["category_id"] = 20  # wrong class
    dets[3]["score"] = 0.01  # low score
    del dets[5]  # a missed object
    # image 3 gets no detections at all; image 5 (no objects) gets a false positive
    dets = [d for d in dets if d["image_id"] != 3]
    dets.append(box_det(5, 3, [10, 10, 20, 20], 0.99, gt))
    dets.append(box_det(1, 7, [0, 60, 30, 30], 0.5, gt))
    # A medium box around a small mask: segm must take the area from the mask
    # (a small false positive), bbox from the box (a medium one).
    odd = box_det(4, 20, [40, 0, 40, 40], 0.97, gt)
    odd["mask"][:] = False
    odd["mask"][0:8, 40:48] = True
    dets.append(odd)
    return dets


def test_perfect_predictions_give_ap_100(gt_json):
    results = run_evaluator(gt_json, perfect_detections(make_gt()))
    assert set(results) == {"bbox", "segm"}
    for task in ("bbox", "segm"):
        r = results[task]
        for key in ("AP", "AP50", "AP75", "APs", "APm", "AP-person", "AP-dog", "AP-kite"):
            assert r[key] == pytest.approx(100.0), (task, key)
        assert math.isnan(r["APl"])  # no large objects in 64-128 px images


def test_perturbation_matches_pycocotools_exactly(gt_json):
    dets = perturbed_detections()
    results = run_evaluator(gt_json, dets)
    for task in ("bbox", "segm"):
        expected = direct_pycocotools(gt_json, dets, task)
        assert_same_metrics(results[task], expected)
        assert 10 < results[task]["AP"] < 90  # the perturbations really change AP


def test_crowd_region_detection_is_neither_tp_nor_fp(gt_json):
    gt = make_gt()
    x, y, w, h = CROWD_BOX
    on_crowd = box_det(CROWD_IMAGE, CROWD_CAT, [x, y, w, h], 0.99, gt)
    dets = perfect_detections(gt) + [on_crowd]
    results = run_evaluator(gt_json, dets)
    for task in ("bbox", "segm"):
        assert_same_metrics(results[task], direct_pycocotools(gt_json, dets, task))
        assert results[task]["AP"] == pytest.approx(100.0)
    # Control: the same detection off the crowd region is a false positive.
    off_crowd = box_det(CROWD_IMAGE, CROWD_CAT, [40, 0, 16, 16], 0.99, gt)
    results = run_evaluator(gt_json, perfect_detections(gt) + [off_crowd])
    assert results["bbox"]["AP"] < 100


def test_category_id_round_trip_non_contiguous():
    masks = torch.zeros(3, 10, 12, dtype=torch.bool)
    masks[1, 2:5, 3:9] = True
    inst = Instances(
        (10, 12), pred_boxes=Boxes(torch.tensor([[1.0, 2, 5, 8], [3, 2, 9, 5], [0, 0, 12, 10]])),
        scores=torch.tensor([0.9, 0.5, 0.25]), pred_classes=torch.tensor([2, 0, 1]), pred_masks=masks,
    )
    lut = np.array([3, 7, 20])
    recs = instances_to_coco_json(inst, 42, dataset_id_lut=lut)
    assert [r["category_id"] for r in recs] == [20, 3, 7]
    assert recs[0]["bbox"] == [1.0, 2.0, 4.0, 6.0]
    assert [r["image_id"] for r in recs] == [42] * 3
    assert recs[1]["score"] == pytest.approx(0.5)
    json.dumps(recs)  # JSON-serialisable: counts decoded to str
    assert isinstance(recs[1]["segmentation"]["counts"], str)
    decoded = mask_util.decode(recs[1]["segmentation"])
    assert decoded.shape == (10, 12) and np.array_equal(decoded.astype(bool), masks[1].numpy())
    inst.pred_classes = torch.tensor([2, 0, 3])
    with pytest.raises(ValueError, match="NUM_CLASSES"):
        instances_to_coco_json(inst, 42, dataset_id_lut=lut)


def test_catalog_metadata_mapping_and_names(gt_json, monkeypatch):
    meta = types.SimpleNamespace(
        name="toy_val", json_file=gt_json, thing_classes=["human", "canine", "flyer"],
        contiguous_id_to_dataset_id={0: 3, 1: 7, 2: 20},
    )
    # A stand-in detgn.data: the evaluator only needs MetadataCatalog.get.
    fake_data = types.ModuleType("detgn.data")
    fake_data.MetadataCatalog = types.SimpleNamespace(get=lambda name: meta)
    monkeypatch.setitem(sys.modules, "detgn.data", fake_data)
    evaluator = COCOEvaluator("toy_val", distributed=False, tasks=("bbox",))
    inputs, outputs = to_model_io(perturbed_detections(), make_gt(), with_masks=False)
    evaluator.process(inputs, outputs)
    results = evaluator.evaluate()
    expected = direct_pycocotools(gt_json, perturbed_detections(), "bbox")
    renamed = {k.replace("person", "human").replace("dog", "canine").replace("kite", "flyer"): v
               for k, v in expected.items()}
    assert_same_metrics(results["bbox"], renamed)


def test_real_catalog_registration(gt_json, tmp_path):
    from detgn.data import DatasetCatalog, MetadataCatalog, register_coco_instances

    name = "detgn_eval_test_toy"
    register_coco_instances(name, gt_json, str(tmp_path))
    try:
        evaluator = COCOEvaluator(name, distributed=False)
        evaluator.process(*to_model_io(perturbed_detections(), make_gt()))
        results = evaluator.evaluate()
    finally:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    for task in ("bbox", "segm"):
        assert_same_metrics(results[task], direct_pycocotools(gt_json, perturbed_detections(), task))


def test_results_json_written_and_reevaluated(gt_json, tmp_path):
    out = tmp_path / "eval"
    dets = perturbed_detections()
    results = run_evaluator(gt_json, dets, output_dir=str(out))
    saved = json.loads((out / "coco_instances_results.json").read_text())
    assert len(saved) == len(dets)
    assert {"image_id", "category_id", "bbox", "score", "segmentation"} <= set(saved[0])
    metrics = json.loads((out / "metrics.json").read_text())
    for task in ("bbox", "segm"):
        assert_same_metrics(metrics[task], results[task])
    again = evaluate_results_file(gt_json, str(out / "coco_instances_results.json"), ("bbox", "segm"),
                                  output_dir=str(tmp_path / "again"))
    for task in ("bbox", "segm"):
        assert_same_metrics(again[task], results[task])
    assert (tmp_path / "again" / "metrics.json").is_file()


def test_empty_predictions_give_zero_ap_with_warning(gt_json, caplog):
    with caplog.at_level(logging.WARNING, logger="detgn.evaluation"):
        results = run_evaluator(gt_json, [])
    assert "No predictions" in caplog.text
    for task in ("bbox", "segm"):
        for key in ("AP", "AP50", "AP75", "APs", "APm", "AP-person", "AP-dog", "AP-kite"):
            assert results[task][key] == 0.0
    # No image processed at all: every GT object is missed.
    evaluator = COCOEvaluator.from_json(gt_json, distributed=False)
    assert evaluator.evaluate()["segm"]["AP"] == 0.0


def test_bbox_only_predictions(gt_json, caplog):
    dets = perturbed_detections()
    with caplog.at_level(logging.WARNING, logger="detgn.evaluation"):
        results = run_evaluator(gt_json, dets, with_masks=False)
    assert list(results) == ["bbox"] and "no masks" in caplog.text
    assert_same_metrics(results["bbox"], direct_pycocotools(gt_json, dets, "bbox"))
    assert list(run_evaluator(gt_json, dets, tasks=("bbox",))) == ["bbox"]


def test_only_processed_images_are_scored(gt_json):
    gt = make_gt()
    dets = [d for d in perfect_detections(gt) if d["image_id"] in (1, 2)]
    evaluator = COCOEvaluator.from_json(gt_json, distributed=False)
    evaluator.process(*to_model_io(dets, gt, image_ids={1, 2}))
    assert evaluator.evaluate()["bbox"]["AP"] == pytest.approx(100.0)


def test_encode_masks_equals_per_mask_encoding():
    rng = np.random.default_rng(0)
    masks = rng.random((5, 37, 53)) > 0.7
    masks[2] = False
    masks[3] = True
    rles = encode_masks(torch.from_numpy(masks))
    for m, rle in zip(masks, rles):
        ref = mask_util.encode(np.asfortranarray(m.astype(np.uint8)))
        assert rle["size"] == [37, 53] and rle["counts"] == ref["counts"].decode()
    assert encode_masks(np.zeros((0, 4, 6), dtype=bool)) == []
    assert encode_masks(BitMasks(torch.from_numpy(masks[:2]))) == rles[:2]
    with pytest.raises(ValueError, match="N, H, W"):
        encode_masks(torch.zeros(4, 6, dtype=torch.bool))
    with pytest.raises(ValueError, match="threshold"):
        encode_masks(torch.rand(2, 4, 4))


def test_bad_inputs_raise_clear_errors(gt_json, tmp_path):
    with pytest.raises(ValueError, match="subset"):
        COCOEvaluator.from_json(gt_json, tasks=("keypoints",))
    gt = make_gt()
    evaluator = COCOEvaluator.from_json(gt_json, distributed=False)
    inputs, outputs = to_model_io(perfect_detections(gt), gt, image_ids={1})
    inputs[0]["height"] = 50
    with pytest.raises(ValueError, match="original size"):
        evaluator.process(inputs, outputs)
    inputs, outputs = to_model_io(perfect_detections(gt), gt, image_ids={1})
    inputs[0]["image_id"] = 999
    evaluator.process(inputs, outputs)
    with pytest.raises(ValueError, match="999"):
        evaluator.evaluate()
    bad = make_gt()
    del bad["annotations"][0]["iscrowd"]
    with pytest.raises(ValueError, match="iscrowd"):
        COCOEvaluator.from_json(write_gt(tmp_path / "bad.json", bad))
    with pytest.raises(FileNotFoundError, match="nope.json"):
        COCOEvaluator.from_json(str(tmp_path / "nope.json"))


def _rank_predictions(json_file, dets, image_ids):
    evaluator = COCOEvaluator.from_json(json_file, distributed=True)
    inputs, outputs = to_model_io(dets, make_gt(), image_ids=image_ids)
    evaluator.process(inputs, outputs)
    return evaluator


def test_two_ranks_gather_and_merge(gt_json, monkeypatch):
    dets = perturbed_detections()
    single = run_evaluator(gt_json, dets)
    rank0 = _rank_predictions(gt_json, dets, {1, 3, 5})
    # rank 1 also repeats image 1, as a sampler padding its shard would
    rank1 = _rank_predictions(gt_json, dets, {1, 2, 4})
    assert merge_predictions([rank1._predictions, rank0._predictions]) == merge_predictions(
        [rank0._predictions, rank1._predictions])

    monkeypatch.setattr(comm, "get_world_size", lambda: 2)
    monkeypatch.setattr(comm, "synchronize", lambda: None)
    monkeypatch.setattr(comm, "gather", lambda obj, dst=0: [rank0._predictions, rank1._predictions])
    monkeypatch.setattr(comm, "is_main_process", lambda: True)
    merged = rank0.evaluate()
    for task in ("bbox", "segm"):
        assert_same_metrics(merged[task], single[task])
    monkeypatch.setattr(comm, "is_main_process", lambda: False)
    monkeypatch.setattr(comm, "gather", lambda obj, dst=0: [])
    assert rank1.evaluate() == {}
    assert all(k in merged["bbox"] for k in METRICS)
