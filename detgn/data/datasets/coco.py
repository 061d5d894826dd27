"""COCO instances JSON -> detgn records, with validation of every annotation.

``load_coco_json`` turns a COCO-format file into the records of the interfaces brief:
one dict per image (``file_name`` absolute, ``height``, ``width``, ``image_id``,
``annotations``) whose annotations carry COCO XYWH boxes and CONTIGUOUS category ids
(dataset ids sorted ascending -> 0..K-1).

:func:`register_coco_instances` names such a file in the ``DatasetCatalog``, with
metadata whose category attributes are read from the JSON on first use (so an
evaluator can ask for them before the records are loaded).

Every image record and annotation is checked (:mod:`detgn.data.datasets.coco_checks`). What
happens to a bad one is the policy ``on_bad`` (``DATASETS.ON_BAD_ANNOTATION``):

- ``"drop_degenerate"`` (default): annotations that describe no object (zero-size
  boxes, boxes with no area in the image, polygons with < 3 distinct points or no
  area) are dropped, boxes reaching outside the image are clipped, degenerate parts
  of multi-polygon masks are removed; all of it counted and named (annotation ids) in
  one log line. Structural problems (unknown category, image id missing from
  ``images``, malformed fields, duplicate ids, invalid image records) stop loading
  with a message naming the file, the ids and what to do. This trains on the real
  COCO 2017 files, which hold two zero-height boxes.
- ``"error"``: strict: any problem stops loading.
- ``"skip"``: lenient: structurally bad annotations and image records are dropped too.

A file without an ``annotations`` key (an image-info file such as
``image_info_test2017.json``) or with none at all cannot be trained or evaluated on:
loading it is an error that says so. Images without annotations are kept (training
filters them later). Image files are not opened here; the mapper and
``tools/validate_dataset.py`` check them.
"""
from __future__ import annotations

import json
import logging
import os
import time
from typing import Callable, Dict, List, Optional, Tuple, Union

from ..catalog import DatasetCatalog, DatasetNotFoundError, MetadataCatalog
from .coco_checks import (
    BOX_OVERSHOOT_TOLERANCE,
    REASONS,
    CocoCategories,
    CocoFormatError,
    CocoScan,
    Problem,
    parse_categories,
    scan_coco,
    summarize_problems,
)

logger = logging.getLogger(__name__)

__all__ = [
    "BOX_OVERSHOOT_TOLERANCE",
    "ON_BAD_POLICIES",
    "CocoFormatError",
    "Problem",
    "REASONS",
    "CocoCategories",
    "CocoScan",
    "read_coco_json",
    "parse_categories",
    "load_coco_categories",
    "scan_coco",
    "summarize_problems",
    "load_coco_json",
    "register_coco_instances",
]

# Values of DATASETS.ON_BAD_ANNOTATION (see the module docstring); the first is the default.
ON_BAD_POLICIES = ("drop_degenerate", "error", "skip")


def read_coco_json(json_file: str) -> dict:
    """Parse a COCO JSON file; errors name the file (and the parser's line/column)."""
    try:
        with open(json_file, "r") as f:
            data = json.load(f)
    except FileNotFoundError:
        raise CocoFormatError(f"{json_file}: no such annotation file; check the path (or DETGN_DATASETS)") from None
    except json.JSONDecodeError as e:
        raise CocoFormatError(f"{json_file}: not valid JSON: {e}. Re-export or re-download the file.") from None
    except (OSError, UnicodeDecodeError) as e:
        raise CocoFormatError(f"{json_file}: cannot read annotation file: {e}") from None
    needs = "a COCO instances file is an object with 'images', 'annotations' and 'categories'"
    if not isinstance(data, dict):
        raise CocoFormatError(f"{json_file}: {needs}, got a {type(data).__name__}")
    for key in ("images", "categories", "annotations"):
        if key not in data and key != "annotations":  # test-set files have no annotations
            raise CocoFormatError(f"{json_file}: missing top-level key '{key}'; {needs}")
        if not isinstance(data.get(key, []), list):
            raise CocoFormatError(f"{json_file}: top-level '{key}' must be a list, got {type(data[key]).__name__}")
    return data


_CATEGORY_CACHE: Dict[Tuple[str, int, int], CocoCategories] = {}


