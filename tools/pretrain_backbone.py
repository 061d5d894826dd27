#!/usr/bin/env python
"""Pre-train a detection backbone (the project's ResNet, any depth, width and norm) as an
image classifier on an ImageFolder dataset (ImageNet layout), then use it in any detection config.

    python tools/pretrain_backbone.py --config classification/R50_GN_imagenet.yaml
    torchrun --nproc_per_node=8 tools/pretrain_backbone.py --config classification/R50_GN_imagenet.yaml
    python tools/pretrain_backbone.py --config classification/synthetic_cls_R18_GN.yaml   # on the CPU
    python tools/pretrain_backbone.py --export OUTPUT_DIR/model_0004999.pth --output trunk.pth

Training is ``tools/train_net.py`` (:func:`detgn.engine.run.cli`) with an ``ImageClassifier`` config: the same linear LR
rule over processes x ``SOLVER.IMS_PER_GPU`` (x ``SOLVER.GRAD_ACCUM_STEPS``: a larger step on
fewer GPUs; BN still normalises ``IMS_PER_GPU`` images), atomic checkpoints and exact ``--resume``,
hooks, ``metrics.json`` and ``training_curves.png``; evaluation gives top-1/top-5 error. At
the end it writes ``OUTPUT_DIR/trunk_final.pth``, which ``MODEL.WEIGHTS`` loads into a
detection config with the same ``MODEL.RESNETS.*`` (FPN or C4). ``--export`` writes the trunk
of any classifier checkpoint (e.g. an intermediate one).
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def export(checkpoint: str, output: str) -> int:
    from detgn.engine.run import export_trunk

    try:
        export_trunk(checkpoint, output)
    except ValueError as e:
        print(f"Error: {checkpoint}: {e}", file=sys.stderr)
        return 1
    print(f"Wrote {output}: use it with MODEL.WEIGHTS {output}")
    return 0


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--export" in argv:
        p = argparse.ArgumentParser(description="write the trunk of a classifier checkpoint")
        p.add_argument("--export", required=True, metavar="CHECKPOINT")
        p.add_argument("--output", required=True)
        args = p.parse_args(argv)
        return export(args.export, args.output)
    from detgn.engine.run import cli

    return cli(argv)


if __name__ == "__main__":
    sys.exit(main())
