"""load_coco_json: record format, and every bad-input case in error and skip modes."""
import logging
import os

import pytest

from detgn.data import load_coco_json
from detgn.data.datasets.coco import REASONS, CocoFormatError, Problem, scan_coco, summarize_problems


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


def _broken_copy(tiny_coco, ann_id, mutate):
    """The tiny set with annotation ``ann_id`` mutated, written: (data, path, that annotation's image id)."""
    data = tiny_coco.data
    ann = _ann(data, ann_id)
    image_id = ann["image_id"]
    mutate(ann)
    return data, tiny_coco.write(data), image_id


# Structural problems: the default stops, naming the record; "skip" drops them.
# (annotation id to break, mutation, reason, words the message must contain)
STRUCTURAL_CASES = [
    (2, _del("bbox"), "missing_key", "missing key(s) ['bbox']"),
    (6, _set("segmentation", [[1, 2, 3, 4, 5, 6, 7]]), "polygon_odd_length", "odd number of coordinates"),
    (6, _set("segmentation", [[1, 2, "3", 4, 5, 6]]), "bad_segmentation", "finite numbers"),
    (6, _set("segmentation", [[1, 2, 3, 4, 5, float("nan")]]), "bad_segmentation", "finite numbers"),
    (6, _set("segmentation", "polygon"), "bad_segmentation", "polygon list or an RLE dict"),
    (2, _set("bbox", [10, 10, 5]), "bad_bbox", "4 finite numbers"),
    (2, _set("category_id", 99), "unknown_category", "category_id 99"),
    (2, _set("image_id", 999), "missing_image", "image id 999 is not in 'images'"),
    (5, _set("segmentation", {"size": [10, 10], "counts": "abc"}), "bad_segmentation", "RLE size"),
    (2, _set("iscrowd", 3), "bad_field", "iscrowd"),
    (2, _set("category_id", "3"), "bad_field", "category_id must be integer"),
]


@pytest.mark.parametrize("ann_id,mutate,reason,words", STRUCTURAL_CASES,
                         ids=[c[2] + "-" + c[3][:12] for c in STRUCTURAL_CASES])
def test_structural_problem_stops_the_default_and_skip_drops_it(tiny_coco, caplog, ann_id, mutate, reason, words):
    data, path, image_id = _broken_copy(tiny_coco, ann_id, mutate)
    for on_bad in ("drop_degenerate", "error"):
        with pytest.raises(CocoFormatError) as e:
            load_coco_json(path, tiny_coco.image_root, on_bad=on_bad)
        msg = str(e.value)
        assert path in msg, msg
        assert f"annotation id {ann_id}" in msg and f"image id {_ann(data, ann_id)['image_id']}" in msg, msg
        assert words in msg, msg
        assert "DATASETS.ON_BAD_ANNOTATION" in msg and "validate_dataset.py" in msg, msg

    scan = scan_coco(data, path)
    assert [p.reason for p in scan.problems] == [reason]
    assert scan.problems[0].ann_id == ann_id and scan.problems[0].action == "error"

    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="detgn.data.datasets.coco"):
        records = load_coco_json(path, tiny_coco.image_root, on_bad="skip")
    kept = {a["id"] for r in records for a in r["annotations"]}
    assert ann_id not in kept and len(kept) == 7
    assert len(records) == 6 and image_id in {r["image_id"] for r in records} | {999}
    lines = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    assert len(lines) == 1 and "skipped 1 annotation (1 " in lines[0] and f"id {ann_id} (image" in lines[0], lines


# Annotations that describe no object: the default drops them and names them; "error" stops.
DEGENERATE_CASES = [
    (2, _set("bbox", [10, 10, 0, 5]), "degenerate_box", "zero or negative"),
    (2, _set("bbox", [10, 10, 5, -3]), "degenerate_box", "zero or negative"),
    (2, _set("bbox", [100, 10, 20, 5]), "degenerate_box", "no area inside the 96x64"),
    (6, _set("segmentation", [[1, 2, 3, 4]]), "no_valid_polygon", "needs at least 3"),
    (6, _set("segmentation", [[5, 5, 5, 5, 9, 9, 9, 9]]), "no_valid_polygon", "fewer than 3 distinct points"),
    (6, _set("segmentation", [[5, 5, 7, 7, 9, 9, 6, 6]]), "no_valid_polygon", "all on one line"),
    (6, _set("segmentation", [[1, 2, 3, 4], [5, 5, 5, 5, 5, 5]]), "no_valid_polygon", "polygon 1"),
]


@pytest.mark.parametrize("ann_id,mutate,reason,words", DEGENERATE_CASES,
                         ids=[c[2] + "-" + c[3][:12] for c in DEGENERATE_CASES])
