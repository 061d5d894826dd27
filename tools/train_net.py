#!/usr/bin/env python
"""Train or evaluate a detgn model (a detector, or with MODEL.META_ARCHITECTURE "ImageClassifier"
a backbone pre-trained as a classifier; see tools/pretrain_backbone.py).

    python tools/train_net.py --config fpn_gn_long.yaml [--resume] [--eval-only] [KEY VALUE ...]
    torchrun --nproc_per_node=8 tools/train_net.py --config fpn_gn_long.yaml
    python tools/train_net.py --config fpn_gn_long.yaml --num-gpus 8

Everything goes to OUTPUT_DIR: ``config.yaml`` (the resolved config), ``log.txt``
(``log.txt.rankN`` for other processes), checkpoints with a ``last_checkpoint``
pointer, ``metrics.json``, TensorBoard events, ``training_curves.png`` and the
evaluation results under ``inference/<dataset>/``. The run itself is the library's
:mod:`detgn.engine.run` (``train(cfg)``, ``evaluate(cfg)``).
"""
import os
import sys

# Runnable from a checkout without installing the package.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from detgn.engine.run import cli  # noqa: E402

if __name__ == "__main__":
    sys.exit(cli())
