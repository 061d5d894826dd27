"""tools/demo_baseline_torchvision.py: the demo's torchvision yardstick trains and is scored."""
from __future__ import annotations

import json

import torch


def test_baseline_trains_one_step_and_reports_coco_metrics(tools_synthetic_root, tools_helpers, tmp_path, restore_process_state):
    tool = tools_helpers.load_tool("demo_baseline_torchvision")
    model = tool.build_baseline(8, min_size=(128,), max_size=160)
    norms = [m for m in model.modules() if isinstance(m, torch.nn.GroupNorm)]
    assert norms and not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    # all five stages trainable (from scratch), 4conv1fc box head and 4-conv mask head
    assert all(p.requires_grad for p in model.backbone.parameters())
    assert len([m for m in model.roi_heads.box_head.modules() if isinstance(m, torch.nn.Conv2d)]) == 4
    out = tmp_path / "baseline.json"
    # A budget shorter than one step still takes exactly one step (the clock is checked first).
    rc = tool.main(["--root", str(tools_synthetic_root / "synthetic"), "--minutes", "0.0001",
                    "--eval-images", "2", "--threads", "1", "--out", str(out)])
    assert rc == 0
    summary = json.loads(out.read_text())
    assert summary["iterations"] == 1 and summary["images_seen"] == 2
    assert summary["eval_images"] == 2
    for task in ("bbox", "segm"):
        assert 0.0 <= summary[task]["AP"] <= 100.0
