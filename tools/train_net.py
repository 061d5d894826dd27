#!/usr/bin/env python
"""Train or evaluate a detgn model (a detector, or with MODEL.META_ARCHITECTURE "ImageClassifier"
a backbone pre-trained as a classifier; see tools/pretrain_backbone.py).

    python tools/train_net.py --config fpn_gn_long.yaml [--resume] [--eval-only] [KEY VALUE ...]
    torchrun --nproc_per_node=8 tools/train_net.py --config fpn_gn_long.yaml
    python tools/train_net.py --config fpn_gn_long.yaml --num-gpus 8

Everything goes to OUTPUT_DIR: ``config.yaml`` (the resolved config), ``log.txt``
(``log.txt.rankN`` for other processes), checkpoints with a ``last_checkpoint``
pointer, ``metrics.json``, TensorBoard events, ``training_curves.png`` and the
evaluation results under ``inference/<dataset>/``.
"""
from __future__ import annotations

import logging
import os
import sys
from typing import Dict

# Runnable from a checkout without installing the package.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from detgn.checkpoint import weights_digest  # noqa: E402
from detgn.config import ConfigError, load_config  # noqa: E402
from detgn.engine import (  # noqa: E402
    EvalHook,
    build_trainer,
    default_argument_parser,
    default_setup,
    init_distributed,
    launch,
)
from detgn.engine.tasks import build_test_loader_and_evaluator, build_train_loader, is_classifier  # noqa: E402
from detgn.utils import comm  # noqa: E402
from detgn.utils.errors import UserError  # noqa: E402

logger = logging.getLogger("detgn.train_net")


def setup(args):
    """Config (file + overrides), process group, logs, seeds, config dump."""
    cfg = load_config(args.config, args.opts, freeze=False)
    init_distributed(cfg.MODEL.DEVICE)
    default_setup(cfg, resume=args.resume)
    cfg.freeze()
    if comm.is_main_process():
        logger.info("Command line: %s", " ".join(sys.argv))
    return cfg


def do_test(cfg, model) -> Dict:
    """Evaluate ``model`` on every DATASETS.TEST set; results by dataset (or the one set's)."""
    from detgn.evaluation import inference_on_dataset
    from detgn.layers import log_evalnorm_state

    if comm.is_main_process():
        log_evalnorm_state(model)
    results = {}
    for name in cfg.DATASETS.TEST:
        out = os.path.join(cfg.OUTPUT_DIR, "inference", name)
        loader, evaluator = build_test_loader_and_evaluator(cfg, name, output_dir=out)
        results[name] = inference_on_dataset(model, loader, evaluator)
        if comm.is_main_process():
            logger.info("Results on %s: %s", name, _summary(results[name]))
    return results[cfg.DATASETS.TEST[0]] if len(results) == 1 else results


def _summary(res: Dict) -> str:
    parts = []
    for task, metrics in res.items():
        if isinstance(metrics, dict):
            keys = ("AP", "AP50", "AP75", "top1_err", "top5_err")
            parts.append(task + " " + " ".join(f"{k}={metrics[k]:.2f}" for k in keys if k in metrics))
    return "; ".join(parts) or str(res)


class EvalWeightsError(UserError, ValueError):
    """--eval-only without trained detector weights."""


def _eval_only_weights_hint(cfg) -> str:
    return (
        "Pass the detector's weights: --eval-only MODEL.WEIGHTS path/to/model_final.pth (a train_net.py "
        "checkpoint, a detgn:// name of trained weights listed in MODEL_ZOO.md, a Detectron model_final .pkl or "
        f"a torchvision maskrcnn_resnet50_fpn state dict), or --eval-only --resume to evaluate the newest "
        f"checkpoint in OUTPUT_DIR ({cfg.OUTPUT_DIR})."
    )


def _check_eval_weights(cfg) -> None:
    """--eval-only measures a trained detector: refuse, before any download, weights that cannot be one."""
    weights = cfg.MODEL.WEIGHTS
    if not weights:
        raise EvalWeightsError(
            "--eval-only evaluates trained detector weights, but MODEL.WEIGHTS is empty (the model would be "
            "randomly initialised). " + _eval_only_weights_hint(cfg)
        )
    if weights.startswith("detgn://ImageNetPretrained/"):
        raise EvalWeightsError(
            f"--eval-only evaluates trained detector weights, but MODEL.WEIGHTS is {weights}, the ImageNet "
            "backbone this config trains from: its RPN and RoI heads would be random. " + _eval_only_weights_hint(cfg)
        )