def test_degenerate_annotation_is_dropped_and_named_by_default(tiny_coco, caplog, ann_id, mutate, reason, words):
    data, path, image_id = _broken_copy(tiny_coco, ann_id, mutate)
    with caplog.at_level(logging.WARNING, logger="detgn.data.datasets.coco"):
        records = load_coco_json(path, tiny_coco.image_root)
    kept = {a["id"] for r in records for a in r["annotations"]}
    assert ann_id not in kept and len(kept) == 7 and len(records) == 6
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(lines) == 1, lines
    assert f"dropped 1 annotation (1 {REASONS[reason].singular}: id {ann_id} (image {image_id}))" in lines[0], lines
    assert path in lines[0] and "drop_degenerate" in lines[0]

    scan = scan_coco(data, path)
    assert [p.reason for p in scan.problems] == [reason] and scan.problems[0].action == "drop"
    assert words in scan.problems[0].message
    with pytest.raises(CocoFormatError) as e:
        load_coco_json(path, tiny_coco.image_root, on_bad="error")
    assert f"annotation id {ann_id}" in str(e.value) and words in str(e.value)


def test_repairs_are_applied_and_named(tiny_coco, caplog):
    data = tiny_coco.data  # image 102 is 64 wide and 96 high; annotation 3 has two polygons
    _ann(data, 2)["bbox"] = [-3, 10, 20, 5]  # image 101: 3 px left of the image
    _ann(data, 3)["segmentation"].append([1, 1, 1, 1, 2, 2])  # a third, degenerate part
    path = tiny_coco.write(data)
    with caplog.at_level(logging.WARNING, logger="detgn.data.datasets.coco"):
        records = load_coco_json(path, tiny_coco.image_root)
    anns = {a["id"]: a for r in records for a in r["annotations"]}
    assert len(anns) == 8
    assert anns[2]["bbox"] == pytest.approx([0.0, 10.0, 17.0, 5.0])
    assert anns[3]["segmentation"] == tiny_coco.data["annotations"][2]["segmentation"]  # the two good parts
    line = next(r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING)
    assert "repaired 2 annotations (" in line and "1 box clipped to its image: id 2 (image 101)" in line, line
    assert "1 degenerate polygon part removed: id 3 (image 102)" in line, line
    scan = scan_coco(data, path)
    assert sorted(p.reason for p in scan.problems) == ["box_outside_image", "degenerate_polygon"]
    assert all(p.action == "repair" for p in scan.problems)
    with pytest.raises(CocoFormatError, match="more than 1px outside"):
        load_coco_json(path, tiny_coco.image_root, on_bad="error")


def test_real_coco_2017_zero_height_records_verbatim(tiny_coco, caplog):
    """The two records of instances_train2017.json that stopped the paper's configs."""
    data = tiny_coco.data
    data["images"].append({"id": 200365, "file_name": "000000200365.jpg", "height": 480, "width": 640})
    data["images"].append({"id": 550395, "file_name": "000000550395.jpg", "height": 480, "width": 640})
    data["categories"] += [{"id": 1, "name": "person"}, {"id": 58, "name": "hot dog"}]
    data["annotations"] += [
        {"segmentation": [[296.65, 388.33, 296.65, 388.33, 297.68, 388.33, 297.68, 388.33]], "area": 0.0,
         "iscrowd": 0, "image_id": 200365, "bbox": [296.65, 388.33, 1.03, 0.0], "category_id": 58, "id": 918},
        {"segmentation": [[9.98, 188.56, 15.52, 188.56, 15.52, 188.56, 11.09, 188.56]], "area": 0.0,
         "iscrowd": 0, "image_id": 550395, "bbox": [9.98, 188.56, 5.54, 0.0], "category_id": 1, "id": 2206849},
    ]
    path = tiny_coco.write(data)
    with caplog.at_level(logging.WARNING, logger="detgn.data.datasets.coco"):
        records = load_coco_json(path, tiny_coco.image_root)
    assert len(records) == 8 and sum(len(r["annotations"]) for r in records) == 8
    line = next(r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING)
    assert "dropped 2 annotations (2 degenerate boxes (no area in the image): ids 918 (image 200365), " \
           "2206849 (image 550395))" in line, line


def test_box_only_annotations_with_empty_segmentation(tiny_coco):
    """Box-only exports write "segmentation": []: kept as an annotation without a mask."""
    data = tiny_coco.data
    _ann(data, 2)["segmentation"] = []
    path = tiny_coco.write(data)
    records = load_coco_json(path, tiny_coco.image_root, on_bad="error")
    ann = next(a for r in records for a in r["annotations"] if a["id"] == 2)
    assert "segmentation" not in ann and ann["bbox"] == _ann(data, 2)["bbox"]


