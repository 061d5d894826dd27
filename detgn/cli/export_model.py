"""Export a trained detector for deployment: ONNX or a torch.export program, plus metadata.

    detgn export --config NAME --format onnx --output DIR MODEL.WEIGHTS model_final.pth
    detgn export --config NAME --format torch_export --output DIR MODEL.WEIGHTS model_final.pth

Writes ``DIR/model.onnx`` (or ``DIR/model.pt2``) and ``DIR/detgn_export.json``. The model takes
an image of any size (the test-time resize is applied by the runtime, as ``Predictor`` does) and
returns boxes in the original image's pixels, scores, classes and 28x28 mask probabilities that
the runtime pastes into the image. Before writing, the export is run on two image sizes other
than the one it was traced at and must give the eager model's detections (``--no-verify``
skips this). Run the result with ``detgn predict --model DIR`` or
``detgn.export.ExportedPredictor(DIR)``.

Exit status: 0 written; 1 the model could not be exported or loaded (the message names the
part); 2 a bad command line or config.
"""
from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from detgn.checkpoint import CheckpointError
from detgn.cli.common import load_config_or_report
from detgn.config import parse_args_with_overrides
from detgn.export import ExportError, export_model
from detgn.export.exporter import describe
from detgn.utils.logger import setup_logger


def parse_args(argv: Optional[Sequence[str]] = None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, metavar="NAME_OR_PATH", help="a config file or a name under configs/")
    p.add_argument("--format", default="onnx", choices=["onnx", "torch_export"], help="default onnx")
    p.add_argument("--output", required=True, metavar="DIR", help="the export folder (created)")
    p.add_argument("--no-verify", action="store_true", help="skip the check against the eager model")
    return parse_args_with_overrides(p, argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    setup_logger()
    cfg = load_config_or_report(args.config, args.opts)
    if cfg is None:
        return 2
    if not cfg.MODEL.WEIGHTS:
        print("error: give the trained weights: MODEL.WEIGHTS path/to/model_final.pth", file=sys.stderr)
        return 2
    try:
        meta = export_model(cfg, args.output, fmt=args.format, config_name=args.config, verify=not args.no_verify)
    except (ExportError, CheckpointError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"Exported {describe(meta)} to {args.output}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
