"""Synthetic COCO dataset: determinism, COCO validity, perfect-prediction AP,
annotation/pixel agreement, coverage of sizes, parts, crowd and empty images, CLI."""
import contextlib
import importlib.util
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pycocotools.mask as mask_util
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from detgn.data.datasets.synthetic import (
    CATEGORIES,
    coco_statistics,
    generate_synthetic_coco,
    mask_to_polygons,
    render_synthetic_image,
)

REPO = Path(__file__).resolve().parents[2]
# Seed 3 at 12 train / 6 val images happens to contain a crowd region and an empty
# image (checked below, so a generator change that loses them fails loudly).
SEED, N_TRAIN, N_VAL = 3, 12, 6


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("synthetic")
    summary = generate_synthetic_coco(str(out), num_train=N_TRAIN, num_val=N_VAL, seed=SEED, log=None)
    return out, summary


def load(out: Path, split: str) -> dict:
    return json.loads((out / "annotations" / f"instances_{split}.json").read_text())


def all_annotations(out: Path):
    for split in ("train", "val"):
        coco = load(out, split)
        images = {im["id"]: im for im in coco["images"]}
        for a in coco["annotations"]:
            yield split, images[a["image_id"]], a


def quiet(fn, *args):
    with contextlib.redirect_stdout(io.StringIO()):
        return fn(*args)


def test_layout_and_records(dataset):
    out, summary = dataset
    assert set(summary) == {"train", "val"}
    for split, n in (("train", N_TRAIN), ("val", N_VAL)):
        coco = load(out, split)
        assert {"info", "licenses", "images", "annotations", "categories"} <= set(coco)
        assert len(coco["images"]) == n == summary[split]["images"]
        assert sorted(os.listdir(out / split)) == sorted(im["file_name"] for im in coco["images"])
        for im in coco["images"]:
            img = cv2.imread(str(out / split / im["file_name"]))
            assert img.shape == (im["height"], im["width"], 3)
            assert 320 <= max(img.shape[:2]) <= 512
        ann_ids = [a["id"] for a in coco["annotations"]]
        assert len(set(ann_ids)) == len(ann_ids) and min(ann_ids) >= 1
    train_ids = {im["id"] for im in load(out, "train")["images"]}
    assert not train_ids & {im["id"] for im in load(out, "val")["images"]}


def test_deterministic_across_workers_and_seed_sensitive(dataset, tmp_path):
    out, _ = dataset
    again = tmp_path / "again"
    generate_synthetic_coco(str(again), num_train=N_TRAIN, num_val=N_VAL, seed=SEED, workers=2, log=None)
    for split in ("train", "val"):
        name = f"annotations/instances_{split}.json"
        assert (out / name).read_bytes() == (again / name).read_bytes()
        for f in sorted(os.listdir(out / split)):
            assert (out / split / f).read_bytes() == (again / split / f).read_bytes(), f
    other = tmp_path / "other"
    generate_synthetic_coco(str(other), num_train=3, num_val=0, seed=SEED + 2, log=None)
    a, b = load(out, "train"), load(other, "train")
    assert a["annotations"][:5] != b["annotations"][:5]
    first = a["images"][0]["file_name"]
    assert (out / "train" / first).read_bytes() != (other / "train" / first).read_bytes()
    r1, r2 = render_synthetic_image(SEED, "train", 0), render_synthetic_image(SEED, "train", 0)
    assert np.array_equal(r1.image, r2.image) and r1.annotations == r2.annotations


def test_categories_non_contiguous():
    ids = [c["id"] for c in CATEGORIES]
    assert 6 <= len(ids) <= 8 and len(set(c["name"] for c in CATEGORIES)) == len(ids)
    assert min(ids) >= 1 and ids != list(range(1, len(ids) + 1)) and ids == sorted(set(ids))


