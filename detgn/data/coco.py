"""COCO instances JSON -> detgn records, with validation of every annotation.

``load_coco_json`` turns a COCO-format file into the records of the interfaces brief:
one dict per image (``file_name`` absolute, ``height``, ``width``, ``image_id``,
``annotations``) whose annotations carry COCO XYWH boxes and CONTIGUOUS category ids
(dataset ids sorted ascending -> 0..K-1).

Every annotation is checked (:func:`scan_coco`); a problem is a :class:`Problem`
with a reason key from :data:`REASONS`, the image id, the annotation id and a message.
``on_bad="error"`` stops at the first problem with a message naming the JSON file,
the ids and what to do; ``on_bad="skip"`` drops bad annotations (and bad image
records), counts them by reason and logs one summary line. A box that overshoots
the image by at most 1 px is clipped silently: annotation tools round that way.
Images without annotations are kept (training filters them later). Image files are
not opened here; the mapper and ``tools/validate_dataset.py`` check them.
"""
from __future__ import annotations

import json
import logging
import math
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

logger = logging.getLogger(__name__)

__all__ = [
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
]

# A box may overshoot the image by this many pixels before it counts as outside.
BOX_OVERSHOOT_TOLERANCE = 1.0

# reason -> (what it applies to, singular phrase, plural phrase) for the summaries.
REASONS: Dict[str, Tuple[str, str, str]] = {
    "missing_key": ("annotation", "annotation with missing keys", "annotations with missing keys"),
    "bad_field": ("annotation", "annotation with an invalid field", "annotations with an invalid field"),
    "duplicate_annotation_id": ("annotation", "duplicate annotation id", "duplicate annotation ids"),
    "missing_image": ("annotation", "annotation of a missing image id", "annotations of missing image ids"),
    "image_dropped": ("annotation", "annotation of an invalid image record", "annotations of invalid image records"),
    "unknown_category": ("annotation", "unknown category_id", "unknown category_ids"),
    "bad_bbox": ("annotation", "malformed box", "malformed boxes"),
    "degenerate_box": ("annotation", "degenerate box", "degenerate boxes"),
    "box_outside_image": ("annotation", "box outside the image", "boxes outside the image"),
    "polygon_too_short": ("annotation", "polygon with < 3 points", "polygons with < 3 points"),
    "polygon_odd_length": (
        "annotation", "polygon with an odd number of coordinates", "polygons with an odd number of coordinates"
    ),
    "bad_segmentation": ("annotation", "malformed segmentation", "malformed segmentations"),
    "bad_image_record": ("image", "invalid image record", "invalid image records"),
    "duplicate_image_id": ("image", "duplicate image id", "duplicate image ids"),
}


class CocoFormatError(ValueError):
    """A COCO JSON that cannot be used as written (the message says where and why)."""


@dataclass(frozen=True)
class Problem:
    """One thing wrong in a COCO JSON: ``reason`` is a key of :data:`REASONS`."""

    reason: str
    message: str
    image_id: Any = None
    ann_id: Any = None
    # Position of the record in the JSON's "annotations" (or "images") list: unique
    # even when ids are missing or repeated.
    index: Optional[int] = None


@dataclass(frozen=True)
class CocoCategories:
    """Categories of a COCO JSON; contiguous ids follow ascending dataset ids."""

    dataset_ids: List[int]
    thing_classes: List[str]
    dataset_to_contiguous: Dict[int, int]
    contiguous_to_dataset: Dict[int, int]


@dataclass
class CocoScan:
    """The result of :func:`scan_coco`: the usable part of a JSON plus every problem."""

    json_file: str
    categories: CocoCategories
    images: List[dict]  # valid image entries, JSON order (first entry of a duplicated id)
    annotations: Dict[int, List[dict]]  # image id -> cleaned annotations that passed
    problems: List[Problem] = field(default_factory=list)


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


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def parse_categories(data: dict, json_file: str) -> CocoCategories:
    """Check the ``categories`` list and build the contiguous id maps."""
    cats = data["categories"]
    if not cats:
        raise CocoFormatError(f"{json_file}: 'categories' is empty; list every category as {{'id': int, 'name': str}}")
    names: Dict[int, str] = {}
    for i, c in enumerate(cats):
        if not isinstance(c, dict) or not _is_int(c.get("id")) or not isinstance(c.get("name"), str):
            raise CocoFormatError(
                f"{json_file}: categories[{i}] = {c!r} must be an object with an integer 'id' and a string 'name'"
            )
        if c["id"] in names:
            raise CocoFormatError(
                f"{json_file}: category id {c['id']} appears twice ('{names[c['id']]}' and '{c['name']}'); "
                "category ids must be unique"
            )
        names[c["id"]] = c["name"]
    ids = sorted(names)
    return CocoCategories(
        dataset_ids=ids,
        thing_classes=[names[i] for i in ids],
        dataset_to_contiguous={d: k for k, d in enumerate(ids)},
        contiguous_to_dataset={k: d for k, d in enumerate(ids)},
    )


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


