"""The real COCO 2017 files' format and quirks, end to end through the data path.

``coco2017_like`` (tests/coco2017_like.py) copies the real files: info/licenses keys,
full image records with 12-digit file names, the 80 categories with ids 1..90 (gaps),
uncompressed-RLE crowd regions, images without annotations, and the two zero-height
records of instances_train2017.json (918 and 2206849) verbatim. The built-in names must
load it by default under DETGN_DATASETS, as users' real copies must.
"""
import io
import logging
from pathlib import Path

import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch

from detgn.config import get_cfg
from detgn.data import DatasetCatalog, MetadataCatalog, build_detection_train_loader, register_coco_instances
from detgn.data.datasets.coco import CocoFormatError, load_coco_json
from detgn.data.mapper import DatasetMapper
from detgn.evaluation import COCOEvaluator
from detgn.structures import Boxes, Instances

pytestmark = pytest.mark.usefixtures("one_thread")
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def coco_root(coco2017_like, monkeypatch):
    monkeypatch.setenv("DETGN_DATASETS", str(coco2017_like.root))
    return coco2017_like


def _warnings(caplog):
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


def test_coco_2017_train_loads_by_default_and_names_the_dropped_records(coco_root, caplog):
    with caplog.at_level(logging.INFO, logger="detgn.data"):
        records = DatasetCatalog.get("coco_2017_train")
    assert len(records) == 10 and all(r["file_name"].endswith(f"{r['image_id']:012d}.jpg") for r in records)
    kept = {a["id"] for r in records for a in r["annotations"]}
    assert 918 not in kept and 2206849 not in kept
    assert len(kept) == coco_root.num_annotations["train2017"] - 2
    lines = _warnings(caplog)
    assert len(lines) == 1, lines
    assert ("dropped 2 annotations (2 degenerate boxes (no area in the image): ids 918 (image 200365), "
            "2206849 (image 550395))") in lines[0]
    # Crowd regions stay (the mapper leaves them out of training targets) with their uncompressed RLE.
    crowd = [a for r in records for a in r["annotations"] if a["iscrowd"]]
    assert {a["id"] for a in crowd} <= set(coco_root.crowd_ids) and len(crowd) == 9
    assert all(isinstance(a["segmentation"]["counts"], list) for a in crowd)
    assert any(r["image_id"] == 60623 and r["annotations"] == [] for r in records)  # no annotation at all
    # Category ids 1..90 with gaps -> contiguous 0..79, names in id order.
    meta = MetadataCatalog.get("coco_2017_train")
    assert len(meta.thing_classes) == 80 and meta.thing_classes[0] == "person" and meta.thing_classes[-1] == "toothbrush"
    lut = meta.thing_dataset_id_to_contiguous_id
    assert lut[1] == 0 and lut[13] == 11 and lut[58] == 52 and lut[90] == 79 and 12 not in lut
    assert meta.thing_classes[lut[58]] == "hot dog"


def test_strict_mode_stops_at_the_first_real_record(coco_root):
    with pytest.raises(CocoFormatError) as e:
        load_coco_json(str(coco_root.train_json), str(coco_root.train_dir), on_bad="error")
    msg = str(e.value)
    assert "annotation id 918 (image id 200365)" in msg and "zero or negative width/height" in msg, msg
    assert "1 more problem(s)" in msg or "more problem(s)" in msg


def test_val_loads_strictly_and_image_info_is_named(coco_root):
    records = DatasetCatalog.get("coco_2017_val", on_bad="error")
    assert len(records) == 5 and [r for r in records if not r["annotations"]]
    name = "coco_2017_test_image_info_under_test"
    register_coco_instances(name, str(coco_root.test_info_json), str(coco_root.root / "coco" / "test2017"))
    try:
        with pytest.raises(CocoFormatError, match=r"image_info_test2017\.json has no 'annotations' key: it is an "
                                                  r"image-info file"):
            DatasetCatalog.get(name)
    finally:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


