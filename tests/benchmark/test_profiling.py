"""tools/benchmark.py --profile and --modes: the profile of a real Trainer step names where the
time goes (GN, convolution, RoIAlign, the model's parts, the sampler, the optimizer), and the
mode comparison runs each mode as asked (bf16 / channels-last as the mode says)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from detgn.benchmark.profiling import categorize

REPO = Path(__file__).resolve().parents[2]
SMALL = ["MODEL.RPN.PRE_NMS_TOPK_TRAIN", "200", "MODEL.RPN.POST_NMS_TOPK_TRAIN", "100", "CPU.NUM_THREADS", "1"]


@pytest.mark.parametrize("op, category", [
    ("aten::native_group_norm", "GroupNorm"),
    ("aten::native_group_norm_backward", "GroupNorm"),
    ("aten::mkldnn_convolution", "convolution"),
    ("aten::convolution_backward", "convolution"),
    ("torchvision::roi_align", "RoIAlign"),
    ("torchvision::_roi_align_backward", "RoIAlign"),
    ("torchvision::nms", "NMS"),
    ("aten::binary_cross_entropy_with_logits", "losses"),
    ("aten::addmm", "linear / matmul"),
    ("aten::frobnicate", "other"),
])
def test_operators_fall_in_their_category(op, category):
    assert categorize(op) == category


def _bench(tmp_path, *args):
    cmd = [sys.executable, str(REPO / "tools" / "benchmark.py"), "--config", "synthetic/demo_gn_scratch.yaml",
           "--height", "96", "--width", "128", "--warmup", "1", "--iters", "1", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def test_profile_of_a_training_step_names_the_hot_parts(tmp_path):
    _bench(tmp_path, "--task", "train", "--profile", str(tmp_path / "p.md"), *SMALL)
    result = json.loads((tmp_path / "p.json").read_text())
    assert result["task"] == "train" and result["steps"] == 1
    for category in ("GroupNorm", "convolution", "RoIAlign"):
        assert result["categories"][category] > 0, result["categories"]
    for scope in ("model.backbone", "model.proposal_generator", "model.roi_heads.mask_head",
                  "roi_heads.label_and_sample_proposals", "mask_rcnn_targets", "rpn.label_and_sample_anchors"):
        assert result["scopes"].get(scope, 0) > 0, (scope, result["scopes"])
    assert any(s.startswith("Optimizer.step") for s in result["scopes"]), result["scopes"]
    # The operators' self times add up to no more than the steps took (one thread).
    assert 0 < result["self_cpu_ms_per_step"] <= 1.2 * result["step_ms_median"]
    table = (tmp_path / "p.md").read_text()
    assert "| GroupNorm |" in table and "`aten::native_group_norm" in table


def test_modes_run_as_named_each_in_its_own_process(tmp_path):
    out = _bench(tmp_path, "--task", "inference", "--modes", "fp32,autocast_cl", *SMALL)
    rows = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert [r["mode"] for r in rows] == ["fp32", "autocast_cl"]
    assert [(r["bf16"], r["channels_last"]) for r in rows] == [(False, False), (True, True)]
    assert rows[0]["ratio_to_fp32"] == 1.0  # printed to 4 decimals:
    assert rows[1]["ratio_to_fp32"] == pytest.approx(rows[1]["s_per_image"] / rows[0]["s_per_image"], rel=5e-3)
    assert all(r["peak_mem_mb"] > 0 and r["s_per_image"] > 0 for r in rows)
