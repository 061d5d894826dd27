"""Training: the step loop and its hooks, multi-process launch, config-driven set-up, a whole run
(``train(cfg)``, ``evaluate(cfg)``); the Predictor."""
from .defaults import build_hooks, build_trainer, default_argument_parser, default_setup, nan_hint
from .hooks import CurvePlot, EvalHook, LRScheduler, PeriodicCheckpointer, PeriodicWriter, PreciseBN, flatten_results
from .launch import DistInfo, create_ddp_model, init_distributed, launch, seed_for_rank
from .predictor import Predictor, build_and_load_model
from .run import evaluate, train
from .trainer import HookBase, NonFiniteLossError, Trainer

__all__ = [
    "build_hooks",
    "build_trainer",
    "default_argument_parser",
    "default_setup",
    "nan_hint",
    "CurvePlot",
    "EvalHook",
    "LRScheduler",
    "PeriodicCheckpointer",
    "PeriodicWriter",
    "PreciseBN",
    "flatten_results",
    "DistInfo",
    "create_ddp_model",
    "init_distributed",
    "launch",
    "seed_for_rank",
    "Predictor",
    "build_and_load_model",
    "evaluate",
    "train",
    "HookBase",
    "NonFiniteLossError",
    "Trainer",
]
