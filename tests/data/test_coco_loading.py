"""load_coco_json: record format, and every bad-input case in error and skip modes."""
import logging
import os

import pytest

from detgn.data import load_coco_json
from detgn.data.coco import CocoFormatError, Problem, scan_coco, summarize_problems


def _ann(data, ann_id):
    return next(a for a in data["annotations"] if a.get("id") == ann_id)


def test_records_format(tiny_coco):
    records = load_coco_json(tiny_coco.json_file, tiny_coco.image_root)
    assert [r["image_id"] for r in records] == [101, 102, 103, 104, 105, 106]
    r0 = records[0]
    assert set(r0) == {"file_name", "height", "width", "image_id", "annotations"}
    assert os.path.isabs(r0["file_name"]) and os.path.isfile(r0["file_name"])
    assert (r0["height"], r0["width"]) == (64, 96)
    a = r0["annotations"][0]
    assert a["id"] == 1 and a["bbox"] == [10.0, 12.0, 30.0, 20.0]
    assert a["category_id"] == 0  # dataset id 3 -> contiguous 0 (ids sorted: 3, 7, 12)
    assert a["iscrowd"] == 0 and isinstance(a["area"], float) and isinstance(a["segmentation"], list)
    # Images without annotations are kept; crowd annotations are kept (mapper drops them).
    assert records[3]["annotations"] == []
    crowd = [a for r in records for a in r["annotations"] if a["iscrowd"]]
    assert len(crowd) == 1 and isinstance(crowd[0]["segmentation"], dict)
    assert {a["category_id"] for r in records for a in r["annotations"]} == {0, 1, 2}


def test_malformed_json_names_file_and_parser_message(tiny_coco):
    path = tiny_coco.root / "broken.json"
    path.write_text('{"images": [ {"id": 1,, } ]')
    with pytest.raises(CocoFormatError) as e:
        load_coco_json(str(path), tiny_coco.image_root)
    assert str(path) in str(e.value) and "not valid JSON" in str(e.value) and "line 1" in str(e.value)


def test_missing_file_and_top_level_keys(tiny_coco):
    with pytest.raises(CocoFormatError, match="no such annotation file"):
        load_coco_json(str(tiny_coco.root / "nope.json"), tiny_coco.image_root)
    data = tiny_coco.data
    del data["categories"]
    path = tiny_coco.write(data)
    with pytest.raises(CocoFormatError, match="missing top-level key 'categories'"):
        load_coco_json(path, tiny_coco.image_root)


def _set(key, value):
    def mutate(ann):
        ann[key] = value
    return mutate


def _del(key):
    def mutate(ann):
        del ann[key]
    return mutate


# (annotation id to break, mutation, reason, words the message must contain)
BAD_CASES = [
    (2, _del("bbox"), "missing_key", "missing key(s) ['bbox']"),
    (6, _set("segmentation", [[1, 2, 3, 4]]), "polygon_too_short", "needs at least 3"),
    (6, _set("segmentation", [[1, 2, 3, 4, 5, 6, 7]]), "polygon_odd_length", "odd number of coordinates"),
    (6, _set("segmentation", []), "bad_segmentation", "empty list"),
    (2, _set("bbox", [10, 10, 0, 5]), "degenerate_box", "zero or negative"),
    (2, _set("bbox", [10, 10, 5, -3]), "degenerate_box", "zero or negative"),
    (2, _set("bbox", [10, 10, 5]), "bad_bbox", "4 finite numbers"),
    (2, _set("bbox", [80, 10, 20, 5]), "box_outside_image", "outside the 96x64"),
    (2, _set("bbox", [-3, 10, 20, 5]), "box_outside_image", "more than 1px outside"),
    (2, _set("category_id", 99), "unknown_category", "category_id 99"),
    (2, _set("image_id", 999), "missing_image", "image id 999 is not in 'images'"),
    (5, _set("segmentation", {"size": [10, 10], "counts": "abc"}), "bad_segmentation", "RLE size"),
    (2, _set("iscrowd", 3), "bad_field", "iscrowd"),
    (2, _set("category_id", "3"), "bad_field", "category_id must be integer"),
]


