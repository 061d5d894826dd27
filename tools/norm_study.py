#!/usr/bin/env python
"""The normalization study: BN / GN / LN / IN (and BN + EvalNorm, + PreciseBN) x images per process.

    python tools/norm_study.py --preset cpu                       # ~25 min on 2 cores (the committed figure)
    python tools/norm_study.py --preset cpu --copy-to docs/norm_study
    python tools/norm_study.py --preset gpu --jobs 8              # larger scale, one cell per GPU
    python tools/norm_study.py --preset detect_gpu                # Mask R-CNN variant, 8 GPUs per cell
    python tools/norm_study.py --preset cpu --report-only         # redraw from the finished cells
    python tools/norm_study.py --preset cpu --images-per-step 0 --out output/per_process  # the paper's protocol

Makes the preset's synthetic data under ``--data`` (default ``datasets/norm_study_<preset>``),
trains every (norm, batch, seed) cell with ``tools/train_net.py``'s run in its own process
(``--jobs`` at once), evaluates BN cells four ways, and writes to ``--out`` (default
``output/norm_study_<preset>``): ``norm_study.png`` (error vs batch, the GN paper's Figure 1),
``norm_study_gap.png`` (per-layer train-vs-eval gap of BN at the smallest batch, EvalNorm's
Figure 1), ``norm_study.md`` / ``norm_study.json`` (the table), and ``runs/<cell>/`` (logs,
curves, checkpoints). Finished cells are kept: rerunning continues an interrupted study.
See :mod:`detgn.study.norm_study` for what each preset is, :mod:`detgn.study.runner` for the runs.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from detgn.study import norm_study as S  # noqa: E402
from detgn.study import runner  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="cpu", choices=sorted(S.PRESETS))
    p.add_argument("--out", help="default output/norm_study_<preset>")
    p.add_argument("--data", help="DETGN_DATASETS folder of the study's data (default datasets/norm_study_<preset>)")
    p.add_argument("--jobs", type=int, help="cells at once (default: the preset's)")
    p.add_argument("--seeds", type=int, nargs="+", help="override the preset's seeds")
    p.add_argument("--norms", nargs="+", help="override the preset's norms")
    p.add_argument("--batches", type=int, nargs="+", help="override the preset's images per process")
    p.add_argument("--images-per-step", type=int, metavar="N",
                   help="images per optimizer step in every cell, by gradient accumulation (0: each cell steps on "
                        "its own batch, the linear rule scales the LR); default: the preset's")
    p.add_argument("--report-only", action="store_true", help="only redraw the report from finished cells")
    p.add_argument("--copy-to", help="also copy the report files (not the runs) into this folder, e.g. docs/norm_study")
    p.add_argument("--cell", help=argparse.SUPPRESS)  # internal: run one cell in this process
    p.add_argument("opts", nargs=argparse.REMAINDER, default=[],
                   help="KEY VALUE config overrides added to every cell, after the options (or after -- when the last "
                        "option takes a list), e.g. --batches 32 -- SOLVER.BASE_LR 0.05; use a new --out")
    args = p.parse_args(argv)
    args.opts = [o for o in args.opts if o != "--"]
    return args


def preset_of(args) -> S.StudyPreset:
    preset = S.PRESETS[args.preset]
    changes = {k: tuple(v) for k, v in (("seeds", args.seeds), ("norms", args.norms), ("batches", args.batches)) if v}
    if args.jobs:
        changes["jobs"] = args.jobs
    if args.images_per_step is not None:
        changes["images_per_step"] = args.images_per_step
    if args.opts:
        if len(args.opts) % 2:
            raise SystemExit(f"Overrides come in KEY VALUE pairs, got {args.opts}")
        changes["overrides"] = tuple(preset.overrides) + tuple(args.opts)
    try:
        return dataclasses.replace(preset, **changes)
    except ValueError as e:
        raise SystemExit(f"[study] {e}") from None


def main(argv=None) -> int:
    args = parse_args(argv)
    preset = preset_of(args)
    args.out = os.path.abspath(args.out or os.path.join(ROOT, "output", f"norm_study_{args.preset}"))
    args.data = os.path.abspath(args.data or os.path.join(ROOT, "datasets", f"norm_study_{args.preset}"))
    if args.cell:
        return runner.run_cell(preset, args.cell, out_dir=args.out)
    if not args.report_only:
        t0 = time.time()
        runner.make_data(preset, args.data)
        print(f"[study] data ready in {args.data} ({time.time() - t0:.0f} s)", flush=True)
        runner.run_cells(preset, name=args.preset, out_dir=args.out, data_dir=args.data, cell_command=lambda cell: [
            sys.executable, os.path.abspath(__file__), "--preset", args.preset, "--out", args.out, "--data", args.data,
            "--cell", cell.name, "--images-per-step", str(preset.images_per_step), *args.opts])
    command = f"python tools/norm_study.py --preset {args.preset}"
    if preset.images_per_step != S.PRESETS[args.preset].images_per_step:
        command += f" --images-per-step {preset.images_per_step}"
    runner.write_report(preset, name=args.preset, out_dir=args.out, command=command, copy_to=args.copy_to)
    return 0


if __name__ == "__main__":
    sys.exit(main())
