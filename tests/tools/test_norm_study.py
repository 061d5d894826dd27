"""tools/norm_study.py: the sweep's cells, the summary, and the smoke presets end to end."""
import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from detgn.study import norm_study as S

REPO = Path(__file__).resolve().parents[2]


def test_cells_and_their_overrides():
    preset = S.PRESETS["cpu"]
    cells = S.cells_of(preset)
    assert len(cells) == 4 * 5 * 3 and len({c.name for c in cells}) == 60
    assert S.Cell.from_name("BN+x_b16_s2") == S.Cell("BN+x", 16, 2)
    with pytest.raises(ValueError):
        S.Cell.from_name("GN_16_2")
    bn = S.cell_overrides(preset, S.Cell("BN", 2, 1), "/out")
    assert bn[bn.index("MODEL.RESNETS.NORM") + 1] == "BN" and bn[bn.index("MODEL.EVALNORM.ENABLED") + 1] == "True"
    assert bn[bn.index("SOLVER.IMS_PER_GPU") + 1] == "2" and bn[bn.index("SEED") + 1] == "1"
    # The CPU preset steps on 32 images in every cell: 32 / batch accumulated batches.
    assert bn[bn.index("SOLVER.GRAD_ACCUM_STEPS") + 1] == "16"
    b32 = S.cell_overrides(preset, S.Cell("GN", 32, 0), "/out")
    assert b32[b32.index("SOLVER.GRAD_ACCUM_STEPS") + 1] == "1"
    assert "32/B batches" in S.protocol(preset) and "linear rule" in S.protocol(S.PRESETS["gpu"])
    assert "SOLVER.GRAD_ACCUM_STEPS" not in S.cell_overrides(S.PRESETS["gpu"], S.Cell("GN", 2, 0), "/out")
    with pytest.raises(ValueError, match="multiple of every batch size"):
        dataclasses.replace(preset, batches=(32, 3))
    gn = S.cell_overrides(S.PRESETS["detect_gpu"], S.Cell("GN", 1, 0), "/out")
    assert all(gn[gn.index(k) + 1] == "GN" for k in S.PRESETS["detect_gpu"].norm_keys)
    assert "MODEL.EVALNORM.ENABLED" not in gn
    from detgn.config import load_config

    for name in ("cpu", "gpu", "smoke", "detect_gpu", "detect_smoke"):  # every preset's cells are valid configs
        p = S.PRESETS[name]
        opts = [o for o in S.cell_overrides(p, S.cells_of(p)[0], "/tmp/x")]
        load_config(p.config, opts)


def _fake(norm, batch, seed, scores, gaps=None):
    r = {"cell": {"norm": norm, "batch": batch, "seed": seed}, "task": "classify", "metric": "top1_err",
         "scores": scores}
    if gaps:
        r["gaps"] = gaps
    return r


def test_summary_medians_spread_and_table():
    gap = {"layers": ["a", "b"], "ema": [1.0, 2.0], "evalnorm": [0.5, 1.0], "histogram": {}}
    results = [_fake("GN", 32, s, {"GN": v}) for s, v in enumerate([8.0, 9.0, 7.0])]
    results += [_fake("BN", 2, s, {"BN": v, "BN+EvalNorm": v - 5}, gaps=gap) for s, v in enumerate([20.0, 30.0, 25.0])]
    results += [_fake("GN", 2, 0, {"GN": 8.5})]
    summary = S.summarize(results)
    assert summary["batches"] == [32, 2]
    assert summary["rows"]["GN"][32] == {"median": 8.0, "min": 7.0, "max": 9.0, "n": 3, "values": [8.0, 9.0, 7.0]}
    assert summary["rows"]["BN+EvalNorm"][2]["median"] == 20.0
    assert list(summary["rows"]) == ["BN", "BN+EvalNorm", "GN"]  # the report's order
    assert summary["gaps"][2]["ema"] == [1.0, 2.0]
    table = S.markdown_table(summary)
    assert "| GN | 8.0 (7.0-9.0) | 8.5 (8.5-8.5) |" in table and "| BN |  | 25.0 (20.0-30.0) |" in table
    assert "2: +16.5" in table  # BN - GN at 2


def _grid(values):
    """{variant: {batch: [seed values]}} -> fake cell results."""
    out = []
    for variant, per_batch in values.items():
        for b, vals in per_batch.items():
            for s, v in enumerate(vals):
                out.append(_fake(variant, b, s, {variant: v}))
    return out