@pytest.mark.parametrize("ann_id,mutate,reason,words", BAD_CASES, ids=[c[2] + "-" + c[3][:12] for c in BAD_CASES])
def test_bad_annotation_error_and_skip(tiny_coco, caplog, ann_id, mutate, reason, words):
    data = tiny_coco.data
    ann = _ann(data, ann_id)
    image_id = ann["image_id"]
    mutate(ann)
    path = tiny_coco.write(data)
    with pytest.raises(CocoFormatError) as e:
        load_coco_json(path, tiny_coco.image_root)
    msg = str(e.value)
    assert path in msg, msg
    assert f"annotation id {ann_id}" in msg and f"image id {_ann(data, ann_id)['image_id']}" in msg, msg
    assert words in msg, msg
    assert "DATASETS.ON_BAD_ANNOTATION" in msg and "validate_dataset.py" in msg, msg

    scan = scan_coco(data, path)
    assert [p.reason for p in scan.problems] == [reason]
    assert scan.problems[0].ann_id == ann_id

    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="detgn.data.coco"):
        records = load_coco_json(path, tiny_coco.image_root, on_bad="skip")
    kept = {a["id"] for r in records for a in r["annotations"]}
    assert ann_id not in kept and len(kept) == 7
    assert len(records) == 6 and image_id in {r["image_id"] for r in records} | {999}
    lines = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    assert len(lines) == 1 and "skipped 1 annotation: 1 " in lines[0], lines


def test_skip_summary_counts_by_reason(tiny_coco, caplog):
    data = tiny_coco.data
    _ann(data, 2)["bbox"] = [10, 10, 0, 5]
    _ann(data, 7)["bbox"] = [4, 4, 40, -1]
    _ann(data, 6)["segmentation"] = [[1, 2, 3, 4]]
    path = tiny_coco.write(data)
    with caplog.at_level(logging.WARNING, logger="detgn.data.coco"):
        records = load_coco_json(path, tiny_coco.image_root, on_bad="skip")
    lines = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    assert len(lines) == 1
    assert "skipped 3 annotations: 2 degenerate boxes, 1 polygon with < 3 points" in lines[0]
    assert sum(len(r["annotations"]) for r in records) == 5
    # The error mode reports the first and how many more there are.
    with pytest.raises(CocoFormatError, match=r"2 more problem\(s\)"):
        load_coco_json(path, tiny_coco.image_root)


def test_overshoot_of_at_most_one_pixel_is_clipped_silently(tiny_coco, caplog):
    data = tiny_coco.data  # image 101 is 96 wide, 64 high
    _ann(data, 1)["bbox"] = [-0.8, 12, 30.8, 20]
    _ann(data, 2)["bbox"] = [60, 21, 37, 43.9]  # x2 = 97 (W + 1), y2 = 64.9
    path = tiny_coco.write(data)
    with caplog.at_level(logging.WARNING):
        records = load_coco_json(path, tiny_coco.image_root)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    boxes = [a["bbox"] for a in records[0]["annotations"]]
    assert boxes[0] == pytest.approx([0.0, 12.0, 30.0, 20.0])
    assert boxes[1] == pytest.approx([60.0, 21.0, 36.0, 43.0])


def test_duplicate_annotation_ids(tiny_coco, caplog):
    data = tiny_coco.data
    _ann(data, 8)["id"] = 7
    path = tiny_coco.write(data)
    with pytest.raises(CocoFormatError) as e:
        load_coco_json(path, tiny_coco.image_root)
    assert "annotation id 7 is used more than once" in str(e.value) and "image id 106" in str(e.value)
    with caplog.at_level(logging.WARNING, logger="detgn.data.coco"):
        records = load_coco_json(path, tiny_coco.image_root, on_bad="skip")
    assert [a["id"] for a in records[5]["annotations"]] == [7]
    assert any("1 duplicate annotation id" in r.getMessage() for r in caplog.records)