def test_annotation_geometry(dataset):
    out, _ = dataset
    n = 0
    for split, im, a in all_annotations(out):
        h, w = im["height"], im["width"]
        x, y, bw, bh = a["bbox"]
        assert bw > 0 and bh > 0 and x >= 0 and y >= 0 and x + bw <= w and y + bh <= h, a["id"]
        if a["iscrowd"]:
            seg = a["segmentation"]
            assert isinstance(seg["counts"], str) and seg["size"] == [h, w]
            assert a["area"] == float(mask_util.area(seg))
            assert np.allclose(a["bbox"], mask_util.toBbox(seg))
            continue
        n += 1
        xy = []
        for p in a["segmentation"]:
            assert len(p) >= 6 and len(p) % 2 == 0, a["id"]
            xy.append(np.reshape(p, (-1, 2)))
        xy = np.concatenate(xy)
        assert np.allclose([*xy.min(0), *(xy.max(0) - xy.min(0))], a["bbox"])  # tight box of the polygons
        rle = mask_util.merge(mask_util.frPyObjects(a["segmentation"], h, w))
        assert a["area"] == float(mask_util.area(rle)) >= 20
    assert n > 30


def test_coverage_sizes_parts_crowd_empty(dataset):
    out, summary = dataset
    anns = [a for _, _, a in all_annotations(out)]
    areas = np.array([a["area"] for a in anns if not a["iscrowd"]])
    assert (areas < 32 ** 2).any() and ((areas >= 32 ** 2) & (areas <= 96 ** 2)).any() and (areas > 96 ** 2).any()
    assert any(not a["iscrowd"] and len(a["segmentation"]) > 1 for a in anns)
    assert any(a["iscrowd"] and isinstance(a["segmentation"], dict) for a in anns)
    assert sum(s["empty_image_fraction"] * s["images"] for s in summary.values()) >= 1
    cat_ids = {c["id"] for c in CATEGORIES}
    assert {a["category_id"] for a in anns} <= cat_ids and len({a["category_id"] for a in anns}) >= 6
    stats = coco_statistics(load(out, "train"))
    assert stats["instances"] == sum(1 for a in load(out, "train")["annotations"] if not a["iscrowd"])
    assert abs(stats["small_fraction"] + stats["medium_fraction"] + stats["large_fraction"] - 1) < 1e-9


