"""Shared pytest fixtures.

``tiny_coco`` (function scope, under ``tmp_path``): a 6-image COCO-format set that any
test may use. Layout ``tmp_path/tiny_coco/{images/*.png, instances.json}``; the PNGs
are lossless so pixel values are exact. Contents:

- categories with NON-contiguous ids 3 "square", 7 "triangle", 12 "blob"
  (contiguous 0, 1, 2);
- images (id: height x width): 101: 64x96, 102: 96x64, 103: 80x80, 104: 72x100 (no
  annotations), 105: 100x72, 106: 64x128 -- landscape and portrait mixed;
- annotation 1 (image 101, category 3): the known box ``bbox = [10, 12, 30, 20]`` whose
  polygon is exactly that rectangle (``KNOWN_BOX`` / ``KNOWN_ANN_ID``);
- a crowd annotation with uncompressed RLE (image 102), a non-crowd annotation with
  compressed RLE (image 103), a two-part polygon (image 102);
- every object is painted in the image with a colour whose B, G, R values differ
  (``OBJECT_BGR``) on a background of ``BACKGROUND_BGR``.

These constants are also attributes of the returned object (``tiny_coco.KNOWN_BOX``);
use those rather than ``from conftest import``, which is ambiguous when several
``conftest.py`` files exist.

The fixture returns a :class:`TinyCoco` with ``json_file``, ``image_root``, ``data`` (a
fresh deep copy of the JSON dict to edit) and ``write(data, name)`` that saves an edited
copy next to the original and returns its path.
"""
from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pycocotools.mask as mask_util
import pytest

KNOWN_ANN_ID = 1
KNOWN_IMAGE_ID = 101
KNOWN_BOX = [10.0, 12.0, 30.0, 20.0]  # x, y, w, h in image 101 (64 x 96)
OBJECT_BGR = (30, 140, 230)
BACKGROUND_BGR = (90, 60, 20)


@dataclass
class TinyCoco:
    root: Path
    json_file: str
    image_root: str
    _data: dict
    # The module constants again, so tests need not import conftest (a module name
    # that several conftest.py files share).
    KNOWN_ANN_ID = KNOWN_ANN_ID
    KNOWN_IMAGE_ID = KNOWN_IMAGE_ID
    KNOWN_BOX = tuple(KNOWN_BOX)
    OBJECT_BGR = OBJECT_BGR
    BACKGROUND_BGR = BACKGROUND_BGR

    @property
    def data(self) -> dict:
        return copy.deepcopy(self._data)

    def write(self, data: dict, name: str = "variant.json") -> str:
        path = self.root / name
        path.write_text(json.dumps(data))
        return str(path)


def _rect(x, y, w, h):
    return [x, y, x + w, y, x + w, y + h, x, y + h]


def _rle(mask: np.ndarray, compressed: bool) -> dict:
    m = np.asfortranarray(mask.astype(np.uint8))
    rle = mask_util.encode(m)
    if compressed:
        return {"size": list(rle["size"]), "counts": rle["counts"].decode("ascii")}
    flat = m.flatten(order="F")
    counts, current, run = [], 0, 0
    for v in flat:
        if v != current:
            counts.append(run)
            current, run = v, 0
        run += 1
    counts.append(run)
    return {"size": list(mask.shape), "counts": [int(c) for c in counts]}