def _file_key(json_file: str) -> Tuple[str, int, int]:
    st = os.stat(json_file)
    return (os.path.abspath(json_file), st.st_mtime_ns, st.st_size)


def load_coco_categories(json_file: str) -> CocoCategories:
    """Categories of a JSON, cached per (path, mtime, size) so metadata lookups are cheap."""
    try:
        key = _file_key(json_file)
    except OSError:
        raise CocoFormatError(f"{json_file}: no such annotation file; check the path (or DETGN_DATASETS)") from None
    if key not in _CATEGORY_CACHE:
        _CATEGORY_CACHE[key] = parse_categories(read_coco_json(json_file), json_file)
    return _CATEGORY_CACHE[key]


def _no_annotations_error(scan: CocoScan) -> Optional[CocoFormatError]:
    """A file that cannot be a training or evaluation set: no 'annotations', or none at all."""
    if not scan.has_annotations_key:
        return CocoFormatError(
            f"{scan.json_file} has no 'annotations' key: it is an image-info file (like COCO's "
            "image_info_test2017.json, which lists test images without ground truth), not an instances "
            "file, so it cannot be used to train or evaluate. Use an instances_*.json file (e.g. "
            "annotations/instances_val2017.json); to look at predictions on unannotated images, run "
            "tools/visualize.py --input <image folder>."
        )
    if scan.num_annotations == 0:
        return CocoFormatError(
            f"{scan.json_file} has an empty 'annotations' list: there is nothing to train or evaluate on. "
            "Check that this is the instances file you meant (tools/validate_dataset.py reports its contents)."
        )
    return None


def _apply_policy(scan: CocoScan, image_root: str, on_bad: str) -> None:
    """Raise what the policy does not accept; log one line of what it dropped or repaired."""
    json_file = scan.json_file
    stopping = scan.problems if on_bad == "error" else scan.structural if on_bad == "drop_degenerate" else []
    if stopping:
        p = stopping[0]
        more = f" ({len(scan.problems) - 1} more problem(s) in this file)" if len(scan.problems) > 1 else ""
        if on_bad == "error":
            todo = ("Fix the JSON, or use the default DATASETS.ON_BAD_ANNOTATION drop_degenerate (drops "
                    "annotations without area and clips boxes, naming them in the log) or skip (also drops "
                    "structurally bad annotations)")
        else:
            todo = ("Fix the JSON, or set DATASETS.ON_BAD_ANNOTATION skip to drop structurally bad annotations "
                    "too (counted and named in the log)")
        raise CocoFormatError(
            f"{p.message}{more}. {todo}; `python tools/validate_dataset.py --json {json_file} "
            f"--images {image_root}` lists every problem."
        )
    if scan.problems:
        logger.warning(
            "%s: %s [DATASETS.ON_BAD_ANNOTATION=%s; 'error' stops on any of them; tools/validate_dataset.py "
            "lists every problem]", json_file, summarize_problems(scan.problems), on_bad,
        )


def load_coco_json(
    json_file: str, image_root: str, dataset_name: Optional[str] = None, *, on_bad: str = "drop_degenerate"
) -> List[dict]:
    """Load and validate a COCO instances JSON into detgn records.

    Args:
        json_file: path of the COCO instances JSON.
        image_root: folder that the images' ``file_name`` entries are relative to.
        dataset_name: if given, the categories are recorded in that dataset's metadata
            (``thing_classes``, ``thing_dataset_id_to_contiguous_id``, ...).
        on_bad: one of :data:`ON_BAD_POLICIES` (see the module docstring): "drop_degenerate"
            drops annotations without area and clips boxes, naming them in one log line,
            and raises :class:`CocoFormatError` at the first structural problem; "error"
            raises at any problem; "skip" drops structurally bad records too.
    Returns:
        list of records ``{"file_name", "height", "width", "image_id", "annotations"}``, one
        per valid image in JSON order (images without annotations included).
    Raises:
        CocoFormatError: unreadable or malformed file, a file without annotations, or a
            problem the policy does not accept; the message names the file and the ids.
    """
    if on_bad not in ON_BAD_POLICIES:
        raise ValueError(f"on_bad must be one of {ON_BAD_POLICIES}, got {on_bad!r}")
    start = time.perf_counter()
    json_file = os.fspath(json_file)
    data = read_coco_json(json_file)
    scan = scan_coco(data, json_file)
    del data
    try:
        _CATEGORY_CACHE[_file_key(json_file)] = scan.categories
    except OSError:
        pass
    empty = _no_annotations_error(scan)
    if empty is not None:
        raise empty
    _apply_policy(scan, image_root, on_bad)
    if dataset_name is not None:
        _record_metadata(dataset_name, scan.categories, json_file, image_root)
    records = []
    for img in scan.images:
        records.append({
            "file_name": os.path.abspath(os.path.join(image_root, img["file_name"])),
            "height": img["height"],
            "width": img["width"],
            "image_id": img["id"],
            "annotations": scan.annotations[img["id"]],
        })
    n_anns = sum(len(r["annotations"]) for r in records)
    n_empty = sum(1 for r in records if not r["annotations"])
    logger.info(
        "Loaded %d images (%d without annotations) and %d annotations from %s in %.2fs",
        len(records), n_empty, n_anns, json_file, time.perf_counter() - start,
    )
    return records