def _where(json_file: str, image_id: Any, ann_id: Any, index: int) -> str:
    ann = f"annotation id {ann_id}" if ann_id is not None else f"annotations[{index}] (no id)"
    return f"{json_file}: {ann} (image id {image_id})"


def _check_rle(rle: dict, image: dict) -> Optional[Tuple[str, str]]:
    if "counts" not in rle or "size" not in rle:
        return "bad_segmentation", f"RLE segmentation needs 'counts' and 'size', has {sorted(rle)}"
    size, counts = list(rle["size"]), rle["counts"]
    if size != [image["height"], image["width"]]:
        return "bad_segmentation", (
            f"RLE size {size} differs from the image's [height, width] = [{image['height']}, {image['width']}]"
        )
    if isinstance(counts, list):
        if not all(_is_int(c) and c >= 0 for c in counts) or sum(counts) != size[0] * size[1]:
            return "bad_segmentation", (
                f"uncompressed RLE counts must be non-negative integers summing to height*width = {size[0] * size[1]}"
            )
    elif not isinstance(counts, (str, bytes)):
        return "bad_segmentation", f"RLE 'counts' must be a string or a list of integers, got {type(counts).__name__}"
    return None


def _check_polygon(j: int, poly: Any) -> Optional[Tuple[str, str]]:
    if not isinstance(poly, list):
        return "bad_segmentation", f"polygon {j} must be a flat list [x0, y0, x1, y1, ...], got {type(poly).__name__}"
    try:
        arr = np.asarray(poly, dtype=np.float64)
    except (TypeError, ValueError):
        arr = None
    if arr is None or arr.ndim != 1 or not np.isfinite(arr).all():
        return "bad_segmentation", f"polygon {j} must be a flat list of finite numbers"
    if len(poly) % 2 == 1:
        return "polygon_odd_length", f"polygon {j} has an odd number of coordinates ({len(poly)}), not x, y pairs"
    if len(poly) < 6:
        return "polygon_too_short", f"polygon {j} has {len(poly) // 2} point(s); a polygon needs at least 3"
    return None


def _check_segmentation(segm: Any, image: dict) -> List[Tuple[str, str]]:
    """(reason, text) for each problem of a polygon list or an RLE dict."""
    if isinstance(segm, dict):
        found = _check_rle(segm, image)
        return [found] if found else []
    if not isinstance(segm, list):
        return [("bad_segmentation", f"segmentation must be a polygon list or an RLE dict, got {type(segm).__name__}")]
    if not segm:
        return [("bad_segmentation", "segmentation is an empty list (no polygon)")]
    return [p for p in (_check_polygon(j, poly) for j, poly in enumerate(segm)) if p is not None]


def _check_box(box: Any, image: dict) -> Tuple[Optional[List[float]], Optional[Tuple[str, str]]]:
    """(box clipped to the image as XYWH, None) or (None, (reason, text))."""
    if not isinstance(box, (list, tuple)) or len(box) != 4 or not all(_is_number(v) for v in box):
        return None, ("bad_bbox", f"bbox {box!r} must be 4 finite numbers [x, y, width, height]")
    x, y, w, h = (float(v) for v in box)
    H, W, t = image["height"], image["width"], BOX_OVERSHOOT_TOLERANCE
    if w <= 0 or h <= 0:
        return None, ("degenerate_box", f"bbox {list(box)} has zero or negative width/height")
    if x < -t or y < -t or x + w > W + t or y + h > H + t:
        return None, ("box_outside_image", (
            f"bbox {list(box)} (x2={x + w:g}, y2={y + h:g}) extends more than {t:g}px outside the "
            f"{W}x{H} (width x height) image"
        ))
    x1, y1 = min(max(x, 0.0), W), min(max(y, 0.0), H)
    x2, y2 = min(max(x + w, 0.0), W), min(max(y + h, 0.0), H)
    if x2 <= x1 or y2 <= y1:
        return None, ("degenerate_box", f"bbox {list(box)} has no area inside the {W}x{H} image")
    return [x1, y1, x2 - x1, y2 - y1], None


