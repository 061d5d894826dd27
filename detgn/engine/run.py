"""A whole run from a config, as library calls: :func:`train`, :func:`evaluate` and the
command line :func:`cli` that ``tools/train_net.py`` (and ``tools/pretrain_backbone.py``,
the norm study's cells) are.

    cfg = setup(default_argument_parser().parse_args(["--config", "fpn_gn_long.yaml"]))
    results = train(cfg)                  # or evaluate(cfg) for --eval-only

A run writes everything to OUTPUT_DIR: ``config.yaml`` (the resolved config), ``log.txt``
(``log.txt.rankN`` for other processes), checkpoints with a ``last_checkpoint`` pointer,
``metrics.json``, TensorBoard events, ``training_curves.png`` and the evaluation results
under ``inference/<dataset>/``; a classifier also ``trunk_final.pth``.
"""
from __future__ import annotations

import logging
import os
import sys
from typing import Dict, Optional, Sequence

import torch
from torch import nn

from detgn.checkpoint import weights_digest
from detgn.config import ConfigError, load_config
from detgn.utils import comm
from detgn.utils.errors import UserError
from detgn.utils.logger import setup_logger
from detgn.utils.stop import StopRequested

from .defaults import build_trainer, default_argument_parser, default_setup
from .hooks import EvalHook
from .launch import decide_resume, init_distributed, launch
from .preemption import REQUEUE_EXIT_CODE, PreemptionHandler
from .tasks import build_test_loader_and_evaluator, build_train_loader, is_classifier

logger = logging.getLogger(__name__)

__all__ = ["EvalWeightsError", "setup", "test", "train", "evaluate", "main", "cli", "export_trunk", "run_summary"]


def setup(args):
    """Config (file + overrides), process group, logs, seeds, config dump; the frozen config.

    ``args.resume`` becomes True when torchrun restarted the job (see
    :func:`detgn.engine.launch.decide_resume`)."""
    cfg = load_config(args.config, args.opts, freeze=False)
    dist_info = init_distributed(cfg.MODEL.DEVICE, timeout_s=cfg.DIST.TIMEOUT_SECONDS)
    os.makedirs(cfg.OUTPUT_DIR, exist_ok=True)
    setup_logger(cfg.OUTPUT_DIR, rank=dist_info.rank)  # (again in default_setup) for the decision's log line
    if not args.eval_only:
        args.resume = decide_resume(args.resume, dist_info)
    default_setup(cfg, resume=args.resume)
    cfg.freeze()
    if comm.is_main_process():
        logger.info("Command line: %s", " ".join(sys.argv))
    logger.info("Process group: %s", f"rank {dist_info.rank} of {dist_info.world_size} (local rank "
                f"{dist_info.local_rank}, {dist_info.backend}, formation {dist_info.generation} of this job, "
                f"collective timeout {cfg.DIST.TIMEOUT_SECONDS:.0f} s)" if dist_info.backend else "none (one process)")
    return cfg


def test(cfg, model: nn.Module) -> Dict:
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


def evaluate(cfg, *, resume: bool = False) -> Dict:
    """The --eval-only run: the trained model (MODEL.WEIGHTS, or with ``resume`` the newest good
    checkpoint of OUTPUT_DIR) built and loaded by the Predictor, evaluated on DATASETS.TEST.

    Raises:
        EvalWeightsError: MODEL.WEIGHTS is empty, an ImageNet backbone, or loads no heads.
    """
    from detgn.checkpoint import latest_good_checkpoint

    from .predictor import Predictor

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
    return test(cfg, predictor.model)


def train(cfg, *, resume: bool = False, model: Optional[nn.Module] = None) -> Dict:
    """Train the config's model (built here unless ``model`` is given), resuming the newest good
    checkpoint of OUTPUT_DIR with ``resume`` (else loading MODEL.WEIGHTS).

    Unreadable training files are found once and skipped from then on; the record is
    checkpointed (so ``resume`` restores it before the loader is built) and reported. A
    classifier's trunk is written to ``OUTPUT_DIR/trunk_final.pth`` at the end.

    Meanwhile SIGTERM stops the run after the current step, with that step saved
    (:mod:`detgn.engine.preemption`, ``DIST.PREEMPT_GRACE_SECONDS``).

    Returns:
        the last evaluation's results (empty without DATASETS.TEST), with ``skipped_images``
        when files were skipped.

    Raises:
        detgn.utils.stop.StopRequested: a SIGTERM stopped the run (checkpointed; exit with
            :data:`~detgn.engine.preemption.REQUEUE_EXIT_CODE`).
    """
    handler = PreemptionHandler(grace_s=cfg.DIST.PREEMPT_GRACE_SECONDS)
    handler.install()
    try:
        return _train(cfg, resume=resume, model=model)
    finally:
        handler.uninstall()


