"""Pictures of a detector's predictions: image files, or dataset images beside their ground truth.

Each image is predicted by a :class:`~detgn.engine.predictor.Predictor` (the test-time
resize and channel order of evaluation, detections at the original size), drawn by
:mod:`detgn.visualization.draw` on the original pixels and written as ``<stem>.png``.
Progress goes to stdout, one line per image; an unreadable image is reported on
stderr, naming the file, and skipped. Used by ``tools/visualize.py`` and the demo.
"""
from __future__ import annotations

import logging
import os
import sys
import time
from typing import Any, Dict, List, Optional, Sequence

from detgn.data import DatasetCatalog, ImageReadError, MetadataCatalog, get_detection_dataset_dicts
from detgn.data.mapper import check_image_size, read_image
from detgn.engine.predictor import Predictor

from .draw import render, write_png

logger = logging.getLogger(__name__)

__all__ = ["IMAGE_EXTENSIONS", "class_names_for", "list_images", "visualize_dataset", "visualize_files"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def list_images(path: str) -> List[str]:
    """``path`` itself (a file) or the image files directly inside it (a folder), sorted."""
    if os.path.isfile(path):
        return [path]
    if os.path.isdir(path):
        files = sorted(os.path.join(path, f) for f in os.listdir(path) if f.lower().endswith(IMAGE_EXTENSIONS))
        if not files:
            raise FileNotFoundError(f"--input {path}: the folder holds no image files ({', '.join(IMAGE_EXTENSIONS)})")
        return files
    raise FileNotFoundError(f"--input {path}: no such file or folder")


def _registered(name: str, key: str):
    if name not in DatasetCatalog:
        return None
    try:
        value = MetadataCatalog.get(name).get(key)
    except Exception as e:  # a missing/unreadable JSON only costs the names, not the pictures
        logger.warning("%s of '%s' unavailable (%s: %s); using class numbers", key, name, type(e).__name__, e)
        return None
    return value or None


def _class_metadata(cfg, dataset_name: Optional[str], key: str):
    candidates = ([dataset_name] if dataset_name else []) + list(cfg.DATASETS.TEST)
    for name in candidates:
        value = _registered(name, key)
        if value is None:
            continue
        if len(value) != cfg.MODEL.ROI_HEADS.NUM_CLASSES:
            logger.warning(
                "Dataset '%s' has %d classes but MODEL.ROI_HEADS.NUM_CLASSES is %d; showing class numbers",
                name, len(value), cfg.MODEL.ROI_HEADS.NUM_CLASSES,
            )
            return None
        return value
    return None


def class_names_for(cfg, dataset_name: Optional[str] = None) -> Optional[List[str]]:
    """Names by contiguous class id: from ``dataset_name``'s metadata, else from the config's
    first registered DATASETS.TEST set; None (draw numbers) when neither is available or
    their count differs from MODEL.ROI_HEADS.NUM_CLASSES."""
    names = _class_metadata(cfg, dataset_name, "thing_classes")
    return list(names) if names else None


def category_ids_for(cfg, dataset_name: Optional[str] = None) -> Optional[List[int]]:
    """The dataset's category id of each contiguous class id, from the same dataset as
    :func:`class_names_for`; None when unavailable."""
    ids = _class_metadata(cfg, dataset_name, "contiguous_id_to_dataset_id")
    return [int(ids[i]) for i in range(len(ids))] if ids else None


def _draw_one(predictor: Predictor, record: Dict[str, Any], out_path: str, *, class_names, score_thresh,
              with_gt: bool) -> int:
    """Predict, draw and write one record's PNG; returns the number of detections drawn.

    A record without ``height``/``width`` (a plain image file) takes them from the file.
    """
    image = read_image(record["file_name"], image_format="BGR", image_id=record.get("image_id"))
    if "height" in record:
        check_image_size(image, record)  # the ground truth is drawn at the record's size
    else:
        record = dict(record, height=image.shape[0], width=image.shape[1])
    instances = predictor(image)
    picture = render(image, instances, class_names=class_names, score_thresh=score_thresh,
                     record=record if with_gt else None)
    write_png(out_path, picture)
    return int((instances.scores >= score_thresh).sum())


def _out_name(file_name: str, used: set) -> str:
    stem = os.path.splitext(os.path.basename(file_name))[0]
    name, k = f"{stem}.png", 1
    while name in used:  # a.jpg and a.png in one folder must not overwrite each other
        name, k = f"{stem}_{k}.png", k + 1
    used.add(name)
    return name


def _run(predictor: Predictor, records: Sequence[Dict[str, Any]], out_dir: str, *, class_names, score_thresh,
         with_gt: bool) -> Dict[str, List[str]]:
    os.makedirs(out_dir, exist_ok=True)
    written, failed, used = [], [], set()
    for k, record in enumerate(records, 1):
        out_path = os.path.join(out_dir, _out_name(record["file_name"], used))
        start = time.perf_counter()
        try:
            n = _draw_one(predictor, record, out_path, class_names=class_names, score_thresh=score_thresh,
                          with_gt=with_gt)
        except ImageReadError as e:
            print(f"[{k}/{len(records)}] error: {e}", file=sys.stderr, flush=True)
            failed.append(str(e))
            continue
        written.append(out_path)
        print(f"[{k}/{len(records)}] {record['file_name']} -> {out_path}: {n} detection(s) with score >= "
              f"{score_thresh:.2f} ({time.perf_counter() - start:.2f} s)", flush=True)
    return {"written": written, "failed": failed}


def visualize_files(predictor: Predictor, paths: Sequence[str], out_dir: str, score_thresh: float = 0.5,
                    *, class_names: Optional[Sequence[str]] = None) -> Dict[str, List[str]]:
    """Draw the detections on image files; one ``<stem>.png`` each in ``out_dir``.

    Unreadable images are reported (naming the file) and skipped.

    Returns:
        ``{"written": [png paths], "failed": [error messages]}``.
    """
    records = [{"file_name": os.path.abspath(p), "image_id": None} for p in paths]
    return _run(predictor, records, out_dir, class_names=class_names, score_thresh=score_thresh, with_gt=False)


def visualize_dataset(cfg, predictor: Predictor, dataset_name: str, out_dir: str, num: int = 10,
                      score_thresh: float = 0.5) -> List[str]:
    """Draw the first ``num`` images of a registered dataset: predictions beside ground truth.

    Args:
        cfg: the model's config (DATASETS.ON_BAD_ANNOTATION, class count for the names).
        predictor: the detector.
        dataset_name: a name registered in ``DatasetCatalog`` (e.g. ``synthetic_val``).
        out_dir: where ``<image stem>.png`` files go (created).
        num: how many images, in dataset order (<= 0: all).
        score_thresh: detections scoring lower are not drawn.
    Returns:
        the PNG paths written. Unreadable images are reported as they come; at the end
        :class:`ImageReadError` names them all (a dataset's files are expected to be
        sound; ``tools/validate_dataset.py`` checks them).
    """
    records = get_detection_dataset_dicts(dataset_name, filter_empty=False, on_bad=cfg.DATASETS.ON_BAD_ANNOTATION)
    if num > 0:
        records = records[:num]
    result = _run(predictor, records, out_dir, class_names=class_names_for(cfg, dataset_name),
                  score_thresh=score_thresh, with_gt=True)
    if result["failed"]:
        raise ImageReadError(f"{len(result['failed'])} image(s) of '{dataset_name}' could not be read: "
                             + "; ".join(result["failed"]))
    return result["written"]
