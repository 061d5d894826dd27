"""The full report on a COCO-format dataset: every problem of its JSON (by the rules
``load_coco_json`` applies, with ids) and of its image files, and what training would do
about them. ``tools/validate_dataset.py`` is the command line.
"""
from __future__ import annotations

import os
import sys
from collections import defaultdict
from multiprocessing import Pool
from typing import Optional, Tuple

from ..mapper import ImageReadError, read_image
from .coco import REASONS, CocoFormatError, read_coco_json, scan_coco
from .coco_problems import count_outcomes

__all__ = ["FILE_REASONS", "check_image_file", "validate"]

# reason -> heading, for problems of the image files themselves.
FILE_REASONS = {
    "missing_image_file": "missing image files",
    "corrupt_image_file": "unreadable or corrupt image files",
    "image_size_mismatch": "image files whose size differs from the JSON",
}


def check_image_file(job: Tuple[int, str, int, int, bool]) -> Optional[Tuple[str, int, str]]:
    """``(image_id, path, height, width, quick)`` -> ``(reason, image_id, message)`` or None."""
    image_id, path, height, width, quick = job
    if not os.path.isfile(path):
        return "missing_image_file", image_id, f"image id {image_id}: {path}: file not found"
    try:
        if quick:
            from PIL import Image  # header only: size without decoding the pixels

            with Image.open(path) as im:
                w, h = im.size
        else:
            h, w = read_image(path, image_id=image_id).shape[:2]
    except (ImageReadError, OSError, SyntaxError) as e:  # PIL raises SyntaxError for some bad headers
        return "corrupt_image_file", image_id, f"image id {image_id}: {e}"
    if (h, w) != (height, width):
        return (
            "image_size_mismatch",
            image_id,
            f"image id {image_id}: {path} is {w}x{h} (width x height) but the JSON says {width}x{height}",
        )
    return None


def _strip_prefix(message: str, json_file: str) -> str:
    prefix = f"{json_file}: "
    return message[len(prefix):] if message.startswith(prefix) else message


def validate(json_file: str, image_root: str, *, check_files: bool = True, quick: bool = False,
             workers: int = 1, out=sys.stdout) -> int:
    """Print the report for one dataset; return the exit code (0, 1 or 2)."""
    print(f"Validating {json_file} (images under {image_root})", file=out)
    try:
        data = read_coco_json(json_file)
        scan = scan_coco(data, json_file)
    except CocoFormatError as e:
        print(f"FATAL: {e}", file=out)
        return 2
    print(f"  {len(data['images'])} image records, {scan.num_annotations} annotations, {len(scan.categories.dataset_ids)} categories",
          file=out)

    groups = defaultdict(list)
    if not scan.has_annotations_key:
        groups["files without annotations"].append(
            "no 'annotations' key: an image-info file (like image_info_test2017.json), not an instances file; "
            "it cannot be used to train or evaluate")
    elif scan.num_annotations == 0:
        groups["files without annotations"].append("'annotations' is empty: nothing to train or evaluate on")
    for p in scan.problems:
        groups[REASONS[p.reason].plural].append(_strip_prefix(p.message, json_file))
    if check_files:
        jobs = [(img["id"], os.path.join(image_root, img["file_name"]), img["height"], img["width"], quick)
                for img in scan.images]
        if workers > 1 and len(jobs) > 1:
            with Pool(workers) as pool:
                results = pool.map(check_image_file, jobs, chunksize=max(1, len(jobs) // (workers * 8)))
        else:
            results = [check_image_file(j) for j in jobs]
        for r in results:
            if r is not None:
                groups[FILE_REASONS[r[0]]].append(r[2])

    n_problems = sum(len(v) for v in groups.values())
    if n_problems:
        print(f"PROBLEMS ({n_problems})", file=out)
        for heading, messages in groups.items():
            print(f"  {heading} ({len(messages)}):", file=out)
            for m in messages:
                print(f"    {m}", file=out)
    empty = [img["id"] for img in scan.images if all(a["iscrowd"] for a in scan.annotations[img["id"]])]
    if empty:
        shown = ", ".join(str(i) for i in empty[:50]) + (" ..." if len(empty) > 50 else "")
        print(f"INFO: {len(empty)} image(s) without a non-crowd annotation (kept at test time, "
              f"filtered in training by DATALOADER.FILTER_EMPTY_ANNOTATIONS): image ids {shown}", file=out)
    box_only = [(a["id"], img_id) for img_id, anns in scan.annotations.items() for a in anns
                if not a["iscrowd"] and "segmentation" not in a]
    if box_only:
        shown = ", ".join(f"{a} (image {i})" for a, i in box_only[:50]) + (" ..." if len(box_only) > 50 else "")
        print(f"INFO: {len(box_only)} box-only annotation(s) (no segmentation, e.g. \"segmentation\": []) in "
              f"{len({i for _, i in box_only})} image(s): with MODEL.MASK_ON they take part in the RPN and box losses "
              f"and are left out of the mask loss (no mask target is made for them): ids {shown}", file=out)
    if n_problems:
        counts = ", ".join(f"{len(v)} {k}" for k, v in groups.items())
        print(f"SUMMARY: {n_problems} problem(s): {counts}.", file=out)
        print(f"  {_policy_note(scan, groups)}", file=out)
        return 1
    kept = sum(len(v) for v in scan.annotations.values())
    files = "image files checked" if check_files else "image files NOT checked (--no-images)"
    masks = f" ({len(box_only)} of them box-only, without a mask)" if box_only else ""
    print(f"SUMMARY: clean: {len(scan.images)} images, {kept} annotations{masks}, {files}.", file=out)
    return 0


def _policy_note(scan, groups) -> str:
    """What training with the default DATASETS.ON_BAD_ANNOTATION would do with these problems."""
    n = count_outcomes(scan.problems)
    stops = n["skipped"] + len(groups.get("files without annotations", []))
    handled = (f"The default DATASETS.ON_BAD_ANNOTATION drop_degenerate drops {n['dropped']} annotation(s) that "
               f"describe no object and repairs {n['repaired']} (boxes clipped to the image, degenerate polygon "
               "parts removed) by itself, naming them in the log")
    if stops:
        handled += (f"; {stops} record(s) would stop loading: fix them, or train with DATASETS.ON_BAD_ANNOTATION "
                    "skip (structurally bad records dropped too)")
    files = sum(len(v) for k, v in groups.items() if k in FILE_REASONS.values())
    if files:
        handled += (f"; {files} image file problem(s): training skips unreadable files (each counted once, "
                    "DATALOADER.MAX_BAD_IMAGES), evaluation stops on them")
    return handled + "."
