"""A synthetic COCO-format instance segmentation dataset of textured shapes, written to disk.

The images are rendered by :mod:`detgn.data.datasets.synthetic_render` (eight shape categories,
clutter, occlusion, crowd regions, empty images; annotations of the visible parts).
Everything is a function of ``(seed, split, index)``: each image has its own ``numpy``
generator, so output is byte-identical for a seed whatever the number of worker
processes. Written layout (the JSON atomically: a reader never sees half of it)::

    out_dir/{train,val}/<image_id:012d>.jpg
    out_dir/annotations/instances_{train,val}.json
"""
from __future__ import annotations

import multiprocessing
import os
import time
from functools import partial
from typing import Callable, Dict, Optional

import cv2
import numpy as np

from detgn.utils.file_io import atomic_write_bytes, atomic_write_json

from .synthetic_render import CATEGORIES, SyntheticImage, mask_to_polygons, render_synthetic_image

__all__ = [
    "CATEGORIES",
    "SPLIT_ID_OFFSET",
    "SyntheticImage",
    "coco_statistics",
    "generate_synthetic_coco",
    "mask_to_polygons",
    "render_synthetic_image",
]

SPLIT_ID_OFFSET = {"train": 0, "val": 1_000_000}  # image and annotation ids stay unique across splits


def _write_image(index: int, *, seed: int, split: str, image_dir: str, min_side: int, max_side: int,
                 jpeg_quality: int) -> tuple:
    """Render and save one image; returns (image record, annotations without ids)."""
    r = render_synthetic_image(seed, split, index, min_side=min_side, max_side=max_side)
    image_id = SPLIT_ID_OFFSET.get(split, 0) + index + 1
    name = f"{image_id:012d}.jpg"
    ok, buf = cv2.imencode(".jpg", r.image, [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality])
    if not ok:
        raise OSError(f"could not encode {os.path.join(image_dir, name)} as JPEG")
    atomic_write_bytes(os.path.join(image_dir, name), buf.tobytes())
    h, w = r.image.shape[:2]
    record = {"id": image_id, "file_name": name, "height": h, "width": w, "license": 1,
              "coco_url": "", "flickr_url": "", "date_captured": ""}
    return record, r.annotations


def coco_statistics(coco: dict) -> dict:
    """Summary of a COCO instances dict: objects per image, COCO size classes
    (by ``area``, non-crowd), crowd and empty fractions, multi-part fraction."""
    anns = coco["annotations"]
    per_image = {im["id"]: 0 for im in coco["images"]}
    crowd_images = set()
    for a in anns:
        if a["iscrowd"]:
            crowd_images.add(a["image_id"])
        else:
            per_image[a["image_id"]] += 1
    areas = np.array([a["area"] for a in anns if not a["iscrowd"]], dtype=np.float64)
    n_img, n_obj = max(len(per_image), 1), max(len(areas), 1)
    counts = np.array(list(per_image.values()) or [0])
    names = {c["id"]: c["name"] for c in coco["categories"]}
    by_cat = {names[c["id"]]: 0 for c in coco["categories"]}
    for a in anns:
        if not a["iscrowd"]:
            by_cat[names[a["category_id"]]] += 1
    multi = sum(1 for a in anns if not a["iscrowd"] and len(a["segmentation"]) > 1)
    return {
        "images": len(coco["images"]),
        "instances": int(len(areas)),
        "crowd_regions": sum(1 for a in anns if a["iscrowd"]),
        "objects_per_image_mean": float(counts.mean()),
        "objects_per_image_max": int(counts.max()),
        "empty_image_fraction": sum(1 for i, c in per_image.items() if c == 0 and i not in crowd_images) / n_img,
        "crowd_image_fraction": len(crowd_images) / n_img,
        "small_fraction": float((areas < 32 ** 2).sum() / n_obj),
        "medium_fraction": float(((areas >= 32 ** 2) & (areas <= 96 ** 2)).sum() / n_obj),
        "large_fraction": float((areas > 96 ** 2).sum() / n_obj),
        "multi_part_fraction": multi / n_obj,
        "per_category": by_cat,
    }