def _train(cfg, *, resume: bool, model: Optional[nn.Module]) -> Dict:
    from detgn.data import BadImageTracker
    from detgn.modeling import build_model

    if model is None:
        model = build_model(cfg)  # logs describe_model(model) (norms, freezing) with VERBOSE_STARTUP
    bad_images = BadImageTracker.from_config(cfg)
    trainer = build_trainer(
        cfg,
        model,
        data_loader_fn=lambda start_batch: build_train_loader(cfg, start_batch=start_batch, bad_images=bad_images),
        eval_fn=(lambda: test(cfg, model)) if cfg.DATASETS.TEST else None,
        bad_images=bad_images,
        # PreciseBN reads the training set from its start with a loader of its own.
        precise_bn_data_fn=lambda: build_train_loader(cfg, bad_images=bad_images.copy_known_files()),
    )
    trainer.resume_or_load(cfg.MODEL.WEIGHTS, resume=resume, allow_pickle=cfg.MODEL.WEIGHTS_ALLOW_PICKLE)
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


def export_trunk(checkpoint: str, output: str) -> str:
    """Write the trunk of a classifier checkpoint (e.g. an intermediate ``model_*.pth`` of a
    pre-training run) to ``output`` (returned), as :func:`train` writes ``trunk_final.pth``.

    Raises:
        ValueError: the file holds no ImageClassifier state.
    """
    from detgn.checkpoint.files import load_checkpoint_file
    from detgn.modeling.classifier import save_trunk

    obj = load_checkpoint_file(checkpoint, allow_pickle=False)
    state = obj.get("model", obj) if isinstance(obj, dict) else obj
    return save_trunk({k: v for k, v in state.items() if isinstance(v, torch.Tensor)}, output)


def run_summary(output_dir: str, dataset: str) -> Dict:
    """The headline figures of a run in ``output_dir``: box and mask AP and AP50 of its last
    evaluation on ``dataset`` (None where missing) and the median seconds per iteration."""
    import json

    from detgn.utils.events import read_metrics

    results_file = os.path.join(output_dir, "inference", dataset, "metrics.json")
    res = {}
    if os.path.isfile(results_file):
        with open(results_file) as f:
            res = json.load(f)
    metrics_file = os.path.join(output_dir, "metrics.json")
    records = read_metrics(metrics_file) if os.path.isfile(metrics_file) else []
    iter_times = sorted(r["time"] for r in records if r.get("time") is not None)
    return {
        "box_AP": res.get("bbox", {}).get("AP"),
        "mask_AP": res.get("segm", {}).get("AP"),
        "box_AP50": res.get("bbox", {}).get("AP50"),
        "mask_AP50": res.get("segm", {}).get("AP50"),
        "median_s_per_iter": iter_times[len(iter_times) // 2] if iter_times else None,
    }


def main(args) -> Dict:
    """One process of a run from parsed :func:`~detgn.engine.defaults.default_argument_parser` arguments."""
    cfg = setup(args)
    if args.eval_only:
        return evaluate(cfg, resume=args.resume)
    return train(cfg, resume=args.resume)


def guarded_main(args):
    """:func:`main`, printing a :class:`UserError` as its message alone (no traceback) and exiting 1;
    a run stopped by SIGTERM (checkpointed) exits with :data:`~detgn.engine.preemption.REQUEUE_EXIT_CODE`.

    In a process spawned by ``--num-gpus`` the exit status tells the parent; in a plain
    or torchrun process :func:`cli` turns the exit into its return value.
    """
    try:
        return main(args)
    except StopRequested:  # checkpointed and logged by the trainer
        raise SystemExit(REQUEUE_EXIT_CODE) from None
    except UserError as e:
        where = f" (rank {comm.get_rank()})" if comm.get_world_size() > 1 else ""
        label = "Config error" if isinstance(e, ConfigError) else "Error"
        print(f"{label}{where}: {e}", file=sys.stderr, flush=True)
        raise SystemExit(2 if isinstance(e, ConfigError) else 1) from None


def cli(argv: Optional[Sequence[str]] = None) -> int:
    """``tools/train_net.py``: parse ``argv`` and run (in ``--num-gpus`` processes); returns the
    exit status (2: config error, 1: other errors the message explains, printed without a traceback,
    143: stopped by SIGTERM after saving a checkpoint, run it again to resume)."""
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
