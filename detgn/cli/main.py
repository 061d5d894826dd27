"""``detgn SUBCOMMAND [ARGS ...]``: the everyday tools as one installed command.

    detgn train --config fpn_gn_long.yaml [--resume] [KEY VALUE ...]
    detgn eval --config fpn_gn_long.yaml MODEL.WEIGHTS model_final.pth
    torchrun --nproc_per_node=8 -m detgn train --config fpn_gn_long.yaml

A subcommand takes exactly the arguments of the tool it names (``detgn export`` those of
``tools/export_model.py``); ``detgn SUBCOMMAND --help`` lists them. Its module is imported
only when it runs, so ``detgn --help`` starts without loading torch.
"""
from __future__ import annotations

import importlib
import sys
from typing import Callable, Dict, List, NamedTuple, Optional, Sequence


class Subcommand(NamedTuple):
    """Where a subcommand's entry point lives, and what it does."""

    module: str
    function: str
    summary: str
    # The script of a clone that runs the same function (tools/*.py are thin wrappers).
    tool: str
    # Arguments put before the user's (``eval`` is ``train --eval-only``).
    preset: Sequence[str] = ()


SUBCOMMANDS: Dict[str, Subcommand] = {
    "train": Subcommand("detgn.engine.run", "cli", "train a model (or evaluate it with --eval-only)",
                        "tools/train_net.py"),
    "eval": Subcommand("detgn.engine.run", "cli", "evaluate MODEL.WEIGHTS on DATASETS.TEST (train --eval-only)",
                       "tools/train_net.py", ("--eval-only",)),
    "export": Subcommand("detgn.cli.export_model", "main", "export a trained model to ONNX or torch.export",
                         "tools/export_model.py"),
    "predict": Subcommand("detgn.cli.predict", "main", "run an exported model on images, folders, videos",
                          "tools/predict.py"),
    "check-export": Subcommand("detgn.cli.check_export", "main", "compare an export with the eager model",
                               "tools/check_export.py"),
    "validate": Subcommand("detgn.cli.validate_dataset", "main", "list every problem of a COCO-format dataset",
                           "tools/validate_dataset.py"),
    "evaluate-results": Subcommand("detgn.cli.evaluate_results", "main", "score a saved COCO results file",
                                   "tools/evaluate_results.py"),
    "visualize": Subcommand("detgn.cli.visualize", "main", "draw a model's detections on images",
                            "tools/visualize.py"),
    "benchmark": Subcommand("detgn.cli.benchmark", "cli", "time training, inference or data loading",
                            "tools/benchmark.py"),
    "model-info": Subcommand("detgn.cli.model_info", "cli", "parameter counts, norms and FLOPs of a config",
                             "tools/model_info.py"),
}

PROG = "detgn"


def usage() -> str:
    """The text of ``detgn --help``."""
    width = max(len(n) for n in SUBCOMMANDS)
    lines = [f"usage: {PROG} SUBCOMMAND [ARGS ...]", "", "Mask R-CNN with Group Normalization.", "",
             "subcommands:"]
    lines += [f"  {name:<{width}}  {sub.summary}" for name, sub in SUBCOMMANDS.items()]
    lines += ["", f"'{PROG} SUBCOMMAND --help' gives a subcommand's arguments;",
              f"'{PROG} --version' prints the version."]
    return "\n".join(lines)


def entry_point(name: str) -> Callable[[List[str]], int]:
    """The function that runs subcommand ``name`` (its module is imported here)."""
    sub = SUBCOMMANDS[name]
    return getattr(importlib.import_module(sub.module), sub.function)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run ``detgn`` with ``argv`` (default ``sys.argv[1:]``); returns the exit status."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(usage())
        return 0 if args else 2
    if args[0] == "--version":
        from detgn import __version__

        print(f"{PROG} {__version__}")
        return 0
    name, rest = args[0], args[1:]
    if name not in SUBCOMMANDS:
        print(f"{PROG}: unknown subcommand '{name}'\n\n{usage()}", file=sys.stderr)
        return 2
    run = entry_point(name)
    # argparse names the program after argv[0]: "detgn train", not "detgn", in usage and errors
    # (and the training log records this command line).
    saved, sys.argv = sys.argv, [f"{PROG} {name}", *rest]
    try:
        return run([*SUBCOMMANDS[name].preset, *rest])
    finally:
        sys.argv = saved


if __name__ == "__main__":
    sys.exit(main())