def _check_detector_loaded(cfg, report) -> None:
    """After loading for --eval-only: a file without RPN and box-head weights is not a detector."""
    if is_classifier(cfg):
        if not any(k.startswith("fc.") for k in report.loaded):
            raise EvalWeightsError(f"--eval-only: {cfg.MODEL.WEIGHTS} holds no classifier (fc) weights; pass a "
                                   "tools/pretrain_backbone.py checkpoint (OUTPUT_DIR/model_final.pth)")
        return
    heads = [k for k in report.loaded if k.startswith(("proposal_generator.", "roi_heads.box_predictor."))]
    if not heads:
        raise EvalWeightsError(
            f"--eval-only: {cfg.MODEL.WEIGHTS} holds no RPN or box-predictor weights ({len(report.loaded)} tensors "
            "loaded, all of the backbone), so it is a backbone, not a trained detector; evaluating it would score "
            "random heads. " + _eval_only_weights_hint(cfg)
        )


def eval_only(cfg, *, resume: bool) -> Dict:
    """--eval-only: the trained detector (MODEL.WEIGHTS, or with ``resume`` the newest good
    checkpoint of OUTPUT_DIR) built and loaded by the Predictor, evaluated on DATASETS.TEST."""
    from detgn.checkpoint import latest_good_checkpoint
    from detgn.engine import Predictor

    if not resume:
        _check_eval_weights(cfg)  # before building anything or downloading
        predictor = Predictor(cfg)
        _check_detector_loaded(cfg, predictor.weights_report)
    else:
        path = latest_good_checkpoint(cfg.OUTPUT_DIR)
        if path is None:
            raise EvalWeightsError(f"--eval-only --resume: no good checkpoint in {cfg.OUTPUT_DIR}. "
                                   + _eval_only_weights_hint(cfg))
        predictor = Predictor(cfg, weights=path)
    return do_test(cfg, predictor.model)


def main(args):
    cfg = setup(args)
    if args.eval_only:
        return eval_only(cfg, resume=args.resume)

    from detgn.data import BadImageTracker
    from detgn.modeling import build_model

    model = build_model(cfg)  # logs describe_model(model) (norms, freezing) with VERBOSE_STARTUP

    # Unreadable training files: found once, skipped from then on; checkpointed (and so
    # restored by --resume before the loader is built), reported in the results.
    bad_images = BadImageTracker.from_config(cfg)
    trainer = build_trainer(
        cfg,
        model,
        data_loader_fn=lambda start_batch: build_train_loader(cfg, start_iter=start_batch, bad_images=bad_images),
        eval_fn=(lambda: do_test(cfg, model)) if cfg.DATASETS.TEST else None,
        bad_images=bad_images,
        # PreciseBN reads the training set from its start with a loader of its own.
        precise_bn_data_fn=lambda: build_train_loader(cfg, bad_images=bad_images.copy_known_files()),
    )
    trainer.resume_or_load(cfg.MODEL.WEIGHTS, resume=args.resume, allow_pickle=cfg.MODEL.WEIGHTS_ALLOW_PICKLE)
    trainer.train()
    # Every rank logs it (log.txt.rankN): DDP must leave all ranks with the same weights.
    logger.info("Final weights digest (rank %d): %s", comm.get_rank(), weights_digest(model))
    if is_classifier(cfg) and comm.is_main_process():
        from detgn.modeling.classifier import save_trunk

        path = save_trunk(model, os.path.join(cfg.OUTPUT_DIR, "trunk_final.pth"), cfg=cfg)
        logger.info("Pre-trained trunk written to %s: detection configs load it with MODEL.WEIGHTS %s "
                    "(the same MODEL.RESNETS.* and MODEL.PIXEL_MEAN/STD)", path, path)
    eval_hooks = [h for h in trainer.hooks if isinstance(h, EvalHook)]
    results = eval_hooks[0].last_results if eval_hooks else {}
    if bad_images.num_bad_images:
        results = {**results, "skipped_images": bad_images.summary()}
    return results


def guarded_main(args):
    """``main``, printing a :class:`UserError` as its message alone (no traceback) and exiting 1.

    In a process spawned by ``--num-gpus`` the exit status tells the parent; in a plain
    or torchrun process :func:`cli` turns the exit into its return value.
    """
    try:
        return main(args)
    except UserError as e:
        where = f" (rank {comm.get_rank()})" if comm.get_world_size() > 1 else ""
        label = "Config error" if isinstance(e, ConfigError) else "Error"
        print(f"{label}{where}: {e}", file=sys.stderr, flush=True)
        raise SystemExit(2 if isinstance(e, ConfigError) else 1) from None


def cli(argv=None) -> int:
    """Parse ``argv`` and run; returns the exit status (2: config error, 1: other errors the
    message explains, printed without a traceback)."""
    args = default_argument_parser().parse_args(argv)
    if args.opts and args.opts[0] == "--":
        args.opts = args.opts[1:]
    try:
        launch(guarded_main, args.num_gpus, args=(args,))
    except SystemExit as e:  # guarded_main reported the error (config errors included)
        return int(e.code) if isinstance(e.code, int) else 1
    except torch.multiprocessing.ProcessExitedException as e:
        print(f"Error: training process {e.error_index} exited with status {e.exit_code} (its message is above)",
              file=sys.stderr)
        return e.exit_code if isinstance(e.exit_code, int) and e.exit_code > 0 else 1
    return 0


if __name__ == "__main__":
    sys.exit(cli())