def _check_annotation(ann: dict, image: dict, cats: CocoCategories) -> Tuple[Optional[dict], List[Tuple[str, str]]]:
    """Validate one annotation of a known image: (cleaned record, []) or (None, [(reason, text), ...])."""
    problems: List[Tuple[str, str]] = []
    if ann["category_id"] not in cats.dataset_to_contiguous:
        problems.append(("unknown_category", (
            f"category_id {ann['category_id']!r} is not in the JSON's categories (ids {cats.dataset_ids})"
        )))
    iscrowd, area = ann.get("iscrowd", 0), ann.get("area")
    if iscrowd not in (0, 1):
        problems.append(("bad_field", f"iscrowd must be 0 or 1, got {iscrowd!r}"))
    if area is not None and not _is_number(area):
        problems.append(("bad_field", f"area must be a finite number, got {area!r}"))
    clipped, box_problem = _check_box(ann["bbox"], image)
    if box_problem:
        problems.append(box_problem)
    if "segmentation" in ann:
        problems.extend(_check_segmentation(ann["segmentation"], image))
    if problems:
        return None, problems
    out = {
        "id": ann["id"],
        "bbox": clipped,
        "category_id": cats.dataset_to_contiguous[ann["category_id"]],
        "iscrowd": int(iscrowd),
        "area": float(area) if area is not None else clipped[2] * clipped[3],
    }
    if "segmentation" in ann:
        out["segmentation"] = ann["segmentation"]
    return out, []


def _image_record_problem(img: dict) -> Optional[str]:
    missing = [k for k in ("id", "file_name", "height", "width") if k not in img]
    if missing:
        return f"missing key(s) {missing}"
    if not _is_int(img["id"]):
        return f"id must be an integer, got {img['id']!r}"
    if not isinstance(img["file_name"], str) or not img["file_name"]:
        return f"file_name must be a non-empty string, got {img['file_name']!r}"
    h, w = img["height"], img["width"]
    if not (_is_int(h) and _is_int(w) and h > 0 and w > 0):
        return f"height and width must be positive integers, got {h!r} x {w!r}"
    return None


def _scan_images(images: Sequence[Any], json_file: str) -> Tuple[Dict[int, dict], set, List[Problem]]:
    """Valid image entries by id, ids of invalid entries, and the problems found."""
    good: Dict[int, dict] = {}
    bad_ids, problems = set(), []
    for i, img in enumerate(images):
        img_id = img.get("id") if isinstance(img, dict) else None
        img_id = img_id if _is_int(img_id) else None
        where = f"{json_file}: images[{i}] (image id {img_id})"
        text = _image_record_problem(img) if isinstance(img, dict) else f"must be an object, got {type(img).__name__}"
        if text is not None:
            problems.append(Problem("bad_image_record", f"{where}: {text}", img_id, index=i))
            if img_id is not None and img_id not in good:
                bad_ids.add(img_id)
        elif img_id in good:
            problems.append(Problem("duplicate_image_id", (
                f"{where}: image id {img_id} is used again (first by '{good[img_id]['file_name']}'); "
                f"this entry ('{img['file_name']}') is ignored"
            ), img_id, index=i))
        else:
            good[img_id] = img
            bad_ids.discard(img_id)
    return good, bad_ids, problems


