"""A small stand-in for the real COCO 2017 files, with their format and their quirks.

``write_coco2017_like(root)`` writes ``root/coco/`` as the COCO download unpacks it
(``annotations/instances_{train,val}2017.json``, ``annotations/image_info_test2017.json``,
``train2017/``, ``val2017/``), so the built-in names ``coco_2017_train`` / ``coco_2017_val``
resolve to it under ``DETGN_DATASETS=root``. What it copies from the real files:

- top-level keys in the real order: ``info``, ``licenses``, ``images``, ``annotations``,
  ``categories``; the real ``info`` and the eight real licenses;
- image records with ``license``, ``file_name`` (12-digit zero-padded id + ``.jpg``),
  ``coco_url``, ``height``, ``width``, ``date_captured``, ``flickr_url``, ``id``; JPEG files;
- the 80 real categories with their ids 1..90 (gaps at 12, 26, 29, 30, 45, 66, 68, 69,
  71, 83) and supercategories;
- polygons as flat float lists with 2 decimals, some objects in several parts; boxes and
  areas as floats; large annotation ids; crowd regions (``iscrowd`` 1) as UNCOMPRESSED RLE
  (``counts`` a list of ints, column-major, starting with a run of zeros) with the
  900100xxxxxx ids the real crowd annotations have;
- images with no annotation at all, and an image whose only object is a crowd region;
- the two degenerate records of the real ``instances_train2017.json``, verbatim:
  annotation 918 of image 200365 and annotation 2206849 of image 550395 (zero-height
  boxes around zero-area polygons);
- ``image_info_test2017.json``: images and categories, no ``annotations`` key.

Objects are painted into the images (a colour per category) so that a detector can
learn something from a few iterations. Deterministic for a given ``seed``.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Tuple

import cv2
import numpy as np
import pycocotools.mask as mask_util

__all__ = ["COCO_CATEGORIES", "DEGENERATE_RECORDS", "Coco2017Like", "write_coco2017_like"]

COCO_INFO = {
    "description": "COCO 2017 Dataset", "url": "http://cocodataset.org", "version": "1.0", "year": 2017,
    "contributor": "COCO Consortium", "date_created": "2017/09/01",
}
COCO_LICENSES = [
    {"url": "http://creativecommons.org/licenses/by-nc-sa/2.0/", "id": 1,
     "name": "Attribution-NonCommercial-ShareAlike License"},
    {"url": "http://creativecommons.org/licenses/by-nc/2.0/", "id": 2, "name": "Attribution-NonCommercial License"},
    {"url": "http://creativecommons.org/licenses/by-nc-nd/2.0/", "id": 3,
     "name": "Attribution-NonCommercial-NoDerivs License"},
    {"url": "http://creativecommons.org/licenses/by/2.0/", "id": 4, "name": "Attribution License"},
    {"url": "http://creativecommons.org/licenses/by-sa/2.0/", "id": 5, "name": "Attribution-ShareAlike License"},
    {"url": "http://creativecommons.org/licenses/by-nd/2.0/", "id": 6, "name": "Attribution-NoDerivs License"},
    {"url": "http://flickr.com/commons/usage/", "id": 7, "name": "No known copyright restrictions"},
    {"url": "http://www.usa.gov/copyright.shtml", "id": 8, "name": "United States Government Work"},
]
_SUPER = {
    "person": "person", "vehicle": "bicycle car motorcycle airplane bus train truck boat",
    "outdoor": "traffic_light fire_hydrant stop_sign parking_meter bench",
    "animal": "bird cat dog horse sheep cow elephant bear zebra giraffe",
    "accessory": "backpack umbrella handbag tie suitcase",
    "sports": "frisbee skis snowboard sports_ball kite baseball_bat baseball_glove skateboard surfboard tennis_racket",
    "kitchen": "bottle wine_glass cup fork knife spoon bowl",
    "food": "banana apple sandwich orange broccoli carrot hot_dog pizza donut cake",
    "furniture": "chair couch potted_plant bed dining_table toilet",
    "electronic": "tv laptop mouse remote keyboard cell_phone",
    "appliance": "microwave oven toaster sink refrigerator",
    "indoor": "book clock vase scissors teddy_bear hair_drier toothbrush",
}
_IDS = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 27, 28, 31, 32, 33,
        34, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 46, 47, 48, 49, 50, 51, 52, 53, 54, 55, 56, 57, 58, 59, 60, 61,
        62, 63, 64, 65, 67, 70, 72, 73, 74, 75, 76, 77, 78, 79, 80, 81, 82, 84, 85, 86, 87, 88, 89, 90]
_NAMES = [n.replace("_", " ") for group in _SUPER.values() for n in group.split()]
COCO_CATEGORIES = [
    {"supercategory": next(s for s, g in _SUPER.items() if n.replace(" ", "_") in g.split()), "id": i, "name": n}
    for i, n in zip(_IDS, _NAMES)
]
assert len(COCO_CATEGORIES) == 80

# The two records of the real instances_train2017.json with zero-height boxes, verbatim.
DEGENERATE_RECORDS = [
    {"segmentation": [[296.65, 388.33, 296.65, 388.33, 297.68, 388.33, 297.68, 388.33]], "area": 0.0, "iscrowd": 0,
     "image_id": 200365, "bbox": [296.65, 388.33, 1.03, 0.0], "category_id": 58, "id": 918},
    {"segmentation": [[9.98, 188.56, 15.52, 188.56, 15.52, 188.56, 11.09, 188.56]], "area": 0.0, "iscrowd": 0,
     "image_id": 550395, "bbox": [9.98, 188.56, 5.54, 0.0], "category_id": 1, "id": 2206849},
]

# Categories painted in the images (real ids), each with its own BGR colour.
_PAINTED = {1: (40, 60, 220), 3: (220, 60, 40), 18: (40, 200, 60), 58: (30, 180, 230), 62: (200, 40, 200)}

# (image id, height, width, kind); kind: "objects", "empty" (no annotation), "crowd_only".
_TRAIN = [(200365, 480, 640, "objects"), (550395, 427, 640, "objects"), (391895, 360, 640, "objects"),
          (522418, 640, 480, "objects"), (184613, 336, 500, "objects"), (318219, 640, 556, "objects"),
          (554625, 640, 426, "objects"), (574769, 480, 640, "objects"), (60623, 427, 640, "empty"),
          (309022, 480, 640, "crowd_only")]
_VAL = [(397133, 427, 640, "objects"), (37777, 230, 352, "objects"), (252219, 428, 640, "objects"),
        (87038, 480, 640, "objects"), (174482, 388, 640, "empty")]
_TEST = [(1, 480, 640), (16, 427, 640)]


@dataclass
class Coco2017Like:
    """Where the stand-in lives (``root`` is what ``DETGN_DATASETS`` points at)."""

    root: Path
    train_json: Path
    val_json: Path
    test_info_json: Path
    train_dir: Path
    val_dir: Path
    num_annotations: Dict[str, int] = field(default_factory=dict)  # split -> entries in "annotations"
    crowd_ids: List[int] = field(default_factory=list)
    empty_image_ids: List[int] = field(default_factory=list)


def _uncompressed_rle(mask: np.ndarray) -> dict:
    """COCO's uncompressed RLE: run lengths over the column-major pixels, zeros first."""
    flat = np.asfortranarray(mask.astype(np.uint8)).flatten(order="F")
    change = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    runs = np.diff(bounds).tolist()
    if flat[0] == 1:
        runs = [0] + runs
    return {"counts": [int(r) for r in runs], "size": [int(mask.shape[0]), int(mask.shape[1])]}