def build_tiny_coco(root: Path) -> TinyCoco:
    """Write the tiny set under ``root`` (see the module docstring)."""
    images_dir = root / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    sizes = {101: (64, 96), 102: (96, 64), 103: (80, 80), 104: (72, 100), 105: (100, 72), 106: (64, 128)}
    blob = np.zeros((80, 80), bool)
    blob[20:50, 30:60] = True
    crowd = np.zeros((96, 64), bool)
    crowd[60:90, 5:40] = True
    # (image id, category id, segmentation, iscrowd)
    objects = [
        (101, 3, [_rect(*KNOWN_BOX)], 0),
        (101, 7, [[60, 50, 90, 50, 75, 20]], 0),
        (102, 12, [_rect(5, 5, 20, 20), _rect(30, 30, 25, 15)], 0),
        (102, 3, _rle(crowd, compressed=False), 1),
        (103, 7, _rle(blob, compressed=True), 0),
        (105, 3, [_rect(8, 40, 50, 45)], 0),
        (106, 12, [_rect(4, 4, 40, 30)], 0),
        (106, 7, [[70, 60, 120, 60, 95, 10]], 0),
    ]
    images, anns = [], []
    canvases = {i: np.full((h, w, 3), BACKGROUND_BGR, np.uint8) for i, (h, w) in sizes.items()}
    for k, (img_id, cat, segm, iscrowd) in enumerate(objects, start=1):
        h, w = sizes[img_id]
        if isinstance(segm, dict):
            rle = segm if isinstance(segm["counts"], str) else mask_util.frPyObjects(segm, h, w)
            mask = mask_util.decode(rle).astype(bool)
        else:
            rle = mask_util.merge(mask_util.frPyObjects(segm, h, w))
            mask = mask_util.decode(rle).astype(bool)
        canvases[img_id][mask] = OBJECT_BGR
        if isinstance(segm, dict):
            bbox = [float(v) for v in mask_util.toBbox(rle)]
        else:  # polygon extents, as COCO's own boxes
            pts = np.concatenate([np.reshape(p, (-1, 2)) for p in segm])
            x0, y0 = pts.min(0)
            x1, y1 = pts.max(0)
            bbox = [float(x0), float(y0), float(x1 - x0), float(y1 - y0)]
        anns.append({
            "id": k, "image_id": img_id, "category_id": cat, "segmentation": segm,
            "area": float(mask.sum()), "bbox": bbox, "iscrowd": iscrowd,
        })
    for img_id, (h, w) in sizes.items():
        name = f"{img_id:06d}.png"
        cv2.imwrite(str(images_dir / name), canvases[img_id])
        images.append({"id": img_id, "file_name": name, "height": h, "width": w})
    data = {
        "images": images,
        "annotations": anns,
        "categories": [
            {"id": 12, "name": "blob"},
            {"id": 3, "name": "square"},
            {"id": 7, "name": "triangle"},
        ],
    }
    json_file = root / "instances.json"
    json_file.write_text(json.dumps(data))
    return TinyCoco(root, str(json_file), str(images_dir), data)


def pytest_report_header(config):
    """The versions a run tested with (CI gets whatever the registry serves that day)."""
    import platform

    import torch
    import torchvision

    return (f"detgn tested with torch {torch.__version__}, torchvision {torchvision.__version__}, "
            f"numpy {np.__version__}, opencv {cv2.__version__}, Python {platform.python_version()}, "
            f"{torch.get_num_threads()} torch threads")


@pytest.fixture
def tiny_coco(tmp_path) -> TinyCoco:
    return build_tiny_coco(tmp_path / "tiny_coco")


def _torch_threads(n: int):
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def one_thread():
    """Run a module's tests with one torch thread: the test machine's cores are shared,
    and oversubscribed threads stall backward passes."""
    yield from _torch_threads(1)


@pytest.fixture
def two_threads():
    """Two torch threads (code that splits work across threads), whatever the machine has."""
    yield from _torch_threads(2)


@pytest.fixture(scope="session")
def coco2017_like(tmp_path_factory):
    """A ``DETGN_DATASETS`` folder holding ``coco/`` in the real COCO 2017 format and
    quirks (see ``tests/coco2017_like.py``); returns its :class:`Coco2017Like`."""
    from coco2017_like import write_coco2017_like

    return write_coco2017_like(tmp_path_factory.mktemp("coco2017_like_root"))


@pytest.fixture(scope="session")
def r50_gn_zoo_mirror(tmp_path_factory):
    """A ``DETGN_MODEL_ZOO_MIRROR`` folder serving ``detgn://ImageNetPretrained/R-50-GN`` as a
    Detectron-format Python 2 pickle (see ``tests/detectron_imagenet_pkl.py``).
    Returns ``(mirror folder, blobs written)``."""
    from detectron_imagenet_pkl import zoo_mirror

    root = tmp_path_factory.mktemp("zoo_mirror")
    return root, zoo_mirror(root)