def test_skip_summary_counts_by_reason(tiny_coco, caplog):
    data = tiny_coco.data
    _ann(data, 2)["bbox"] = [10, 10, 0, 5]
    _ann(data, 7)["bbox"] = [4, 4, 40, -1]
    _ann(data, 6)["segmentation"] = [[1, 2, 3, 4]]
    _ann(data, 8)["category_id"] = 1000
    path = tiny_coco.write(data)
    with caplog.at_level(logging.WARNING, logger="detgn.data.datasets.coco"):
        records = load_coco_json(path, tiny_coco.image_root, on_bad="skip")
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(lines) == 1
    assert "skipped 1 annotation (1 unknown category_id: id 8 (image 106)); dropped 3 annotations (" \
           "2 degenerate boxes (no area in the image): ids 2 (image 101), 7 (image 106); " in lines[0], lines
    assert sum(len(r["annotations"]) for r in records) == 4
    # The error mode reports the first and how many more there are.
    with pytest.raises(CocoFormatError, match=r"3 more problem\(s\)"):
        load_coco_json(path, tiny_coco.image_root, on_bad="error")


def test_summary_names_at_most_ten_ids_per_reason():
    problems = [Problem("degenerate_box", "m", 1, 100 + k, index=k) for k in range(13)]
    line = summarize_problems(problems)
    assert line.startswith("dropped 13 annotations (13 degenerate boxes (no area in the image): ids 100 (image 1)")
    assert "109 (image 1), ... and 3 more)" in line and "110 (image" not in line


def test_files_without_annotations_are_named(tiny_coco):
    data = tiny_coco.data
    del data["annotations"]  # like image_info_test2017.json
    path = tiny_coco.write(data, "image_info_test.json")
    for on_bad in ("drop_degenerate", "error", "skip"):
        with pytest.raises(CocoFormatError, match="has no 'annotations' key: it is an image-info file"):
            load_coco_json(path, tiny_coco.image_root, on_bad=on_bad)
    data["annotations"] = []
    path = tiny_coco.write(data, "empty.json")
    with pytest.raises(CocoFormatError, match="empty 'annotations' list"):
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
    with caplog.at_level(logging.WARNING, logger="detgn.data.datasets.coco"):
        records = load_coco_json(path, tiny_coco.image_root, on_bad="skip")
    assert [a["id"] for a in records[5]["annotations"]] == [7]
    assert any("skipped 1 annotation (1 duplicate annotation id: id 7 (image 106))" in r.getMessage()
               for r in caplog.records)


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
    with caplog.at_level(logging.WARNING, logger="detgn.data.datasets.coco"):
        records = load_coco_json(path, tiny_coco.image_root, on_bad="skip")
    assert [r["image_id"] for r in records] == [101, 102, 103, 104, 106]
    assert records[0]["file_name"].endswith("000101.png")  # the first entry of id 101 wins
    line = next(r.getMessage() for r in caplog.records if "skipped" in r.getMessage())
    assert "skipped 1 annotation (1 annotation of an invalid image record: id 6 (image 105))" in line, line
    assert "skipped 2 image records (" in line and "1 duplicate image id: images[6] (id 101)" in line, line
    assert "1 invalid image record: images[4] (id 105)" in line, line


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


def test_summarize_counts_each_record_once():
    problems = [
        Problem("no_valid_polygon", "m", 1, 10, index=0),
        Problem("polygon_odd_length", "m", 1, 10, index=0),  # same annotation: structural wins
        Problem("degenerate_box", "m", 1, 11, index=1),
        Problem("box_outside_image", "m", 1, 11, index=1),  # dropped, not also repaired
        Problem("missing_key", "m", 1, None, index=2),  # no id, but a different record
        Problem("box_outside_image", "m", 2, 12, index=3),
    ]
    assert summarize_problems(problems) == (
        "skipped 2 annotations (1 polygon with an odd number of coordinates: id 10 (image 1); "
        "1 annotation with missing keys: annotations[2] (image 1)); "
        "dropped 1 annotation (1 degenerate box (no area in the image): id 11 (image 1)); "
        "repaired 1 annotation (1 box clipped to its image: id 12 (image 2))"
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
    with caplog.at_level(logging.WARNING, logger="detgn.data.datasets.coco"):
        load_coco_json(path, tiny_coco.image_root, on_bad="skip")
    assert any("skipped 2 annotations (2 annotations with missing keys: annotations[6] (image 106), "
               "annotations[7] (image 106))" in r.getMessage() for r in caplog.records)
