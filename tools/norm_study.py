#!/usr/bin/env python
"""The normalization study: BN / GN / LN / IN (and BN + EvalNorm, + PreciseBN) x images per process.

    python tools/norm_study.py --preset cpu                       # ~25 min on 2 cores (the committed figure)
    python tools/norm_study.py --preset cpu --copy-to docs/norm_study
    python tools/norm_study.py --preset gpu --jobs 8              # larger scale, one cell per GPU
    python tools/norm_study.py --preset detect_gpu                # Mask R-CNN variant, 8 GPUs per cell
    python tools/norm_study.py --preset cpu --report-only         # redraw from the finished cells
    python tools/norm_study.py --preset cpu --images-per-step 0 --out output/per_process  # the paper's protocol

Makes the preset's synthetic data under ``--data`` (default ``datasets/norm_study_<preset>``),
trains every (norm, batch, seed) cell with ``tools/train_net.py`` in its own process
(``--jobs`` at once), evaluates BN cells four ways, and writes to ``--out`` (default
``output/norm_study_<preset>``): ``norm_study.png`` (error vs batch, the GN paper's Figure 1),
``norm_study_gap.png`` (per-layer train-vs-eval gap of BN at the smallest batch, EvalNorm's
Figure 1), ``norm_study.md`` / ``norm_study.json`` (the table), and ``runs/<cell>/`` (logs,
curves, checkpoints). Finished cells are kept: rerunning continues an interrupted study.
See :mod:`detgn.engine.norm_study` for what each preset is.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

TOOLS = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(TOOLS)
sys.path.insert(0, ROOT)

from detgn.engine import norm_study as S  # noqa: E402
from detgn.utils.file_io import atomic_write_json, atomic_write_text  # noqa: E402

REPORT_FILES = ("norm_study.png", "norm_study_gap.png", "norm_study.md", "norm_study.json")


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


def make_data(preset: S.StudyPreset, data_root: str) -> None:
    d = dict(preset.data)
    if preset.task == "classify":
        from detgn.data.synthetic_cls import ClsStyle, generate_synthetic_cls

        style = ClsStyle(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.pop("style", {}).items()})
        generate_synthetic_cls(os.path.join(data_root, "synthetic_cls"), style=style, workers=2, **d)
    elif not os.path.isfile(os.path.join(data_root, "synthetic", "annotations", "instances_val.json")):
        from detgn.data.synthetic import generate_synthetic_coco

        generate_synthetic_coco(os.path.join(data_root, "synthetic"), workers=2, **d)


def run_cell(args, preset: S.StudyPreset, name: str) -> int:
    """Train one cell with train_net (in this process), then evaluate it; writes cell_result.json."""
    import importlib.util

    import torch

    cell = S.Cell.from_name(name)
    run_dir = os.path.join(args.out, "runs", name)
    spec = importlib.util.spec_from_file_location("detgn_train_net", os.path.join(TOOLS, "train_net.py"))
    train_net = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(train_net)
    start = time.time()
    rc = train_net.cli(["--num-gpus", str(preset.processes), "--config", preset.config,
                        *S.cell_overrides(preset, cell, run_dir)])
    if rc:
        return rc
    seconds = time.time() - start
    from detgn.checkpoint import load_weights
    from detgn.config import load_config
    from detgn.modeling import build_model

    if preset.threads:
        torch.set_num_threads(preset.threads)
    cfg = load_config(os.path.join(run_dir, "config.yaml"),
                      ["MODEL.WEIGHTS", os.path.join(run_dir, "model_final.pth"), "VERBOSE_STARTUP", "False"])
    test = cfg.DATASETS.TEST[0]
    with open(os.path.join(run_dir, "inference", test, "metrics.json")) as f:
        final = json.load(f)
    model = build_model(cfg)
    load_weights(model, cfg.MODEL.WEIGHTS)
    result = S.cell_result(cfg, model, cell, preset, run_dir=run_dir, final=final)
    result["train_seconds"] = round(seconds, 1)
    atomic_write_json(os.path.join(run_dir, S.RESULT_FILE), result)
    return 0


def run_all(args, preset: S.StudyPreset) -> None:
    cells = S.cells_of(preset)
    todo = [c for c in cells if not os.path.isfile(os.path.join(args.out, "runs", c.name, S.RESULT_FILE))]
    print(f"[study] {args.preset}: {len(cells)} cells, {len(cells) - len(todo)} already done, {preset.jobs} at once",
          flush=True)
    start, done = time.time(), 0
    slots = list(range(preset.jobs))

    def one(cell):
        nonlocal done
        slot = slots.pop()
        env = dict(os.environ, DETGN_DATASETS=args.data, PYTHONUNBUFFERED="1")
        if preset.threads:
            env["OMP_NUM_THREADS"] = str(preset.threads)
        if preset.processes == 1 and "cuda" in preset.overrides:
            env["CUDA_VISIBLE_DEVICES"] = str(slot)
        os.makedirs(os.path.join(args.out, "runs", cell.name), exist_ok=True)
        log = os.path.join(args.out, "runs", cell.name, "cell.log")
        t0 = time.time()
        with open(log, "w") as f:
            rc = subprocess.call([sys.executable, os.path.abspath(__file__), "--preset", args.preset, "--out", args.out,
                                  "--data", args.data, "--cell", cell.name,
                                  "--images-per-step", str(preset.images_per_step), *args.opts],
                                 stdout=f, stderr=subprocess.STDOUT, env=env)
        slots.append(slot)
        done += 1
        eta = (time.time() - start) / done * (len(todo) - done)
        status = "ok" if rc == 0 else f"FAILED (exit {rc}, see {log})"
        print(f"[study] {done}/{len(todo)} {cell.name}: {status} in {time.time() - t0:.0f} s; ETA {eta / 60:.1f} min",
              flush=True)
        return rc

    with ThreadPoolExecutor(max_workers=preset.jobs) as pool:
        failures = sum(1 for rc in pool.map(one, todo) if rc)
    print(f"[study] cells finished in {(time.time() - start) / 60:.1f} min ({failures} failed)", flush=True)


def report(args, preset: S.StudyPreset) -> None:
    from detgn.utils.study_plot import plot_activation_gaps, plot_norm_study

    results = [r for r in S.load_results(os.path.join(args.out, "runs"))
               if S.Cell(**r["cell"]) in set(S.cells_of(preset))]
    if not results:
        raise SystemExit(f"[study] no finished cell under {args.out}/runs")
    summary = S.summarize(results)
    summary["preset"] = {"name": args.preset, **json.loads(json.dumps(dataclasses.asdict(preset)))}
    about = f"{preset.about}. Protocol: {S.protocol(preset)}."
    summary["protocol"] = S.protocol(preset)
    title = f"{args.preset}: {preset.about}\n" + (
        f"{preset.images_per_step} images per step in every cell (accumulated batches)" if preset.images_per_step
        else "each cell steps on its own batch (LR by the linear rule)")
    atomic_write_json(os.path.join(args.out, "norm_study.json"), summary)
    command = f"python tools/norm_study.py --preset {args.preset}"
    if preset.images_per_step != S.PRESETS[args.preset].images_per_step:
        command += f" --images-per-step {preset.images_per_step}"
    atomic_write_text(os.path.join(args.out, "norm_study.md"),
                      f"# Normalization study, preset `{args.preset}`\n\n`{command}`\n\n" + S.markdown_table(
                          summary, about=about))
    plot_norm_study(summary, os.path.join(args.out, "norm_study.png"), title=title)
    if summary["gaps"]:
        b = min(summary["gaps"])
        plot_activation_gaps(summary["gaps"][b], os.path.join(args.out, "norm_study_gap.png"), batch=b)
    print(S.markdown_table(summary, about=about), flush=True)
    if args.copy_to:
        os.makedirs(args.copy_to, exist_ok=True)
        for name in REPORT_FILES:
            if os.path.isfile(os.path.join(args.out, name)):
                shutil.copy2(os.path.join(args.out, name), os.path.join(args.copy_to, name))
        print(f"[study] report copied to {args.copy_to}", flush=True)


def main(argv=None) -> int:
    args = parse_args(argv)
    preset = preset_of(args)
    args.out = os.path.abspath(args.out or os.path.join(ROOT, "output", f"norm_study_{args.preset}"))
    args.data = os.path.abspath(args.data or os.path.join(ROOT, "datasets", f"norm_study_{args.preset}"))
    if args.cell:
        return run_cell(args, preset, args.cell)
    if not args.report_only:
        t0 = time.time()
        make_data(preset, args.data)
        print(f"[study] data ready in {args.data} ({time.time() - t0:.0f} s)", flush=True)
        run_all(args, preset)
    report(args, preset)
    return 0


if __name__ == "__main__":
    sys.exit(main())