def test_mapper_decodes_real_polygons_and_leaves_crowds_out(coco_root):
    records = {r["image_id"]: r for r in DatasetCatalog.get("coco_2017_train")}
    record = records[200365]
    mapper = DatasetMapper(is_train=True, min_size_train=(480,), max_size_train=640, random_flip=0.0,
                           mask_format="bitmask")
    out = mapper(record, rng=np.random.default_rng(0))
    inst = out["instances"]
    objects = [a for a in record["annotations"] if not a["iscrowd"]]
    assert out["image"].shape == (3, 480, 640) and len(inst) == len(objects) >= 2
    h, w = record["height"], record["width"]
    for k, ann in enumerate(objects):  # no resize here: masks equal pycocotools' own decoding
        expected = mask_util.decode(mask_util.merge(mask_util.frPyObjects(ann["segmentation"], h, w))).astype(bool)
        iou = (inst.gt_masks.tensor[k].numpy() & expected).sum() / (inst.gt_masks.tensor[k].numpy() | expected).sum()
        assert iou > 0.97, (ann["id"], iou)
    assert inst.gt_classes.tolist() == [a["category_id"] for a in objects]  # contiguous already


def test_training_loader_on_the_builtin_name(coco_root):
    cfg = get_cfg()
    cfg.DATASETS.TRAIN = ("coco_2017_train",)
    cfg.INPUT.MIN_SIZE_TRAIN, cfg.INPUT.MAX_SIZE_TRAIN = (96,), 128
    cfg.DATALOADER.NUM_WORKERS = 0
    cfg.SEED = 0
    batches = []
    for batch in build_detection_train_loader(cfg):
        batches.append(batch)
        if len(batches) == 10:
            break
    ids = {b[0]["image_id"] for b in batches}
    assert 60623 not in ids and 309022 not in ids  # no annotation / crowd only: nothing to train on
    assert all(len(b[0]["instances"]) > 0 and b[0]["instances"].has("gt_masks") for b in batches)


def test_evaluator_scores_the_ground_truth_itself_as_perfect(coco_root, tmp_path):
    """COCOeval on the real GT format (crowd RLE, empty image, id gaps): GT as predictions -> AP 100."""
    records = DatasetCatalog.get("coco_2017_val")
    evaluator = COCOEvaluator("coco_2017_val", output_dir=str(tmp_path))
    evaluator.reset()
    for r in records:
        objects = [a for a in r["annotations"] if not a["iscrowd"]]
        h, w = r["height"], r["width"]
        boxes = torch.tensor([[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]]
                              for a in objects], dtype=torch.float32).reshape(-1, 4)
        masks = np.stack([mask_util.decode(mask_util.merge(mask_util.frPyObjects(a["segmentation"], h, w)))
                          for a in objects]) if objects else np.zeros((0, h, w), np.uint8)
        inst = Instances((h, w), pred_boxes=Boxes(boxes), scores=torch.ones(len(objects)),
                         pred_classes=torch.tensor([a["category_id"] for a in objects], dtype=torch.int64),
                         pred_masks=torch.from_numpy(masks.astype(bool)))
        evaluator.process([{"image_id": r["image_id"], "height": h, "width": w}], [{"instances": inst}])
    results = evaluator.evaluate()
    assert results["bbox"]["AP"] == pytest.approx(100.0, abs=0.01), results["bbox"]
    assert results["segm"]["AP"] == pytest.approx(100.0, abs=0.01), results["segm"]
    assert (tmp_path / "metrics.json").is_file()


def test_validator_on_the_real_format(coco_root):
    from detgn.cli import validate_dataset as tool

    out = io.StringIO()
    assert tool.validate(str(coco_root.train_json), str(coco_root.train_dir), out=out) == 1
    text = out.getvalue()
    assert "annotation id 918 (image id 200365): bbox [296.65, 388.33, 1.03, 0.0]" in text, text
    assert "annotation id 2206849 (image id 550395): bbox [9.98, 188.56, 5.54, 0.0]" in text, text
    assert "drops 2 annotation(s)" in text and "would stop loading" not in text, text
    out = io.StringIO()
    assert tool.validate(str(coco_root.val_json), str(coco_root.val_dir), out=out) == 0, out.getvalue()
    out = io.StringIO()
    assert tool.validate(str(coco_root.test_info_json), str(coco_root.root), check_files=False, out=out) == 1
    assert "no 'annotations' key: an image-info file" in out.getvalue()