def _polygon(rng: np.random.Generator, cx: float, cy: float, rx: float, ry: float, n: int) -> List[float]:
    angles = np.sort(rng.uniform(0, 2 * np.pi, n))
    radius = rng.uniform(0.7, 1.0, n)
    xs, ys = cx + rx * radius * np.cos(angles), cy + ry * radius * np.sin(angles)
    return [round(float(v), 2) for xy in zip(xs, ys) for v in xy]


def _annotation_of(segm, h: int, w: int, *, ann_id: int, image_id: int, category_id: int,
                   iscrowd: int) -> Tuple[dict, np.ndarray]:
    """The COCO record of a segmentation (bbox and area as pycocotools derives them) and its mask."""
    rle = mask_util.frPyObjects(segm, h, w)
    rle = mask_util.merge(rle) if isinstance(rle, list) else rle
    bbox = [round(float(v), 2) for v in mask_util.toBbox(rle)]
    ann = {"segmentation": segm, "area": float(mask_util.area(rle)), "iscrowd": iscrowd, "image_id": image_id,
           "bbox": bbox, "category_id": category_id, "id": ann_id}
    return ann, mask_util.decode(rle).astype(bool)


def _image_record(image_id: int, h: int, w: int, split: str, rng: np.random.Generator) -> dict:
    name = f"{image_id:012d}.jpg"
    return {
        "license": int(rng.integers(1, 9)), "file_name": name, "coco_url": f"http://images.cocodataset.org/{split}/{name}",
        "height": h, "width": w, "date_captured": f"2013-11-{int(rng.integers(10, 28))} 11:18:45",
        "flickr_url": f"http://farm{int(rng.integers(1, 10))}.staticflickr.com/{int(rng.integers(1000, 9999))}/"
                      f"{int(rng.integers(10**9, 10**10))}_{int(rng.integers(10**9, 10**10)):x}_z.jpg",
        "id": image_id,
    }


