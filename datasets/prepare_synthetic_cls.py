#!/usr/bin/env python
"""Write the synthetic shapes classification set in the ImageNet folder layout.

    python datasets/prepare_synthetic_cls.py --out datasets/synthetic_cls --train 10000 --val 2000 --seed 0

Layout: OUT/{train,val}/<shape name>/<index:06d>.png and OUT/info.json, which is what
the registered ``synthetic_cls_train`` / ``synthetic_cls_val`` datasets read under
``$DETGN_DATASETS/synthetic_cls``. Same seed, same bytes, whatever ``--workers``;
running the same command again after an interruption writes only the missing files.
The look of the images (scale, photometrics, ...) is ``detgn.data.datasets.synthetic_cls.ClsStyle``.
"""
import argparse
import json
import os
import sys
import time

# Runnable from a checkout without installing the package.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from detgn.data.datasets.synthetic_cls import ClsStyle, generate_synthetic_cls  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    root = os.environ.get("DETGN_DATASETS", "datasets")
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=os.path.join(root, "synthetic_cls"),
                   help="output directory (default: $DETGN_DATASETS/synthetic_cls, i.e. datasets/synthetic_cls)")
    p.add_argument("--train", type=int, default=10000, help="number of training images")
    p.add_argument("--val", type=int, default=2000, help="number of validation images")
    p.add_argument("--seed", type=int, default=0, help="dataset seed (>= 0)")
    p.add_argument("--size", type=int, default=64, help="image side in pixels, 32..128")
    p.add_argument("--classes", type=int, default=8, help="number of shape classes, 2..8")
    p.add_argument("--workers", type=int, default=1, help="rendering processes (output does not depend on it)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    start = time.perf_counter()
    try:
        style = ClsStyle(size=args.size, num_classes=args.classes)
        summary = generate_synthetic_cls(args.out, num_train=args.train, num_val=args.val, seed=args.seed,
                                         style=style, workers=args.workers)
    except ValueError as e:  # bad arguments or a folder holding another set: say which, no traceback
        print(f"prepare_synthetic_cls: {e}", file=sys.stderr)
        return 2
    for split in ("train", "val"):
        shown = {k: (round(v, 2) if isinstance(v, float) else v) for k, v in summary[split].items()}
        print(f"[synthetic_cls] {split}: {json.dumps(shown)}")
    print(f"[synthetic_cls] classes: {', '.join(summary['classes'])}")
    print(f"[synthetic_cls] done in {time.perf_counter() - start:.1f}s -> {os.path.abspath(args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