def _check_args(num_train: int, num_val: int, seed: int, min_side: int, max_side: int, workers: int) -> None:
    for key, v in (("num_train", num_train), ("num_val", num_val), ("seed", seed)):
        if not isinstance(v, (int, np.integer)) or v < 0:
            raise ValueError(f"generate_synthetic_coco: {key} must be an integer >= 0, got {v!r}")
    if not 64 <= min_side <= max_side:
        raise ValueError(f"generate_synthetic_coco: need 64 <= min_side <= max_side, got min_side={min_side}, "
                         f"max_side={max_side}")
    if workers < 1:
        raise ValueError(f"generate_synthetic_coco: workers must be >= 1, got {workers}")


def generate_synthetic_coco(out_dir: str, *, num_train: int, num_val: int, seed: int, min_side: int = 320,
                            max_side: int = 512, workers: int = 1, jpeg_quality: int = 90,
                            log: Optional[Callable[[str], None]] = print) -> Dict[str, dict]:
    """Write the synthetic dataset under ``out_dir`` (see the module docstring).

    Args:
        num_train, num_val: images per split (0 skips writing that split).
        seed: same seed -> byte-identical JSON and images; other seeds differ.
        min_side, max_side: range of each image's longer side, in pixels.
        workers: processes rendering images; output does not depend on it.
        log: progress printer (``None`` for silence).
    Returns:
        ``{split: {"json_file", "image_dir", "seconds", **coco_statistics(...)}}``.
    """
    _check_args(num_train, num_val, seed, min_side, max_side, workers)
    say = log or (lambda msg: None)
    os.makedirs(os.path.join(out_dir, "annotations"), exist_ok=True)
    summary = {}
    for split, n in (("train", num_train), ("val", num_val)):
        if n == 0:
            continue
        image_dir = os.path.join(out_dir, split)
        os.makedirs(image_dir, exist_ok=True)
        job = partial(_write_image, seed=seed, split=split, image_dir=image_dir, min_side=min_side,
                      max_side=max_side, jpeg_quality=jpeg_quality)
        images, annotations = [], []
        start, every = time.perf_counter(), max(1, n // 10)
        pool = multiprocessing.get_context("fork").Pool(workers) if workers > 1 else None
        try:
            results = pool.imap(job, range(n), chunksize=4) if pool else map(job, range(n))
            for k, (record, anns) in enumerate(results, 1):
                images.append(record)
                for a in anns:  # ids assigned here, in image order, so workers cannot reorder them
                    annotations.append({"id": SPLIT_ID_OFFSET.get(split, 0) + len(annotations) + 1,
                                        "image_id": record["id"], **a})
                if k % every == 0 or k == n:
                    rate = k / max(time.perf_counter() - start, 1e-9)
                    say(f"[synthetic] {split}: {k}/{n} images, {len(annotations)} annotations, {rate:.1f} img/s")
        finally:
            if pool:
                pool.close()
                pool.join()
        coco = {
            "info": {"description": "detgn synthetic shapes (instance segmentation)", "version": "1.0",
                     "year": 2024, "contributor": "detgn datasets/prepare_synthetic.py", "date_created": "",
                     "generator": {"seed": seed, "split": split, "min_side": min_side, "max_side": max_side}},
            "licenses": [{"id": 1, "name": "CC0 1.0", "url": "https://creativecommons.org/publicdomain/zero/1.0/"}],
            "images": images, "annotations": annotations, "categories": CATEGORIES,
        }
        json_file = os.path.join(out_dir, "annotations", f"instances_{split}.json")
        atomic_write_json(json_file, coco, separators=(",", ":"))  # a reader never sees half a file
        stray = sorted(set(os.listdir(image_dir)) - {im["file_name"] for im in images})
        if stray:
            say(f"[synthetic] note: {len(stray)} files in {image_dir} are not in {json_file} (left from an "
                f"earlier run?); they are ignored by the loaders")
        summary[split] = {"json_file": json_file, "image_dir": image_dir,
                          "seconds": time.perf_counter() - start, **coco_statistics(coco)}
    return summary
