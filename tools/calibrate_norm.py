#!/usr/bin/env python
"""Evaluation-time statistics for a trained BN model, written as a new checkpoint.

    python tools/calibrate_norm.py --config NAME --method precise_bn MODEL.WEIGHTS out/model_final.pth
    python tools/calibrate_norm.py --config NAME --method evalnorm_offline MODEL.WEIGHTS out/model_final.pth
    python tools/calibrate_norm.py --config NAME --method evalnorm_rule MODEL.WEIGHTS out/model_final.pth

- ``precise_bn``: running mean/variance of every BN layer replaced by the exact pooled
  statistics over ``--num-iter`` training batches (default ``TEST.PRECISE_BN.NUM_ITER``);
- ``evalnorm_offline``: EvalNorm's alpha, beta fitted on the frozen model over ``--num-iter``
  training batches of ``SOLVER.IMS_PER_GPU`` images (use the training batch size);
- ``evalnorm_rule``: alpha = beta = 1/B^2 from the batch size each layer recorded in training.

Writes ``--output`` (default ``OUTPUT_DIR/model_<method>.pth``) and, next to it, a config
(``.yaml``) naming those weights (with EvalNorm switched on for the EvalNorm methods), so::

    python tools/train_net.py --config OUTPUT_DIR/model_<method>.yaml --eval-only

evaluates it. Works for detectors and classifiers; FrozenBN and SyncBN are left alone.
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from detgn.config import load_config  # noqa: E402
from detgn.study.norm_calibration import METHODS  # noqa: E402
from detgn.utils.errors import UserError  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, metavar="NAME_OR_PATH", help="the config the weights were trained with")
    p.add_argument("--method", required=True, choices=METHODS)
    p.add_argument("--num-iter", type=int, default=None, help="training batches to use (default TEST.PRECISE_BN.NUM_ITER)")
    p.add_argument("--lr", type=float, default=0.02, help="Adam LR of evalnorm_offline (cosine-decayed)")
    p.add_argument("--output", default=None, help="checkpoint to write (default OUTPUT_DIR/model_<method>.pth)")
    p.add_argument("opts", nargs=argparse.REMAINDER, metavar="KEY VALUE", help="config overrides; MODEL.WEIGHTS is required")
    return p.parse_args(argv)


def calibrate(args) -> str:
    from detgn.engine import default_setup, init_distributed
    from detgn.study.norm_calibration import calibrate_weights

    cfg = load_config(args.config, args.opts, freeze=False)
    if not cfg.MODEL.WEIGHTS:
        raise UserError("Give the trained weights to calibrate: MODEL.WEIGHTS path/to/model_final.pth")
    init_distributed(cfg.MODEL.DEVICE)
    default_setup(cfg)
    cfg.freeze()
    return calibrate_weights(cfg, args.method, num_iter=args.num_iter, lr=args.lr, output=args.output,
                             config_name=args.config)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.opts and args.opts[0] == "--":
        args.opts = args.opts[1:]
    try:
        calibrate(args)
    except UserError as e:
        print(f"Error: {e}", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
