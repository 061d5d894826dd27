"""tools/validate_dataset.py: lists every problem with ids; exit codes 0 / 1 / 2."""
import io
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TOOL = REPO / "tools" / "validate_dataset.py"


def _run(tool, json_file, image_root, options=None):
    out = io.StringIO()
    code = tool.validate(json_file, image_root, out=out, **(options or {}))
    return code, out.getvalue()


def _ann(data, ann_id):
    return next(a for a in data["annotations"] if a["id"] == ann_id)


def test_clean_dataset_exits_zero(tool, tiny_coco):
    code, text = _run(tool, tiny_coco.json_file, tiny_coco.image_root)
    assert code == 0, text
    assert "SUMMARY: clean: 6 images, 8 annotations" in text
    assert "INFO: 1 image(s) without a non-crowd annotation" in text and "104" in text
    assert "PROBLEMS" not in text


def _broken(tiny_coco):
    data = tiny_coco.data
    _ann(data, 2)["bbox"] = [10, 10, 0, 5]
    _ann(data, 7)["bbox"] = [4, 4, 40, -1]
    _ann(data, 6)["segmentation"] = [[1, 2, 3, 4]]
    _ann(data, 8)["id"] = 5  # duplicate of annotation 5 (image 103)
    data["images"].append(dict(data["images"][2], file_name="dup.png"))
    data["images"][0]["height"] = 63  # size mismatch for image 101 (its boxes still fit)
    os.remove(os.path.join(tiny_coco.image_root, "000105.png"))
    with open(os.path.join(tiny_coco.image_root, "000102.png"), "wb") as f:
        f.write(b"corrupt")
    return tiny_coco.write(data, "broken.json")


@pytest.mark.parametrize("options", [{}, {"workers": 2}, {"quick": True}])
def test_every_problem_reported(tool, tiny_coco, options):
    path = _broken(tiny_coco)
    code, text = _run(tool, path, tiny_coco.image_root, options)
    assert code == 1, text
    expected = [
        "degenerate boxes (no area in the image) (2):",
        "annotation id 2 (image id 101)",
        "annotation id 7 (image id 106)",
        "segmentations without a polygon of >= 3 distinct, non-collinear points (1):",
        "annotation id 6 (image id 105)",
        "duplicate annotation ids (1):",
        "annotation id 5 (image id 106)",
        "duplicate image ids (1):",
        "missing image files (1):",
        "000105.png: file not found",
        "unreadable or corrupt image files (1):",
        "image id 102",
        "image files whose size differs from the JSON (1):",
        "96x64 (width x height) but the JSON says 96x63",
        "SUMMARY: 8 problem(s)",
        # What the default policy does with them: 3 dropped, 2 structural (duplicate ids) stop loading.
        "drop_degenerate drops 3 annotation(s) that describe no object and repairs 0",
        "2 record(s) would stop loading",
        "3 image file problem(s)",
    ]
    for words in expected:
        assert words in text, f"missing {words!r} in:\n{text}"


def test_unreadable_json_exits_two(tool, tiny_coco):
    path = tiny_coco.root / "bad.json"
    path.write_text("{nope")
    code, text = _run(tool, str(path), tiny_coco.image_root)
    assert code == 2 and "not valid JSON" in text and str(path) in text


def test_command_line_exit_codes(tool, tiny_coco, capsys):
    assert tool.main(["--json", tiny_coco.json_file, "--images", tiny_coco.image_root]) == 0
    path = _broken(tiny_coco)
    assert tool.main(["--json", path, "--images", tiny_coco.image_root]) == 1
    capsys.readouterr()
    # The script's own exit status (one subprocess: importing torch is slow).
    env = dict(os.environ, PYTHONPATH=str(REPO))
    bad = subprocess.run([sys.executable, str(TOOL), "--json", path, "--images", tiny_coco.image_root, "--no-images"],
                         capture_output=True, text=True, env=env, timeout=120)
    assert bad.returncode == 1 and "degenerate boxes (no area in the image) (2)" in bad.stdout, bad.stdout + bad.stderr
    assert "missing image files" not in bad.stdout  # --no-images


def test_image_info_file_and_real_coco_records_are_named(tool, tiny_coco):
    data = tiny_coco.data
    del data["annotations"]  # like image_info_test2017.json
    code, text = _run(tool, tiny_coco.write(data, "info.json"), tiny_coco.image_root, {"check_files": False})
    assert code == 1 and "no 'annotations' key: an image-info file" in text and "1 record(s) would stop loading" in text, text
    data = tiny_coco.data
    data["annotations"].append(
        {"segmentation": [[4.65, 38.33, 4.65, 38.33, 5.68, 38.33, 5.68, 38.33]], "area": 0.0, "iscrowd": 0,
         "image_id": 101, "bbox": [4.65, 38.33, 1.03, 0.0], "category_id": 3, "id": 918})
    code, text = _run(tool, tiny_coco.write(data, "zero.json"), tiny_coco.image_root)
    assert code == 1 and "annotation id 918 (image id 101): bbox [4.65, 38.33, 1.03, 0.0]" in text, text
    assert "drops 1 annotation(s)" in text and "would stop loading" not in text, text