def test_findings_say_which_claims_hold():
    paper_like = {
        "BN": {32: [6.0, 7.0, 6.5], 8: [7.0, 7.5, 7.2], 2: [20.0, 22.0, 21.0]},
        "BN+EvalNorm": {2: [15.0, 16.0, 15.5]},
        "GN": {32: [8.0, 9.0, 8.5], 8: [8.2, 8.8, 8.4], 2: [8.5, 9.0, 8.7]},
        "LN": {32: [10.0, 11.0, 10.5]},
        "IN": {32: [14.0, 15.0, 14.5]},
    }
    checks = S.findings(S.summarize(_grid(paper_like)))
    assert len(checks) == 9 and all(ok for ok, _ in checks), checks
    # The same from the saved norm_study.json (batch sizes become strings there).
    saved = json.loads(json.dumps(S.summarize(_grid(paper_like))))
    assert S.findings(saved) == checks
    assert S.markdown_table(saved) == S.markdown_table(S.summarize(_grid(paper_like)))
    # GN drifting with the batch and EvalNorm overshooting GN are caught.
    broken = dict(paper_like, GN={32: [8.0, 8.1, 8.2], 8: [12.0, 12.1, 12.2], 2: [16.0, 16.1, 16.2]},
                  **{"BN+EvalNorm": {2: [10.0, 10.5, 11.0]}})
    failed = [text for ok, text in S.findings(S.summarize(_grid(broken))) if not ok]
    assert any(t.startswith("GN's error varies") for t in failed)
    assert any(t.startswith("BN+EvalNorm recovers") for t in failed)
    assert "NO: GN's error varies" in S.markdown_table(S.summarize(_grid(broken)))
    # A BN baseline that is noise at its best batch (the 6-epoch recipe before 51ae41e: 6.8 / 12.1 / 19.2) is caught, although
    # its median is "within noise" of GN's.
    noisy = dict(paper_like, BN={**paper_like["BN"], 32: [6.8, 12.1, 19.2]})
    failed = [text for ok, text in S.findings(S.summarize(_grid(noisy))) if not ok]
    assert any(t.startswith("every cell at 32 and 8 is stable") and "BN at 32" in t for t in failed), failed


def _study(preset, tmp_path, *extra):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, str(REPO / "tools" / "norm_study.py"), "--preset", preset, "--out", str(tmp_path / "out"),
           "--data", str(tmp_path / "data"), *extra]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    return proc.returncode, proc.stdout + proc.stderr


def test_smoke_study_end_to_end_and_resume(tmp_path):
    rc, text = _study("smoke", tmp_path, "--copy-to", str(tmp_path / "docs"))
    assert rc == 0, text[-3000:]
    out = tmp_path / "out"
    for name in ("norm_study.png", "norm_study_gap.png", "norm_study.md", "norm_study.json"):
        assert (out / name).is_file() and (tmp_path / "docs" / name).is_file(), name
    summary = json.loads((out / "norm_study.json").read_text())
    assert set(summary["rows"]) == {"BN", "BN+EvalNorm", "BN+EvalNorm 1/B^2", "BN+PreciseBN", "GN"}
    assert all(set(cells) == {"4", "2"} for cells in summary["rows"].values())
    gaps = summary["gaps"]["2"]
    assert len(gaps["layers"]) == len(gaps["ema"]) == len(gaps["evalnorm"]) == 12  # ResNet-10: 12 BN layers
    assert gaps["histogram"]["train"] and gaps["histogram"]["ema"]
    cell = json.loads((out / "runs" / "BN_b2_s0" / "cell_result.json").read_text())
    assert len(cell["alpha_beta"]) == 12 and cell["train_seconds"] > 0
    assert (out / "runs" / "GN_b4_s0" / "training_curves.png").is_file()
    # 4 images per step in both cells: the batch-2 cells accumulate 2 batches, same schedule.
    from detgn.config import load_config

    b2, b4 = (load_config(str(out / "runs" / f"GN_b{b}_s0" / "config.yaml")) for b in (2, 4))
    assert (b2.SOLVER.IMS_PER_GPU, b2.SOLVER.GRAD_ACCUM_STEPS, b4.SOLVER.GRAD_ACCUM_STEPS) == (2, 2, 1)
    assert "accumulates 4/B batches" in (out / "norm_study.md").read_text()
    assert summary["protocol"] == S.protocol(S.PRESETS["smoke"])
    # Rerun: every cell is kept, only the report is redrawn.
    rc, text = _study("smoke", tmp_path)
    assert rc == 0 and "4 cells, 4 already done" in text, text[-2000:]


def test_detection_smoke_study(tmp_path):
    rc, text = _study("detect_smoke", tmp_path)
    assert rc == 0, text[-3000:]
    summary = json.loads((tmp_path / "out" / "norm_study.json").read_text())
    assert summary["metric"] == "box AP"
    assert set(summary["rows"]) == {"BN", "BN+EvalNorm", "BN+EvalNorm 1/B^2", "BN+PreciseBN", "GN"}
