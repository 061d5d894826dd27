"""Checks of a COCO instances JSON: every image record and every annotation.

:func:`scan_coco` returns the usable part of a parsed JSON and a
:class:`~detgn.data.datasets.coco_problems.Problem` for everything wrong with it; what each
kind of problem means and what the lenient policies do with it (drop, repair, or stop)
is in :mod:`detgn.data.datasets.coco_problems`. :func:`detgn.data.datasets.coco.load_coco_json` applies
``DATASETS.ON_BAD_ANNOTATION`` to the scan; ``tools/validate_dataset.py`` prints every
problem.

Conventions: a box overshooting the image by at most :data:`BOX_OVERSHOOT_TOLERANCE`
px is clipped silently (annotation tools round that way); further out it is clipped
and reported; ``"segmentation": []`` (box-only exports) means the annotation has no
segmentation (in training: box losses, no mask target; see ``DatasetMapper``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from detgn.utils.errors import UserError

from .coco_problems import REASONS, Problem, Reason, count_outcomes, summarize_problems

__all__ = [
    "BOX_OVERSHOOT_TOLERANCE",
    "CocoCategories",
    "CocoFormatError",
    "CocoScan",
    "Problem",
    "REASONS",
    "Reason",
    "count_outcomes",
    "parse_categories",
    "scan_coco",
    "summarize_problems",
]

# A box may overshoot the image by this many pixels before it counts as outside.
BOX_OVERSHOOT_TOLERANCE = 1.0
# Twice the area (px^2) under which a polygon counts as collinear (no area).
_MIN_CROSS = 1e-6


class CocoFormatError(UserError, ValueError):
    """A COCO JSON that cannot be used as written (the message says where and why)."""


@dataclass(frozen=True)
class CocoCategories:
    """Categories of a COCO JSON; contiguous ids follow ascending dataset ids."""

    dataset_ids: List[int]
    thing_classes: List[str]
    dataset_to_contiguous: Dict[int, int]
    contiguous_to_dataset: Dict[int, int]


@dataclass
class CocoScan:
    """The result of :func:`scan_coco`.

    ``annotations`` holds, per valid image, the cleaned annotations of every record
    without a structural problem, repaired (clipped boxes, degenerate polygon parts
    removed) and without the dropped ones: what the lenient policies train on.
    """

    json_file: str
    categories: CocoCategories
    images: List[dict]  # valid image entries, JSON order (first entry of a duplicated id)
    annotations: Dict[int, List[dict]]
    problems: List[Problem] = field(default_factory=list)
    has_annotations_key: bool = True
    num_annotations: int = 0  # entries in the JSON's "annotations" list

    @property
    def structural(self) -> List[Problem]:
        return [p for p in self.problems if p.action == "error"]


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


# ---------------------------------------------------------------------------- #
# One annotation
# ---------------------------------------------------------------------------- #
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


def _collinear(poly: List[float]) -> bool:
    """Whether all points of a flat ``[x0, y0, x1, y1, ...]`` list lie on one line (or one point)."""
    x0, y0, x1, y1, x2, y2 = poly[:6]
    if abs((x1 - x0) * (y2 - y0) - (y1 - y0) * (x2 - x0)) > _MIN_CROSS:
        return False  # the usual case, decided without numpy
    d = np.asarray(poly, dtype=np.float64).reshape(-1, 2)
    d = d[1:] - d[0]
    n2 = (d * d).sum(axis=1)
    if n2.max() == 0:
        return True  # a single distinct point
    far = d[int(n2.argmax())]
    return float(np.abs(d[:, 0] * far[1] - d[:, 1] * far[0]).max()) <= _MIN_CROSS


def _check_polygon(j: int, poly: Any) -> Optional[Tuple[str, str]]:
    """(reason, text) of one polygon's problem, or None."""
    if not isinstance(poly, list):
        return "bad_segmentation", f"polygon {j} must be a flat list [x0, y0, x1, y1, ...], got {type(poly).__name__}"
    try:
        # A sum is finite only if every coordinate is (a non-number raises TypeError).
        finite = math.isfinite(sum(poly))
    except (TypeError, OverflowError):
        finite = False
    if not finite:
        return "bad_segmentation", f"polygon {j} must be a flat list of finite numbers"
    if len(poly) % 2 == 1:
        return "polygon_odd_length", f"polygon {j} has an odd number of coordinates ({len(poly)}), not x, y pairs"
    if len(poly) < 6:
        return "degenerate_polygon", f"polygon {j} has {len(poly) // 2} point(s); a polygon needs at least 3"
    if _collinear(poly):
        return "degenerate_polygon", (
            f"polygon {j} {_short(poly)} has fewer than 3 distinct points or all on one line (no area)"
        )
    return None


def _short(poly: List[float], n: int = 8) -> str:
    shown = ", ".join(f"{v:g}" for v in poly[:n])
    return f"[{shown}{', ...' if len(poly) > n else ''}]"


