"""Running a normalization study: its data, its cells (one process each) and its report.

``tools/norm_study.py`` is the command line: it picks the preset (:mod:`.norm_study`) and calls
:func:`make_data`, :func:`run_cells` (which starts one process per cell, each calling
:func:`run_cell`) and :func:`write_report`.
"""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, List, Optional

from detgn.utils.file_io import atomic_write_bytes, atomic_write_json, atomic_write_text

from . import norm_study as S

__all__ = ["REPORT_FILES", "make_data", "run_cell", "run_cells", "write_report"]

REPORT_FILES = ("norm_study.png", "norm_study_gap.png", "norm_study.md", "norm_study.json")


def make_data(preset: S.StudyPreset, data_root: str) -> None:
    """The preset's synthetic set under ``data_root`` (a ``DETGN_DATASETS`` folder); kept if made already."""
    d = dict(preset.data)
    if preset.task == "classify":
        from detgn.data.datasets.synthetic_cls import ClsStyle, generate_synthetic_cls

        style = ClsStyle(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.pop("style", {}).items()})
        generate_synthetic_cls(os.path.join(data_root, "synthetic_cls"), style=style, workers=2, **d)
    elif not os.path.isfile(os.path.join(data_root, "synthetic", "annotations", "instances_val.json")):
        from detgn.data.datasets.synthetic import generate_synthetic_coco

        generate_synthetic_coco(os.path.join(data_root, "synthetic"), workers=2, **d)


def run_cell(preset: S.StudyPreset, name: str, *, out_dir: str) -> int:
    """Train cell ``name`` (:func:`detgn.engine.run.cli`, in ``preset.processes`` processes), then
    evaluate it (:func:`~.norm_study.cell_result`); writes ``runs/<name>/cell_result.json``.

    Returns:
        the training's exit status (0: done).
    """
    import torch

    from detgn.config import load_config
    from detgn.engine import build_and_load_model
    from detgn.engine.run import cli

    cell = S.Cell.from_name(name)
    run_dir = os.path.join(out_dir, "runs", name)
    start = time.time()
    rc = cli(["--num-gpus", str(preset.processes), "--config", preset.config, *S.cell_overrides(preset, cell, run_dir)])
    if rc:
        return rc
    seconds = time.time() - start
    if preset.threads:
        torch.set_num_threads(preset.threads)
    cfg = load_config(os.path.join(run_dir, "config.yaml"),
                      ["MODEL.WEIGHTS", os.path.join(run_dir, "model_final.pth"), "VERBOSE_STARTUP", "False"])
    test = cfg.DATASETS.TEST[0]
    with open(os.path.join(run_dir, "inference", test, "metrics.json")) as f:
        final = json.load(f)
    model, _ = build_and_load_model(cfg)
    result = S.cell_result(cfg, model, cell, preset, run_dir=run_dir, final=final)
    result["train_seconds"] = round(seconds, 1)
    atomic_write_json(os.path.join(run_dir, S.RESULT_FILE), result)
    return 0


def run_cells(preset: S.StudyPreset, *, name: str, out_dir: str, data_dir: str,
              cell_command: Callable[[S.Cell], List[str]]) -> int:
    """Run every unfinished cell of ``preset`` (named ``name``; ``preset.jobs`` at once), each as the process
    ``cell_command(cell)`` (which must call :func:`run_cell`) with ``DETGN_DATASETS=data_dir``,
    its output in ``runs/<cell>/cell.log``. Returns the number of cells that failed."""
    cells = S.cells_of(preset)
    todo = [c for c in cells if not os.path.isfile(os.path.join(out_dir, "runs", c.name, S.RESULT_FILE))]
    print(f"[study] {name}: {len(cells)} cells, {len(cells) - len(todo)} already done, {preset.jobs} at once", flush=True)
    start, done = time.time(), 0
    slots = list(range(preset.jobs))

    def one(cell):
        nonlocal done
        slot = slots.pop()
        env = dict(os.environ, DETGN_DATASETS=data_dir, PYTHONUNBUFFERED="1")
        if preset.threads:
            env["OMP_NUM_THREADS"] = str(preset.threads)
        if preset.processes == 1 and "cuda" in preset.overrides:
            env["CUDA_VISIBLE_DEVICES"] = str(slot)
        os.makedirs(os.path.join(out_dir, "runs", cell.name), exist_ok=True)
        log = os.path.join(out_dir, "runs", cell.name, "cell.log")
        t0 = time.time()
        with open(log, "w") as f:
            rc = subprocess.call(cell_command(cell), stdout=f, stderr=subprocess.STDOUT, env=env)
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
    return failures


def write_report(preset: S.StudyPreset, *, name: str, out_dir: str, command: str,
                 copy_to: Optional[str] = None) -> None:
    """``norm_study.{json,md,png}`` and ``norm_study_gap.png`` in ``out_dir`` from the finished cells
    of ``preset`` (named ``name``; ``command`` is shown in the table), also copied to ``copy_to``."""
    from .plot import plot_activation_gaps, plot_norm_study

    results = [r for r in S.load_results(os.path.join(out_dir, "runs"))
               if S.Cell(**r["cell"]) in set(S.cells_of(preset))]
    if not results:
        raise SystemExit(f"[study] no finished cell under {out_dir}/runs")
    summary = S.summarize(results)
    summary["preset"] = {"name": name, **json.loads(json.dumps(dataclasses.asdict(preset)))}
    about = f"{preset.about}. Protocol: {S.protocol(preset)}."
    summary["protocol"] = S.protocol(preset)
    title = f"{name}: {preset.about}\n" + (
        f"{preset.images_per_step} images per step in every cell (accumulated batches)" if preset.images_per_step
        else "each cell steps on its own batch (LR by the linear rule)")
    atomic_write_json(os.path.join(out_dir, "norm_study.json"), summary)
    atomic_write_text(os.path.join(out_dir, "norm_study.md"),
                      f"# Normalization study, preset `{name}`\n\n`{command}`\n\n" + S.markdown_table(
                          summary, about=about))
    plot_norm_study(summary, os.path.join(out_dir, "norm_study.png"), title=title)
    if summary["gaps"]:
        b = min(summary["gaps"])
        plot_activation_gaps(summary["gaps"][b], os.path.join(out_dir, "norm_study_gap.png"), batch=b)
    print(S.markdown_table(summary, about=about), flush=True)
    if copy_to:
        os.makedirs(copy_to, exist_ok=True)
        for file in REPORT_FILES:
            if os.path.isfile(os.path.join(out_dir, file)):
                with open(os.path.join(out_dir, file), "rb") as f:
                    atomic_write_bytes(os.path.join(copy_to, file), f.read())
        print(f"[study] report copied to {copy_to}", flush=True)