@pytest.mark.parametrize("split", ["train", "val"])
def test_pycocotools_perfect_predictions_give_ap_one(dataset, split):
    out, _ = dataset
    gt = quiet(COCO, str(out / "annotations" / f"instances_{split}.json"))
    dets_box, dets_seg = [], []
    for a in gt.loadAnns(gt.getAnnIds()):
        m = gt.annToMask(a)
        assert m.shape == (gt.imgs[a["image_id"]]["height"], gt.imgs[a["image_id"]]["width"]) and m.any()
        if a["iscrowd"]:
            continue  # crowd regions are never detections
        rle = gt.annToRLE(a)
        rle["counts"] = rle["counts"].decode("ascii") if isinstance(rle["counts"], bytes) else rle["counts"]
        dets_box.append({"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 1.0})
        dets_seg.append({"image_id": a["image_id"], "category_id": a["category_id"], "segmentation": rle,
                         "score": 1.0})
    for iou_type, dets in (("bbox", dets_box), ("segm", dets_seg)):
        ev = COCOeval(gt, quiet(gt.loadRes, dets), iou_type)
        quiet(ev.evaluate)
        quiet(ev.accumulate)
        quiet(ev.summarize)
        assert ev.stats[0] == pytest.approx(1.0), (iou_type, ev.stats)
        assert ev.stats[1] == pytest.approx(1.0) and ev.stats[2] == pytest.approx(1.0)


def test_polygons_agree_with_rendered_pixels(dataset):
    out, _ = dataset
    worst = 1.0
    for split, n in (("train", N_TRAIN), ("val", N_VAL)):
        coco = load(out, split)
        for index, im in enumerate(coco["images"]):
            r = render_synthetic_image(SEED, split, index)
            written = [{k: v for k, v in a.items() if k not in ("id", "image_id")}
                       for a in coco["annotations"] if a["image_id"] == im["id"]]
            assert written == r.annotations  # the JSON holds exactly what was rendered
            ok, jpg = cv2.imencode(".jpg", r.image, [cv2.IMWRITE_JPEG_QUALITY, 90])
            assert ok and jpg.tobytes() == (out / split / im["file_name"]).read_bytes()  # same pixels
            for a, vis in zip(r.annotations, r.visible_masks):
                h, w = vis.shape
                if a["iscrowd"]:
                    assert np.array_equal(mask_util.decode(a["segmentation"]).astype(bool), vis)
                    continue
                raster = mask_util.decode(mask_util.merge(mask_util.frPyObjects(a["segmentation"], h, w))).astype(bool)
                iou = (raster & vis).sum() / (raster | vis).sum()
                worst = min(worst, iou)
                assert iou >= 0.85, (split, im["file_name"], a["category_id"], iou)
    assert worst < 1.0  # the check compared real, imperfect tracings


def test_mask_to_polygons_exact_on_simple_masks():
    m = np.zeros((20, 30), bool)
    m[2:8, 3:10] = True  # a rectangle of 6 x 7 pixels
    m[12:18, 20:26] = True  # a second, disjoint part
    polys = mask_to_polygons(m, offset=(100, 50))
    assert len(polys) == 2
    for p in polys:
        assert len(p) >= 6
    raster = mask_util.decode(mask_util.merge(mask_util.frPyObjects(
        [np.array(p) - np.tile([100, 50], len(p) // 2) for p in polys], 20, 30))).astype(bool)
    assert np.array_equal(raster, m)
    xy = np.concatenate([np.reshape(p, (-1, 2)) for p in polys])
    assert np.allclose(xy.min(0), [103.125, 52.125]) and np.allclose(xy.max(0), [125.875, 67.875])
    assert mask_to_polygons(np.zeros((5, 5), bool)) == []


def test_bad_arguments_are_named(tmp_path):
    with pytest.raises(ValueError, match="num_train"):
        generate_synthetic_coco(str(tmp_path), num_train=-1, num_val=0, seed=0, log=None)
    with pytest.raises(ValueError, match="min_side"):
        generate_synthetic_coco(str(tmp_path), num_train=1, num_val=0, seed=0, min_side=600, max_side=500, log=None)
    with pytest.raises(ValueError, match="seed"):
        generate_synthetic_coco(str(tmp_path), num_train=1, num_val=0, seed=-3, log=None)


def load_cli():
    spec = importlib.util.spec_from_file_location("prepare_synthetic", REPO / "datasets" / "prepare_synthetic.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cli(tmp_path, capsys):
    args = ["--out", str(tmp_path / "cli"), "--train", "3", "--val", "2", "--seed", "7",
            "--min-side", "128", "--max-side", "160"]
    # One real subprocess shows the script runs from a checkout; it is slow only
    # because detgn.data imports torch, so the other cases call main() in-process.
    res = subprocess.run([sys.executable, str(REPO / "datasets" / "prepare_synthetic.py"), *args],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert "train: 3/3 images" in res.stdout and "val: 2/2 images" in res.stdout
    generate_synthetic_coco(str(tmp_path / "api"), num_train=3, num_val=2, seed=7, min_side=128, max_side=160,
                            log=None)
    for split in ("train", "val"):
        name = f"annotations/instances_{split}.json"
        assert (tmp_path / "cli" / name).read_bytes() == (tmp_path / "api" / name).read_bytes()
        for im in load(tmp_path / "cli", split)["images"]:
            assert 128 <= max(im["height"], im["width"]) <= 160
    cli = load_cli()
    assert cli.main(args[:-4] + ["--min-side", "600", "--max-side", "500"]) == 2
    assert "min_side" in capsys.readouterr().err
    assert cli.main(args + ["--jpeg-quality", "0"]) == 2
    assert cli.parse_args([]).out.endswith(os.path.join("", "synthetic"))
