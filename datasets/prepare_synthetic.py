#!/usr/bin/env python
"""Write the synthetic shapes dataset in COCO format.

    python datasets/prepare_synthetic.py --out datasets/synthetic --train 1000 --val 200 --seed 0

Layout: OUT/{train,val}/*.jpg and OUT/annotations/instances_{train,val}.json,
which is what the registered ``synthetic_train`` / ``synthetic_val`` datasets
read under ``$DETGN_DATASETS/synthetic``. Same seed, same bytes, whatever
``--workers``. See datasets/README.md for the categories and statistics.
"""
import argparse
import json
import os
import sys
import time

# Runnable from a checkout without installing the package.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from detgn.data.datasets.synthetic import generate_synthetic_coco  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    root = os.environ.get("DETGN_DATASETS", "datasets")
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=os.path.join(root, "synthetic"),
                   help="output directory (default: $DETGN_DATASETS/synthetic, i.e. datasets/synthetic)")
    p.add_argument("--train", type=int, default=1000, help="number of training images")
    p.add_argument("--val", type=int, default=200, help="number of validation images")
    p.add_argument("--seed", type=int, default=0, help="dataset seed (>= 0)")
    p.add_argument("--min-side", type=int, default=320, help="smallest longer image side, px")
    p.add_argument("--max-side", type=int, default=512, help="largest longer image side, px")
    p.add_argument("--workers", type=int, default=1, help="rendering processes (output does not depend on it)")
    p.add_argument("--jpeg-quality", type=int, default=90, help="JPEG quality 1-100")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if not 1 <= args.jpeg_quality <= 100:
        print(f"prepare_synthetic: --jpeg-quality must be in 1..100, got {args.jpeg_quality}", file=sys.stderr)
        return 2
    start = time.perf_counter()
    try:
        summary = generate_synthetic_coco(
            args.out, num_train=args.train, num_val=args.val, seed=args.seed, min_side=args.min_side,
            max_side=args.max_side, workers=args.workers, jpeg_quality=args.jpeg_quality)
    except ValueError as e:  # bad arguments: say which, no traceback
        print(f"prepare_synthetic: {e}", file=sys.stderr)
        return 2
    for split, stats in summary.items():
        shown = {k: (round(v, 3) if isinstance(v, float) else v) for k, v in stats.items()}
        print(f"[synthetic] {split}: {json.dumps(shown)}")
    print(f"[synthetic] done in {time.perf_counter() - start:.1f}s -> {os.path.abspath(args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