def scan_coco(data: dict, json_file: str) -> CocoScan:
    """Check a parsed COCO dict: every image entry and every annotation.

    Returns the valid images, the cleaned annotations grouped by image id (boxes
    clipped to the image, category ids contiguous) and every problem found.
    """
    cats = parse_categories(data, json_file)
    images, bad_image_ids, problems = _scan_images(data["images"], json_file)
    anns: Dict[int, List[dict]] = {img_id: [] for img_id in images}
    seen_ids = set()
    for i, ann in enumerate(data.get("annotations", [])):
        if not isinstance(ann, dict):
            problems.append(Problem("missing_key", (
                f"{json_file}: annotations[{i}] must be an object, got {type(ann).__name__}"
            ), index=i))
            continue
        ann_id, img_id = ann.get("id"), ann.get("image_id")
        ann_id = ann_id if _is_int(ann_id) or ann_id is None else repr(ann_id)
        img_id = img_id if _is_int(img_id) or img_id is None else repr(img_id)
        where = _where(json_file, img_id, ann_id, i)

        def problem(reason: str, text: str) -> Problem:
            return Problem(reason, f"{where}: {text}", img_id, ann_id, index=i)

        missing = [k for k in ("id", "image_id", "bbox", "category_id") if k not in ann]
        not_int = [k for k in ("id", "image_id", "category_id") if k in ann and not _is_int(ann[k])]
        if missing:
            problems.append(problem("missing_key", f"missing key(s) {missing}"))
        elif not_int:
            problems.append(problem("bad_field", f"{', '.join(not_int)} must be integer(s)"))
        elif ann_id in seen_ids:
            problems.append(problem("duplicate_annotation_id", f"annotation id {ann_id} is used more than once"))
        elif img_id in bad_image_ids:
            problems.append(problem("image_dropped", "its image record is invalid (reported separately)"))
        elif img_id not in images:
            problems.append(problem("missing_image", f"image id {img_id} is not in 'images'"))
        else:
            clean, found = _check_annotation(ann, images[img_id], cats)
            problems.extend(problem(reason, text) for reason, text in found)
            if clean is not None:
                anns[img_id].append(clean)
        if _is_int(ann.get("id")):
            seen_ids.add(ann["id"])
    return CocoScan(json_file, cats, list(images.values()), anns, problems)


def summarize_problems(problems: Sequence[Problem]) -> str:
    """One line such as "3 annotations: 2 degenerate boxes, 1 polygon with < 3 points".

    Each annotation or image record counts once, under its first problem.
    """
    first: Dict[Tuple[str, Any], str] = {}
    for k, p in enumerate(problems):
        key = (REASONS[p.reason][0], p.index if p.index is not None else f"#{k}")
        first.setdefault(key, p.reason)
    parts = []
    kinds = (("annotation", "annotation", "annotations"), ("image", "image record", "image records"))
    for kind, singular, plural in kinds:
        counts = Counter(r for r in first.values() if REASONS[r][0] == kind)
        n = sum(counts.values())
        if n:
            detail = ", ".join(f"{c} {REASONS[r][1] if c == 1 else REASONS[r][2]}" for r, c in counts.most_common())
            parts.append(f"{n} {singular if n == 1 else plural}: {detail}")
    return "; ".join(parts) if parts else "nothing"


def load_coco_json(
    json_file: str, image_root: str, dataset_name: Optional[str] = None, *, on_bad: str = "error"
) -> List[dict]:
    """Load and validate a COCO instances JSON into detgn records.

    Args:
        json_file: path of the COCO instances JSON.
        image_root: folder that the images' ``file_name`` entries are relative to.
        dataset_name: if given, the categories are recorded in that dataset's metadata
            (``thing_classes``, ``thing_dataset_id_to_contiguous_id``, ...).
        on_bad: "error" raises :class:`CocoFormatError` at the first bad annotation or
            image record; "skip" drops them and logs one summary line of counts by reason.
    Returns:
        list of records ``{"file_name", "height", "width", "image_id", "annotations"}``, one
        per valid image in JSON order (images without annotations included).
    """
    if on_bad not in ("error", "skip"):
        raise ValueError(f"on_bad must be 'error' or 'skip', got {on_bad!r}")
    start = time.perf_counter()
    json_file = os.fspath(json_file)
    data = read_coco_json(json_file)
    scan = scan_coco(data, json_file)
    try:
        _CATEGORY_CACHE[_file_key(json_file)] = scan.categories
    except OSError:
        pass
    if scan.problems:
        if on_bad == "error":
            p = scan.problems[0]
            more = f" ({len(scan.problems) - 1} more problem(s) in this file)" if len(scan.problems) > 1 else ""
            raise CocoFormatError(
                f"{p.message}{more}. Fix the JSON, or set DATASETS.ON_BAD_ANNOTATION to 'skip' to drop bad "
                f"annotations (counted in the log); `python tools/validate_dataset.py --json {json_file} "
                f"--images {image_root}` lists every problem."
            )
        logger.warning(
            "%s: skipped %s (DATASETS.ON_BAD_ANNOTATION=skip; tools/validate_dataset.py lists them with ids)",
            json_file, summarize_problems(scan.problems),
        )
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
    from .catalog import MetadataCatalog

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