def test_duplicate_image_ids_and_bad_image_records(tiny_coco, caplog):
    data = tiny_coco.data
    data["images"].append(dict(data["images"][0], file_name="other.png"))
    data["images"][4]["height"] = 0  # image 105, which has annotation 6
    path = tiny_coco.write(data)
    with pytest.raises(CocoFormatError) as e:
        load_coco_json(path, tiny_coco.image_root)
    assert path in str(e.value) and "image id 105" in str(e.value) and "positive integers" in str(e.value)
    scan = scan_coco(data, path)
    assert sorted(p.reason for p in scan.problems) == ["bad_image_record", "duplicate_image_id", "image_dropped"]
    with caplog.at_level(logging.WARNING, logger="detgn.data.coco"):
        records = load_coco_json(path, tiny_coco.image_root, on_bad="skip")
    assert [r["image_id"] for r in records] == [101, 102, 103, 104, 106]
    assert records[0]["file_name"].endswith("000101.png")  # the first entry of id 101 wins
    line = next(r.getMessage() for r in caplog.records if "skipped" in r.getMessage())
    assert "1 annotation: 1 annotation of an invalid image record" in line
    assert "2 image records" in line and "1 duplicate image id" in line and "1 invalid image record" in line


def test_category_errors_are_structural(tiny_coco):
    data = tiny_coco.data
    data["categories"].append({"id": 3, "name": "again"})
    path = tiny_coco.write(data)
    for on_bad in ("error", "skip"):
        with pytest.raises(CocoFormatError, match="category id 3 appears twice"):
            load_coco_json(path, tiny_coco.image_root, on_bad=on_bad)


def test_on_bad_value_checked(tiny_coco):
    with pytest.raises(ValueError, match="on_bad"):
        load_coco_json(tiny_coco.json_file, tiny_coco.image_root, on_bad="ignore")


def test_summarize_counts_each_annotation_once():
    problems = [
        Problem("polygon_too_short", "m", 1, 10, index=0),
        Problem("polygon_odd_length", "m", 1, 10, index=0),  # same annotation: counted under its first reason
        Problem("degenerate_box", "m", 1, None, index=1),
        Problem("missing_key", "m", 1, None, index=2),  # no id, but a different record
    ]
    assert summarize_problems(problems) == (
        "3 annotations: 1 polygon with < 3 points, 1 degenerate box, 1 annotation with missing keys"
    )
    assert summarize_problems([]) == "nothing"


def test_dataset_name_records_metadata(tiny_coco):
    from detgn.data import MetadataCatalog

    name = "tiny_direct_load_meta"
    MetadataCatalog.remove(name)
    load_coco_json(tiny_coco.json_file, tiny_coco.image_root, name)
    meta = MetadataCatalog.get(name)
    assert meta.thing_classes == ["square", "triangle", "blob"]
    assert meta.contiguous_id_to_dataset_id == {0: 3, 1: 7, 2: 12}
    assert meta.evaluator_type == "coco"
    MetadataCatalog.remove(name)


def test_annotations_without_ids_are_counted_separately(tiny_coco, caplog):
    data = tiny_coco.data
    del _ann(data, 7)["id"]
    del _ann(data, 8)["id"]  # same image (106)
    path = tiny_coco.write(data)
    with pytest.raises(CocoFormatError) as e:
        load_coco_json(path, tiny_coco.image_root)
    assert "annotations[6] (no id) (image id 106): missing key(s) ['id']" in str(e.value)
    with caplog.at_level(logging.WARNING, logger="detgn.data.coco"):
        load_coco_json(path, tiny_coco.image_root, on_bad="skip")
    assert any("skipped 2 annotations: 2 annotations with missing keys" in r.getMessage() for r in caplog.records)