def _record_metadata(name: str, cats: CocoCategories, json_file: str, image_root: str) -> None:
    meta = MetadataCatalog.get(name)
    # Names registered with register_coco_instances derive these from the JSON lazily.
    values = {
        "thing_classes": cats.thing_classes,
        "thing_dataset_id_to_contiguous_id": cats.dataset_to_contiguous,
        "contiguous_id_to_dataset_id": cats.contiguous_to_dataset,
        "json_file": os.path.abspath(json_file),
        "image_root": os.path.abspath(image_root),
        "evaluator_type": "coco",
    }
    for key, value in values.items():
        if not meta.has(key):
            setattr(meta, key, value)
        elif key in ("thing_classes", "thing_dataset_id_to_contiguous_id") and getattr(meta, key) != value:
            raise ValueError(
                f"Dataset '{name}' already has {key} {getattr(meta, key)!r} but {json_file} gives {value!r}; "
                "load it under another dataset name."
            )


PathLike = Union[str, os.PathLike, Callable[[], str]]


def _as_fn(p: PathLike) -> Callable[[], str]:
    if callable(p):
        return p
    path = os.path.abspath(os.fspath(p))
    return lambda: path


def register_coco_instances(
    name: str, json_file: PathLike, image_root: PathLike, *, missing_hint: Optional[Callable[[], str]] = None
) -> None:
    """Register a COCO-format instances set under ``name``.

    Args:
        json_file: the instances JSON (a path, or a zero-argument function returning one,
            resolved at every lookup).
        image_root: the folder the JSON's ``file_name`` entries are relative to (same).
        missing_hint: when given and the JSON does not exist at lookup, loading raises
            :class:`DatasetNotFoundError` saying where it looked and then this text (how
            to get the files) instead of a bare "file not found".

    ``DatasetCatalog.get(name, on_bad="drop_degenerate"|"error"|"skip")`` loads and validates it with
    :func:`load_coco_json`. Its metadata: ``json_file``, ``image_root``,
    ``evaluator_type = "coco"``, and ``thing_classes``, ``thing_dataset_id_to_contiguous_id``,
    ``contiguous_id_to_dataset_id`` read from the JSON's categories (sorted by id).
    """
    json_fn, root_fn = _as_fn(json_file), _as_fn(image_root)

    def load(on_bad: str = "drop_degenerate") -> List[dict]:
        if missing_hint is not None and not os.path.isfile(json_fn()):
            raise DatasetNotFoundError(f"Dataset '{name}': annotations not found at {json_fn()}. {missing_hint()}")
        return load_coco_json(json_fn(), root_fn(), name, on_bad=on_bad)

    DatasetCatalog.register(name, load, accepts=("on_bad",))
    meta = MetadataCatalog.get(name)
    meta.set(evaluator_type="coco")
    meta.set_lazy(
        json_file=json_fn,
        image_root=root_fn,
        thing_classes=lambda: load_coco_categories(json_fn()).thing_classes,
        thing_dataset_id_to_contiguous_id=lambda: load_coco_categories(json_fn()).dataset_to_contiguous,
        contiguous_id_to_dataset_id=lambda: load_coco_categories(json_fn()).contiguous_to_dataset,
    )
