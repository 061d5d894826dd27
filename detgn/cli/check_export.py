"""Check that an exported model gives the eager model's detections (and, on a dataset, its AP).

    # export a config's model in each format to a temporary folder and compare on four image sizes
    detgn check-export --config gn_paper/mask_rcnn_R_50_FPN_GN_2x.yaml --format onnx,torch_export \\
        MODEL.WEIGHTS "" MODEL.ROI_HEADS.SCORE_THRESH_TEST 0.0
    # an existing export against its config and weights, on a dataset: detections and COCO AP
    detgn check-export --config synthetic/demo_gn_scratch.yaml --model exported/ \\
        --dataset synthetic_val MODEL.WEIGHTS output/demo/model_final.pth

    # where the numbers part: eager against onnxruntime stage by stage, then the check
    detgn check-export --config gn_paper/mask_rcnn_R_50_C4_GN_2x.yaml --stages --sizes 320x480,400x300 \
        MODEL.WEIGHTS "" MODEL.ROI_HEADS.SCORE_THRESH_TEST 0.0 INPUT.MIN_SIZE_TEST 320 INPUT.MAX_SIZE_TEST 512

The reference is ``Predictor`` in fp32 (``CPU.BF16 off``). Per image it prints the detection
counts, the largest box and score differences of the matched detections (and the box error as
a fraction of the allowed), the smallest mask IoU, and the differences explained by decisions
within precision. The export passes when every detection has its partner (same class, box
within 0.01 px + 2e-5 of its side, score within 3e-5) or a decision within precision explains
it (score threshold, top-k cut, NMS near-tie), and masks agree (IoU >= 0.99, or at most 4 cells
of their grid differ): :mod:`detgn.export.compare`. Empty MODEL.WEIGHTS uses a seeded random
initialisation made as decisive as trained weights (class logits x30, mask logits x300 with a
bias of -1, frozen-BN statistics from the first image; see make_random_weights_decisive); set
SCORE_THRESH_TEST 0 to get 100 detections from it.
Exit status: 0 equal (and AP within 0.1), 1 not, 2 a bad command line.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from typing import Optional, Sequence

import numpy as np
import torch

from detgn.cli.common import load_config_or_report
from detgn.config import parse_args_with_overrides
from detgn.engine import Predictor
from detgn.export import ExportedPredictor
from detgn.benchmark.backends import make_random_weights_decisive
from detgn.export.compare import compare_predictors
from detgn.export.exporter import export_detector, metadata_from_config
from detgn.export.predict import dataset_inputs, iter_inputs, run_predict
from detgn.utils.logger import setup_logger


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True)
    p.add_argument("--model", help="an existing export folder (default: export now, see --format)")
    p.add_argument("--format", default="onnx", help="onnx, torch_export or both: onnx,torch_export")
    p.add_argument("--backend", default=None, help="runtime backend (default: the format's)")
    p.add_argument("--sizes", default="427x640,800x600,300x1000,612x612",
                   help="HxW,HxW,... of random test images (default: four sizes, none of which resizes to the "
                        "tracing size, the resize of a 480x640 image)")
    p.add_argument("--input", help="test on these images instead (file, folder or glob)")
    p.add_argument("--dataset", help="also compare COCO AP on this registered dataset")
    p.add_argument("--stages", action="store_true",
                   help="first compare eager and onnxruntime stage by stage on each image (backbone, proposals, "
                        "pooled RoIs, box head, logits, deltas, detections): where the numbers part")
    args = parse_args_with_overrides(p, argv)
    args.format = args.format.split(",")
    if any(f not in ("onnx", "torch_export") for f in args.format):
        p.error(f"--format takes onnx and/or torch_export, got {args.format}")
    return args


def _images(args):
    if args.input:
        items, _ = iter_inputs(args.input)
        return [item.load() for item in items]
    rng = np.random.default_rng(0)
    sizes = [tuple(int(v) for v in s.lower().split("x")) for s in args.sizes.split(",")]
    return [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in sizes]


def _ap(predictor, dataset, out_json):
    from detgn.data import DatasetCatalog, MetadataCatalog
    from detgn.evaluation.coco_evaluator import evaluate_results_file

    meta = MetadataCatalog.get(dataset)
    ids = meta.get("contiguous_id_to_dataset_id")
    items, total = dataset_inputs(DatasetCatalog.get(dataset))
    run_predict(predictor, items, total, output_dir=None, results_json=out_json,
                category_ids=[int(ids[i]) for i in range(len(ids))], log=lambda s: None)
    return evaluate_results_file(meta.json_file, out_json)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    setup_logger()
    cfg = load_config_or_report(args.config, args.opts + ["CPU.BF16", "off"])
    if cfg is None:
        return 2
    torch.manual_seed(0)
    reference = Predictor(cfg)
    images = _images(args)
    if not cfg.MODEL.WEIGHTS:
        make_random_weights_decisive(reference.model, images[0])
    if args.stages:
        from detgn.export.stages import compare_stages, format_stages

        tables = compare_stages(reference.model, images, min_size_test=cfg.INPUT.MIN_SIZE_TEST,
                                max_size_test=cfg.INPUT.MAX_SIZE_TEST, image_format=cfg.INPUT.FORMAT)
        for image, rows in zip(images, tables):
            print(f"== stages, onnxruntime against PyTorch, {image.shape[0]}x{image.shape[1]}\n{format_stages(rows)}",
                  flush=True)
    ok = True
    with tempfile.TemporaryDirectory(prefix="detgn_check_") as tmp:
        folders = [args.model] if args.model else []
        for fmt in ([] if args.model else args.format):
            export_detector(reference.model, f"{tmp}/{fmt}", fmt=fmt, metadata=metadata_from_config(cfg),
                            min_size_test=cfg.INPUT.MIN_SIZE_TEST, max_size_test=cfg.INPUT.MAX_SIZE_TEST,
                            verify=False)  # the check below is the same, with its figures printed
            folders.append(f"{tmp}/{fmt}")
        for folder in folders:
            runtime = ExportedPredictor(folder, backend=args.backend)
            print(f"== {runtime}", flush=True)
            for image, m in zip(images, compare_predictors(reference, runtime, images)):
                print(f"{image.shape[0]}x{image.shape[1]}: {'OK ' if m.ok else 'BAD'} {m.summary()}", flush=True)
                ok &= m.ok
            if args.dataset:
                ap = {name: _ap(p, args.dataset, f"{tmp}/{name}.json") for name, p in
                      (("eager", reference), ("export", runtime))}
                for task in ap["eager"]:
                    diff = abs(ap["eager"][task]["AP"] - ap["export"][task]["AP"])
                    print(f"{args.dataset} {task} AP: eager {ap['eager'][task]['AP']:.3f}, export "
                          f"{ap['export'][task]['AP']:.3f} (difference {diff:.3f})", flush=True)
                    ok &= diff <= 0.1
    print("EQUAL" if ok else "NOT EQUAL", flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