def _check_segmentation(segm: Any, image: dict) -> Tuple[Any, List[Tuple[str, str]]]:
    """``(segmentation to keep or None, [(reason, text), ...])`` for a polygon list or an RLE dict.

    Degenerate parts of a polygon list are left out of the kept segmentation; when no
    part is left the problem is ``no_valid_polygon`` (the annotation is dropped).
    """
    if isinstance(segm, dict):
        found = _check_rle(segm, image)
        return (None, [found]) if found else (segm, [])
    if not isinstance(segm, list):
        return None, [("bad_segmentation", f"segmentation must be a polygon list or an RLE dict, got {type(segm).__name__}")]
    kept, problems = [], []
    for j, poly in enumerate(segm):
        found = _check_polygon(j, poly)
        if found is None:
            kept.append(poly)
        else:
            problems.append(found)
    if any(REASONS[r].action == "error" for r, _ in problems):
        return None, [p for p in problems if REASONS[p[0]].action == "error"]
    if problems and not kept:
        texts = "; ".join(t for _, t in problems)
        return None, [("no_valid_polygon", f"no usable polygon: {texts}")]
    return kept, problems


def _check_box(box: Any, image: dict) -> Tuple[Optional[List[float]], Optional[Tuple[str, str]]]:
    """(box clipped to the image as XYWH or None, problem or None)."""
    if not isinstance(box, (list, tuple)) or len(box) != 4 or not all(_is_number(v) for v in box):
        return None, ("bad_bbox", f"bbox {box!r} must be 4 finite numbers [x, y, width, height]")
    x, y, w, h = (float(v) for v in box)
    H, W, t = image["height"], image["width"], BOX_OVERSHOOT_TOLERANCE
    if w <= 0 or h <= 0:
        return None, ("degenerate_box", f"bbox {list(box)} has zero or negative width/height")
    x1, y1 = min(max(x, 0.0), W), min(max(y, 0.0), H)
    x2, y2 = min(max(x + w, 0.0), W), min(max(y + h, 0.0), H)
    if x2 <= x1 or y2 <= y1:
        return None, ("degenerate_box", f"bbox {list(box)} has no area inside the {W}x{H} (width x height) image")
    clipped = [x1, y1, x2 - x1, y2 - y1]
    if x < -t or y < -t or x + w > W + t or y + h > H + t:
        return clipped, ("box_outside_image", (
            f"bbox {list(box)} (x2={x + w:g}, y2={y + h:g}) extends more than {t:g}px outside the "
            f"{W}x{H} (width x height) image; clipped to {[round(v, 2) for v in clipped]}"
        ))
    return clipped, None


def _check_annotation(ann: dict, image: dict, cats: CocoCategories) -> Tuple[Optional[dict], List[Tuple[str, str]]]:
    """Validate one annotation of a known image.

    Returns ``(cleaned record or None, [(reason, text), ...])``: the record (repaired) when
    no problem is structural and none drops it.
    """
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
    segm = ann.get("segmentation")
    if segm is not None and segm != []:  # [] is how box-only exports say "no segmentation"
        segm, segm_problems = _check_segmentation(segm, image)
        problems.extend(segm_problems)
    else:
        segm = None
    if clipped is None or any(REASONS[r].action != "repair" for r, _ in problems):
        return None, problems
    out = {
        "id": ann["id"],
        "bbox": clipped,
        "category_id": cats.dataset_to_contiguous[ann["category_id"]],
        "iscrowd": int(iscrowd),
        "area": float(area) if area is not None else clipped[2] * clipped[3],
    }
    if segm is not None:
        out["segmentation"] = segm
    return out, problems


# ---------------------------------------------------------------------------- #
# The whole file
# ---------------------------------------------------------------------------- #
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


def _where(json_file: str, image_id: Any, ann_id: Any, index: int) -> str:
    ann = f"annotation id {ann_id}" if ann_id is not None else f"annotations[{index}] (no id)"
    return f"{json_file}: {ann} (image id {image_id})"


def scan_coco(data: dict, json_file: str) -> CocoScan:
    """Check a parsed COCO dict: every image entry and every annotation.

    Returns the valid images, the cleaned annotations grouped by image id (boxes
    clipped to the image, degenerate polygon parts removed, category ids contiguous,
    dropped and structurally bad annotations left out) and every problem found.
    """
    cats = parse_categories(data, json_file)
    images, bad_image_ids, problems = _scan_images(data["images"], json_file)
    anns: Dict[int, List[dict]] = {img_id: [] for img_id in images}
    seen_ids = set()
    entries = data.get("annotations", [])
    for i, ann in enumerate(entries):
        if not isinstance(ann, dict):
            problems.append(Problem("missing_key", (
                f"{json_file}: annotations[{i}] must be an object, got {type(ann).__name__}"
            ), index=i))
            continue
        ann_id, img_id = ann.get("id"), ann.get("image_id")
        ann_id = ann_id if _is_int(ann_id) or ann_id is None else repr(ann_id)
        img_id = img_id if _is_int(img_id) or img_id is None else repr(img_id)

        def problem(reason: str, text: str) -> Problem:
            return Problem(reason, f"{_where(json_file, img_id, ann_id, i)}: {text}", img_id, ann_id, index=i)

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
    return CocoScan(json_file, cats, list(images.values()), anns, problems,
                    has_annotations_key="annotations" in data, num_annotations=len(entries))
