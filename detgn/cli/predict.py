"""Predict with a trained or exported detector on images, folders, globs or a video.

    detgn predict --model exported/ --input photos/ --output out/                  # onnxruntime
    detgn predict --model exported/ --backend openvino --input "frames/*.jpg" --output out/
    detgn predict --model exported/ --input clip.mp4 --output out/                 # out/clip.mp4
    detgn predict --config NAME MODEL.WEIGHTS model_final.pth --input img.jpg --output out/  # eager torch
    detgn predict --model exported/ --dataset synthetic_val --output out/ --no-draw
    detgn evaluate-results --json datasets/synthetic/annotations/instances_val.json \\
        --results out/coco_instances_results.json

Writes the pictures (masks, boxes, names, scores above --score-thresh) as ``<stem>.png``, or the
video with the detections drawn, and ``coco_instances_results.json`` with every detection (COCO
result records; with --dataset the dataset's image and category ids). Progress lines give
images/s and the ETA. An unreadable image or frame is named and skipped.

Exit status: 0 every input was predicted, 1 some were skipped (or the model could not be
loaded), 2 a bad command line or config.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Optional, Sequence

from detgn.checkpoint import CheckpointError
from detgn.cli.common import load_config_or_report
from detgn.config import parse_args_with_overrides
from detgn.data import CocoFormatError, ImageReadError
from detgn.export import ExportError
from detgn.export import predict as P
from detgn.utils.logger import setup_logger


def parse_args(argv: Optional[Sequence[str]] = None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    model = p.add_mutually_exclusive_group(required=True)
    model.add_argument("--model", metavar="DIR", help="an export folder (detgn export)")
    model.add_argument("--config", metavar="NAME_OR_PATH", help="a config (with MODEL.WEIGHTS): eager PyTorch")
    p.add_argument("--backend", default="auto", choices=["auto", "torch", "onnxruntime", "openvino"],
                   help="auto: onnxruntime for model.onnx, torch for model.pt2 or --config")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--input", metavar="PATH", help="an image, a folder, a quoted glob pattern, or a video file")
    src.add_argument("--dataset", metavar="NAME", help="a registered dataset (its image and category ids)")
    p.add_argument("--num", type=int, default=0, help="with --dataset: the first N images (<= 0: all)")
    p.add_argument("--output", required=True, metavar="DIR", help="pictures / video and the results JSON go here")
    p.add_argument("--no-draw", action="store_true", help="write only the results JSON")
    p.add_argument("--score-thresh", type=float, default=0.5, help="lowest score drawn (default 0.5)")
    p.add_argument("--threads", type=int, default=0, help="backend threads (0: its default)")
    args = parse_args_with_overrides(p, argv)
    if args.opts and not args.config:
        p.error(f"unrecognized argument(s): {' '.join(args.opts)} (KEY VALUE overrides go with --config)")
    return args


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    setup_logger()
    cfg = load_config_or_report(args.config, args.opts) if args.config else None
    if args.config and cfg is None:
        return 2
    try:
        predictor, names, category_ids = P.predictor_for(args.backend, model_dir=args.model, cfg=cfg,
                                                         num_threads=args.threads)
        video = None
        if args.dataset:
            from detgn.data import DatasetCatalog, MetadataCatalog

            records = DatasetCatalog.get(args.dataset)
            records = records[: args.num] if args.num > 0 else records
            items, total = P.dataset_inputs(records)
            ids = MetadataCatalog.get(args.dataset).get("contiguous_id_to_dataset_id")
            category_ids = [int(ids[i]) for i in range(len(ids))] if ids else category_ids
        elif P.is_video(args.input):
            items, count, fps, size = P.video_frames(args.input)
            total = count or None
            video = (os.path.join(args.output, os.path.splitext(os.path.basename(args.input))[0] + ".mp4"), fps, size)
        else:
            items, total = P.iter_inputs(args.input)
        summary = P.run_predict(
            predictor, items, total, output_dir=None if args.no_draw else args.output,
            results_json=os.path.join(args.output, "coco_instances_results.json"), class_names=names,
            category_ids=category_ids, score_thresh=args.score_thresh, video=video,
        )
    except (ExportError, CheckpointError, FileNotFoundError, CocoFormatError, ImageReadError, KeyError,
            ValueError, RuntimeError) as e:
        print(f"error: {e.args[0] if isinstance(e, KeyError) else e}", file=sys.stderr)
        return 1
    print(json.dumps(P.summary_dict(summary)), flush=True)
    if summary.failed:
        print(f"{len(summary.failed)} input(s) skipped (listed above)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
