"""Report every problem in a COCO-format dataset, then exit 1 if there was any.

    detgn validate --json instances.json --images dir [--workers 8] [--quick]

Checks (the same rules ``load_coco_json`` applies, but listing all of them with ids):
bad annotations by reason (missing keys, degenerate or out-of-image boxes, polygons
with < 3 distinct points or an odd number of coordinates, malformed RLE, unknown
categories, annotations of missing images, duplicate annotation ids), invalid or
duplicate image records, files with no ``annotations`` (image-info files such as
``image_info_test2017.json``, which cannot be trained or evaluated on), and image files
that are missing, undecodable, or whose size differs from the JSON. Images without
annotations and box-only annotations (no segmentation: no mask target in training) are listed
as information, not as problems. The summary says which
problems the default ``DATASETS.ON_BAD_ANNOTATION`` (drop_degenerate) drops or repairs
by itself and which would stop loading.
Exit code: 0 clean, 1 problems found, 2 the JSON itself cannot be read.
"""
from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from detgn.data.datasets.coco_validate import validate


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", required=True, help="COCO instances JSON")
    parser.add_argument("--images", required=True, help="folder the JSON's file_name entries are relative to")
    parser.add_argument("--no-images", action="store_true", help="skip opening the image files")
    parser.add_argument("--quick", action="store_true",
                        help="read only image headers (sizes) instead of decoding every image")
    parser.add_argument("--workers", type=int, default=1, help="processes for the image checks")
    args = parser.parse_args(argv)
    return validate(args.json, args.images, check_files=not args.no_images, quick=args.quick,
                    workers=max(1, args.workers))


if __name__ == "__main__":
    sys.exit(main())
