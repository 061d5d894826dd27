"""What can be wrong in a COCO instances JSON, and the one-line report of what was done about it.

:func:`detgn.data.datasets.coco_checks.scan_coco` reports each problem as a :class:`Problem`
whose reason (a key of :data:`REASONS`) has an ``action`` saying what the lenient
policies do with the record:

- ``"drop"``: the annotation describes no object in the image: a box of zero or
  negative width/height or with no area inside the image, or a polygon segmentation
  none of whose polygons has 3 distinct, non-collinear points. The real COCO 2017
  train file has two such records (annotation 918 of image 200365 and 2206849 of
  image 550395: zero-height boxes around zero-area polygons); Detectron, detectron2
  and mmdetection all train on that file by dropping them.
- ``"repair"``: the annotation is usable once repaired: a box reaching more than
  :data:`detgn.data.datasets.coco_checks.BOX_OVERSHOOT_TOLERANCE` px outside the image is clipped to it, a degenerate
  part of a multi-polygon segmentation is removed (the other parts are kept).
- ``"error"``: structural problems: malformed fields, an unknown category, an image id
  missing from ``images``, duplicate ids, invalid image records. The file is not what
  it claims to be, and guessing would hide the mistake.

:func:`summarize_problems` is the one log line of what was dropped or repaired (the
loader prints it); :func:`count_outcomes` counts records by outcome
(``tools/validate_dataset.py``).
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any, Dict, List, NamedTuple, Optional, Sequence, Tuple

__all__ = ["REASONS", "Problem", "Reason", "count_outcomes", "summarize_problems"]

# Annotation ids named per reason in a summary line before "... and N more".
_IDS_SHOWN = 10


class Reason(NamedTuple):
    """What a problem applies to (``kind``), how summaries name it, and what lenient policies do."""

    kind: str  # "annotation" or "image"
    singular: str
    plural: str
    action: str  # "drop", "repair" or "error" (see the module docstring)


REASONS: Dict[str, Reason] = {
    "missing_key": Reason("annotation", "annotation with missing keys", "annotations with missing keys", "error"),
    "bad_field": Reason("annotation", "annotation with an invalid field", "annotations with an invalid field", "error"),
    "duplicate_annotation_id": Reason("annotation", "duplicate annotation id", "duplicate annotation ids", "error"),
    "missing_image": Reason(
        "annotation", "annotation of a missing image id", "annotations of missing image ids", "error"),
    "image_dropped": Reason(
        "annotation", "annotation of an invalid image record", "annotations of invalid image records", "error"),
    "unknown_category": Reason("annotation", "unknown category_id", "unknown category_ids", "error"),
    "bad_bbox": Reason("annotation", "malformed box", "malformed boxes", "error"),
    "polygon_odd_length": Reason(
        "annotation", "polygon with an odd number of coordinates", "polygons with an odd number of coordinates",
        "error"),
    "bad_segmentation": Reason("annotation", "malformed segmentation", "malformed segmentations", "error"),
    "degenerate_box": Reason(
        "annotation", "degenerate box (no area in the image)", "degenerate boxes (no area in the image)", "drop"),
    "no_valid_polygon": Reason(
        "annotation", "segmentation without a polygon of >= 3 distinct, non-collinear points",
        "segmentations without a polygon of >= 3 distinct, non-collinear points", "drop"),
    "box_outside_image": Reason(
        "annotation", "box clipped to its image", "boxes clipped to their images", "repair"),
    "degenerate_polygon": Reason(
        "annotation", "degenerate polygon part removed", "degenerate polygon parts removed", "repair"),
    "bad_image_record": Reason("image", "invalid image record", "invalid image records", "error"),
    "duplicate_image_id": Reason("image", "duplicate image id", "duplicate image ids", "error"),
}


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

    @property
    def action(self) -> str:
        return REASONS[self.reason].action


def _record_ref(p: Problem) -> str:
    if p.ann_id is not None:
        return f"{p.ann_id} (image {p.image_id})"
    if REASONS[p.reason].kind == "image":
        return f"images[{p.index}] (id {p.image_id})"
    return f"annotations[{p.index}] (image {p.image_id})"


_VERBS = (("skipped", "error"), ("dropped", "drop"), ("repaired", "repair"))


def _outcomes(problems: Sequence[Problem]) -> Dict[str, Dict[str, List[Problem]]]:
    """verb -> reason -> the deciding problem of each record (see :func:`summarize_problems`)."""
    by_record: Dict[Tuple[str, Any], List[Problem]] = {}
    for k, p in enumerate(problems):
        key = (REASONS[p.reason].kind, p.index if p.index is not None else f"#{k}")
        by_record.setdefault(key, []).append(p)
    outcome: Dict[str, Dict[str, List[Problem]]] = {verb: {} for verb, _ in _VERBS}
    for ps in by_record.values():
        for verb, action in _VERBS:
            first = next((p for p in ps if p.action == action), None)
            if first is not None:
                outcome[verb].setdefault(first.reason, []).append(first)
                break
    return outcome


def summarize_problems(problems: Sequence[Problem]) -> str:
    """One line of what the lenient policies did, counts by reason with the records named.

    E.g. ``"dropped 2 annotations (2 degenerate boxes (no area in the image): ids 918 (image
    200365), 2206849 (image 550395)); repaired 1 annotation (1 box clipped to its image: id 5
    (image 7))"``. Each record counts once: under its first structural problem ("skipped"),
    else its first dropping problem ("dropped"), else its first repair ("repaired").
    """
    parts = []
    for verb, groups in _outcomes(problems).items():
        for kind, singular, plural in (("annotation", "annotation", "annotations"),
                                       ("image", "image record", "image records")):
            mine = {r: ps for r, ps in groups.items() if REASONS[r].kind == kind}
            n = sum(len(ps) for ps in mine.values())
            if not n:
                continue
            details = []
            for reason, ps in sorted(mine.items(), key=lambda kv: -len(kv[1])):
                label = REASONS[reason].singular if len(ps) == 1 else REASONS[reason].plural
                refs = ", ".join(_record_ref(p) for p in ps[:_IDS_SHOWN])
                more = f", ... and {len(ps) - _IDS_SHOWN} more" if len(ps) > _IDS_SHOWN else ""
                if all(p.ann_id is not None for p in ps[:_IDS_SHOWN]):
                    refs = ("id " if len(ps) == 1 else "ids ") + refs
                details.append(f"{len(ps)} {label}: {refs}{more}")
            parts.append(f"{verb} {n} {singular if n == 1 else plural} ({'; '.join(details)})")
    return "; ".join(parts) if parts else "nothing"


def count_outcomes(problems: Sequence[Problem]) -> Counter:
    """Records counted by what the lenient policies do with them: "skipped" (a structural
    problem: stops ``drop_degenerate``), "dropped" or "repaired"."""
    return Counter({verb: sum(len(ps) for ps in groups.values()) for verb, groups in _outcomes(problems).items()})
