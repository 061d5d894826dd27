"""Draw a model's detections (masks, boxes, class names, scores) on images as PNGs.

    detgn visualize --config NAME MODEL.WEIGHTS model_final.pth --input img_or_dir --output out/
    detgn visualize --config NAME MODEL.WEIGHTS model_final.pth --dataset synthetic_val --num 8 --output out/

Every image goes through :class:`detgn.engine.Predictor`, so its resize and channel
order are exactly what evaluation sees; detections come back at the original size and
are drawn on the original pixels. With ``--input`` each PNG is the image with the
detections on it; with ``--dataset NAME`` the first ``--num`` images of that registered
split are drawn with the predictions (left) next to the ground truth (right).

Class names come from the dataset's metadata (``--dataset``, else the config's
first DATASETS.TEST set) when it is registered and readable, otherwise class
numbers are shown. ``KEY VALUE`` config overrides may stand anywhere on the line.
Exit status: 0 when every image was drawn, 1 when some image could not be read
(the others are still drawn), 2 for a bad command line or config.
"""
from __future__ import annotations

import argparse
import sys
from typing import List, Optional, Sequence

from detgn.checkpoint import CheckpointError
from detgn.cli.common import load_config_or_report
from detgn.config import parse_args_with_overrides
from detgn.data import CocoFormatError, DatasetCatalog, ImageReadError
from detgn.engine import Predictor
from detgn.visualization.predictions import class_names_for, list_images, visualize_dataset, visualize_files
from detgn.utils.logger import setup_logger


def argument_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Draw a detgn model's detections on images (PNG files).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=(
            "KEY VALUE config overrides may appear anywhere, e.g.\n"
            "  detgn visualize --config synthetic/demo_gn_scratch.yaml MODEL.WEIGHTS "
            "output/demo/model_final.pth --input img.jpg --output vis/\n"
            "  detgn visualize --config synthetic/demo_gn_scratch.yaml MODEL.WEIGHTS "
            "output/demo/model_final.pth --dataset synthetic_val --num 8 --output vis/"
        ),
    )
    p.add_argument("--config", required=True, metavar="NAME_OR_PATH", help="a config file or a name under configs/")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--input", metavar="IMAGE_OR_DIR", help="an image file or a folder of images")
    src.add_argument("--dataset", metavar="NAME", help="a registered dataset; ground truth is drawn beside")
    p.add_argument("--num", type=int, default=10, help="with --dataset: the first N images (<= 0: all; default 10)")
    p.add_argument("--output", required=True, metavar="DIR", help="folder for the PNG files (created)")
    p.add_argument("--score-thresh", type=float, default=0.5, help="lowest score drawn (default 0.5)")
    return p


def parse_args(argv: Optional[Sequence[str]] = None):
    """Options plus the ``KEY VALUE`` overrides (``args.opts``), wherever they stand."""
    return parse_args_with_overrides(argument_parser(), argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    setup_logger()
    cfg = load_config_or_report(args.config, args.opts)
    if cfg is None:
        return 2
    if args.dataset and args.dataset not in DatasetCatalog:
        try:
            DatasetCatalog.get(args.dataset)
        except KeyError as e:  # its message lists the registered names
            print(f"error: {e.args[0]}", file=sys.stderr)
            return 1
    try:
        # Fail on a missing input before spending time on the model.
        paths = list_images(args.input) if args.input else None
        predictor = Predictor(cfg)
        if args.dataset:
            written = visualize_dataset(cfg, predictor, args.dataset, args.output, args.num, args.score_thresh)
            failed: List[str] = []
        else:
            result = visualize_files(predictor, paths, args.output, args.score_thresh,
                                     class_names=class_names_for(cfg))
            written, failed = result["written"], result["failed"]
    except (FileNotFoundError, ImageReadError, CheckpointError, CocoFormatError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"Wrote {len(written)} PNG file(s) to {args.output}", flush=True)
    if failed:
        print(f"{len(failed)} image(s) could not be read (listed above)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