def _objects(image_id: int, h: int, w: int, kind: str, rng: np.random.Generator, next_id) -> Tuple[list, np.ndarray]:
    """Annotations of one image and the image painted with them."""
    image = rng.integers(70, 110, size=(h, w, 3), dtype=np.uint8)
    anns, masks = [], []
    if kind == "objects":
        for k in range(int(rng.integers(2, 5))):
            cat = int(rng.choice(list(_PAINTED)))
            rx, ry = rng.uniform(0.08, 0.2) * w, rng.uniform(0.08, 0.2) * h
            cx, cy = rng.uniform(rx + 2, w - rx - 2), rng.uniform(ry + 2, h - ry - 2)
            segm = [_polygon(rng, cx, cy, rx, ry, int(rng.integers(6, 16)))]
            if k == 0:  # an object in two parts (e.g. occluded in the middle)
                segm.append(_polygon(rng, min(cx + 1.6 * rx, w - rx / 3 - 1), cy, rx / 3, ry / 3, 5))
            ann, mask = _annotation_of(segm, h, w, ann_id=next_id(), image_id=image_id, category_id=cat, iscrowd=0)
            anns.append(ann)
            masks.append(mask)
    if kind in ("objects", "crowd_only"):  # a crowd region: uncompressed RLE, 9001 ids
        mask = np.zeros((h, w), bool)
        y0, x0 = int(h * 0.65), int(w * 0.05)
        mask[y0:y0 + h // 5, x0:x0 + w // 4] = True
        crowd, mask = _annotation_of(_uncompressed_rle(mask), h, w, ann_id=900100000000 + image_id,
                                     image_id=image_id, category_id=1, iscrowd=1)
        anns.append(crowd)
        masks.append(mask)
    for a, m in zip(anns, masks):
        image[m] = _PAINTED[a["category_id"]]
    return anns, image


def _write_split(root: Path, split: str, spec, rng, next_id, extra: List[dict]) -> Tuple[Path, int, List[int], List[int]]:
    folder = root / "coco" / split
    folder.mkdir(parents=True, exist_ok=True)
    images, annotations, crowd, empty = [], [], [], []
    for image_id, h, w, kind in spec:
        images.append(_image_record(image_id, h, w, split, rng))
        anns, pixels = _objects(image_id, h, w, kind, rng, next_id)
        annotations += anns
        crowd += [a["id"] for a in anns if a["iscrowd"]]
        if kind == "empty":
            empty.append(image_id)
        cv2.imwrite(str(folder / images[-1]["file_name"]), pixels, [cv2.IMWRITE_JPEG_QUALITY, 90])
    # The real file lists annotations in no image order; the degenerate records sit among the rest.
    annotations = annotations[:3] + extra + annotations[3:]
    data = {"info": COCO_INFO, "licenses": COCO_LICENSES, "images": images, "annotations": annotations,
            "categories": COCO_CATEGORIES}
    path = root / "coco" / "annotations" / f"instances_{split}.json"
    path.write_text(json.dumps(data, separators=(",", ":")))
    return path, len(annotations), crowd, empty


def write_coco2017_like(root, *, seed: int = 0) -> Coco2017Like:
    """Write the stand-in under ``root/coco`` (see the module docstring); returns its paths."""
    root = Path(root)
    (root / "coco" / "annotations").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    counter = iter(range(1_768, 10**9, 7_919))  # large, gappy ids like the real ones

    def next_id() -> int:
        return next(counter)

    train, n_train, crowd_t, empty_t = _write_split(root, "train2017", _TRAIN, rng, next_id, DEGENERATE_RECORDS)
    val, n_val, crowd_v, empty_v = _write_split(root, "val2017", _VAL, rng, next_id, [])
    test = root / "coco" / "annotations" / "image_info_test2017.json"
    test.write_text(json.dumps({"info": COCO_INFO, "licenses": COCO_LICENSES,
                                "images": [_image_record(i, h, w, "test2017", rng) for i, h, w in _TEST],
                                "categories": COCO_CATEGORIES}))
    return Coco2017Like(root=root, train_json=train, val_json=val, test_info_json=test,
                        train_dir=root / "coco" / "train2017", val_dir=root / "coco" / "val2017",
                        num_annotations={"train2017": n_train, "val2017": n_val},
                        crowd_ids=crowd_t + crowd_v, empty_image_ids=empty_t + empty_v)
