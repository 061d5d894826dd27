"""The validator and the loader speak of the same problems: every reason the loader drops, repairs
or stops on (``detgn.data.datasets.coco_problems.REASONS``) is reported by ``tools/validate_dataset.py`` under
its name with the record's id, and box-only annotations (trained without a mask) are listed.

``TRIGGERS`` holds one broken record per reason; a reason added to REASONS without a trigger
here fails ``test_every_reason_has_a_trigger``, so a new problem cannot be added to one side only.
"""
import io
import logging

import pytest

from detgn.data.datasets.coco import CocoFormatError, load_coco_json
from detgn.data.datasets.coco_problems import REASONS

VALID_SQUARE = [10.0, 12.0, 40.0, 12.0, 40.0, 32.0, 10.0, 32.0]


def _ann(data, ann_id=1):
    return next(a for a in data["annotations"] if a["id"] == ann_id)


def _set(ann_id=1, **fields):
    def apply(data):
        _ann(data, ann_id).update(fields)
    return apply


def _pop(key, ann_id=1):
    def apply(data):
        _ann(data, ann_id).pop(key)
    return apply


def _image(index, **fields):
    def apply(data):
        data["images"][index].update(fields)
    return apply


def _duplicate_image(data):
    data["images"].append(dict(data["images"][2], file_name="dup.png"))


def _duplicate_annotation_id(data):
    _ann(data, 8)["id"] = 5


def _bad_image_record(data):
    data["images"][0].pop("file_name")  # image 101: annotations 1 and 2 are then image_dropped


# reason -> (edit of the tiny COCO set, an id the report names)
TRIGGERS = {
    "missing_key": (_pop("bbox"), "annotation id 1"),
    "bad_field": (_set(iscrowd=5), "annotation id 1"),
    "duplicate_annotation_id": (_duplicate_annotation_id, "5"),
    "missing_image": (_set(image_id=999), "999"),
    "image_dropped": (_bad_image_record, "annotation id 1"),
    "unknown_category": (_set(category_id=99), "99"),
    "bad_bbox": (_set(bbox="x"), "annotation id 1"),
    "polygon_odd_length": (_set(segmentation=[[10, 12, 40, 12, 40]]), "annotation id 1"),
    "bad_segmentation": (_set(segmentation=5), "annotation id 1"),
    "degenerate_box": (_set(bbox=[10, 10, 0, 5]), "annotation id 1"),
    "no_valid_polygon": (_set(segmentation=[[0, 0, 1, 1, 2, 2]]), "annotation id 1"),
    "box_outside_image": (_set(bbox=[50.0, 20.0, 80.0, 10.0]), "annotation id 1"),
    "degenerate_polygon": (_set(segmentation=[VALID_SQUARE, [0, 0, 1, 1, 2, 2]]), "annotation id 1"),
    "bad_image_record": (_bad_image_record, "images[0]"),
    "duplicate_image_id": (_duplicate_image, "103"),
}


def _validate(tool, path, root):
    out = io.StringIO()
    return tool.validate(path, root, out=out, check_files=False), out.getvalue()


def test_every_reason_has_a_trigger():
    assert set(TRIGGERS) == set(REASONS)


@pytest.mark.parametrize("reason", sorted(REASONS))
def test_loader_reason_is_reported_by_the_validator(reason, tool, tiny_coco, caplog):
    edit, ref = TRIGGERS[reason]
    data = tiny_coco.data
    edit(data)
    path = tiny_coco.write(data, f"{reason}.json")
    code, text = _validate(tool, path, tiny_coco.image_root)
    assert code == 1, text
    heading = f"  {REASONS[reason].plural} ("
    assert heading in text, text
    section = text[text.index(heading):].splitlines()
    assert any(ref in line for line in section[1:4]), text
    # The loader with the default policy does with it what the validator says.
    action = REASONS[reason].action
    if action == "error":
        with pytest.raises(CocoFormatError):
            load_coco_json(path, tiny_coco.image_root)
        assert "would stop loading" in text
    else:
        with caplog.at_level(logging.WARNING, logger="detgn"):
            load_coco_json(path, tiny_coco.image_root)
        label = REASONS[reason]
        assert label.singular in caplog.text or label.plural in caplog.text
        assert ("drops" if action == "drop" else "repairs") in text


def test_box_only_annotations_are_listed_with_what_training_does(tool, tiny_coco):
    data = tiny_coco.data
    _ann(data, 1)["segmentation"] = []
    _ann(data, 6)["segmentation"] = []
    path = tiny_coco.write(data, "box_only.json")
    code, text = _validate(tool, path, tiny_coco.image_root)
    assert code == 0, text
    assert "INFO: 2 box-only annotation(s)" in text and "1 (image 101)" in text and "6 (image 105)" in text
    assert "left out of the mask loss" in text
    assert "SUMMARY: clean: 6 images, 8 annotations (2 of them box-only, without a mask)" in text
    # The loader keeps them, without a segmentation, for the mapper's empty mask + gt_has_mask False.
    records = {r["image_id"]: r for r in load_coco_json(path, tiny_coco.image_root)}
    assert [("segmentation" in a) for a in records[101]["annotations"]] == [False, True]
