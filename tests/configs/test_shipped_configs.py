"""Every shipped config loads, builds, and has the parameter count stored in golden_param_counts.json.

The models are built on the ``meta`` device (shapes only: an R-101 Mask R-CNN in a
fraction of a second instead of seconds of random init); one config is also built on
the CPU to show that both builds count the same. The torchvision cross-check of the
R50-FPN BN* figure (44,397,036 parameters with 90 classes) lives in
``tests/modeling/test_param_counts.py``; here its constants are imported and compared
with the shipped YAML, so the two tests cannot drift apart.

When a config is added or deliberately changed, refresh its entry (and review it):

    python tools/model_info.py --config NAME --write-golden tests/configs/golden_param_counts.json
    python tools/model_info.py --all --write-golden tests/configs/golden_param_counts.json  # all
"""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch

from detgn.cli import model_info
from detgn.modeling import build_model_without_weights, count_parameters


REPO = Path(__file__).resolve().parents[2]
GOLDEN = Path(__file__).resolve().parent / "golden_param_counts.json"
GOLDEN_REL = GOLDEN.relative_to(REPO).as_posix()
MODELING_TESTS = REPO / "tests" / "modeling"


SHIPPED = model_info.shipped_configs(REPO / "configs")


def _golden() -> dict:
    with open(GOLDEN) as f:
        return json.load(f)["configs"]


def golden_mismatch(key: str, counts: dict, golden: dict) -> str | None:
    """Why ``counts`` ({"params", "trainable"}) of config ``key`` disagrees with ``golden``; None if it agrees."""
    fix = f"python tools/model_info.py --config {key} --write-golden {GOLDEN_REL}"
    if key not in golden:
        return (
            f"configs/{key} has no entry in {GOLDEN_REL} (it builds with {counts['params']:,} parameters, "
            f"{counts['trainable']:,} trainable). Check that figure, then add the entry with:\n    {fix}"
        )
    want = golden[key]
    if want != counts:
        return (
            f"configs/{key}: {counts['params']:,} parameters ({counts['trainable']:,} trainable) but "
            f"{GOLDEN_REL} stores {want['params']:,} ({want['trainable']:,} trainable). If the change is "
            f"deliberate, update the entry with:\n    {fix}"
        )
    return None


def _meta_counts(name: str, opts=()) -> dict:
    _, model, _ = build_model_without_weights(str(REPO / "configs" / name), opts, device="meta")
    assert all(p.device.type == "meta" for p in model.parameters())
    total, trainable = count_parameters(model)
    return {"params": total, "trainable": trainable}


def test_configs_are_found_and_base_files_skipped():
    assert "gn_paper/mask_rcnn_R_50_FPN_GN_2x.yaml" in SHIPPED
    assert not [n for n in SHIPPED if Path(n).name.startswith("Base-")]
    assert len(SHIPPED) >= 16  # Tables 4-7 plus the BN fine-tuned and SyncBN variants


def test_golden_file_lists_no_missing_config():
    golden = _golden()
    stale = sorted(set(golden) - set(SHIPPED))
    assert not stale, (
        f"{GOLDEN_REL} lists configs that no longer exist: {stale}. Regenerate it with "
        f"`python tools/model_info.py --all --write-golden {GOLDEN_REL}`"
    )
    for key, entry in golden.items():
        assert set(entry) == {"params", "trainable"} and 0 < entry["trainable"] <= entry["params"], (key, entry)


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_config_builds_with_golden_count(name):
    problem = golden_mismatch(name, _meta_counts(name), _golden())
    if problem:
        pytest.fail(problem, pytrace=False)


def test_meta_build_counts_like_a_cpu_build():
    name = "gn_paper/mask_rcnn_R_50_FPN_GN_2x.yaml"
    _, model, weights = build_model_without_weights(str(REPO / "configs" / name), device=None)
    assert weights == "detgn://ImageNetPretrained/R-50-GN"  # cleared, not loaded
    assert {p.device.type for p in model.parameters()} == {"cpu"}
    total, trainable = count_parameters(model)
    assert {"params": total, "trainable": trainable} == _golden()[name] == _meta_counts(name)


def test_paper_counts_agree_with_the_torchvision_cross_check():
    # Import the constants of tests/modeling/test_param_counts.py instead of repeating them.
    sys.path.insert(0, str(MODELING_TESTS))
    try:
        import test_param_counts as pc
    finally:
        sys.path.remove(str(MODELING_TESTS))
    golden = _golden()
    rows = {
        ("FPN", "FrozenBN", "2fc"): "gn_paper/mask_rcnn_R_50_FPN_BNstar_2x.yaml",
        ("FPN", "GN", "4conv1fc"): "gn_paper/mask_rcnn_R_50_FPN_GN_2x.yaml",
        ("C4", "GN", None): "gn_paper/mask_rcnn_R_50_C4_GN_2x.yaml",
    }
    assert set(rows) == set(pc.EXPECTED)
    for key, name in rows.items():
        assert golden[name]["params"] == pc.EXPECTED[key], (name, golden[name], pc.EXPECTED[key])
    # The shipped BN* YAML with torchvision's 90 foreground classes has torchvision's
    # layers minus its background rows (the figure the modeling test derives).
    counts = _meta_counts(rows[("FPN", "FrozenBN", "2fc")], ["MODEL.ROI_HEADS.NUM_CLASSES", "90"])
    assert counts["params"] == pc.OURS_R50_FPN_BNSTAR_2FC_90 == 44_397_036


def test_new_config_without_golden_entry_fails_with_instructions():
    counts = {"params": 10, "trainable": 8}
    msg = golden_mismatch("gn_paper/new_variant.yaml", counts, {"gn_paper/other.yaml": counts})
    assert "no entry" in msg and "10 parameters" in msg
    assert f"python tools/model_info.py --config gn_paper/new_variant.yaml --write-golden {GOLDEN_REL}" in msg
    msg = golden_mismatch("a.yaml", counts, {"a.yaml": {"params": 10, "trainable": 10}})
    assert "stores 10 (10 trainable)" in msg and "--write-golden" in msg
    assert golden_mismatch("a.yaml", counts, {"a.yaml": dict(counts)}) is None


def _tiny_configs(root: Path) -> None:
    """Two small configs (and a Base- file) in a scratch configs folder."""
    (root / "toy").mkdir(parents=True)
    base = (REPO / "configs" / "Base-RCNN-FPN.yaml").as_posix()
    (root / "toy" / "Base-Tiny.yaml").write_text(
        f'_BASE_: "{base}"\n'
        "MODEL:\n  WEIGHTS: \"detgn://ImageNetPretrained/R-50\"\n  RESNETS:\n    DEPTH: 18\n"
        "    STEM_OUT_CHANNELS: 16\n    RES2_OUT_CHANNELS: 16\n  FPN:\n    OUT_CHANNELS: 32\n"
        "  ROI_HEADS:\n    NUM_CLASSES: 3\n  ROI_BOX_HEAD:\n    FC_DIM: 64\n"
        "  ROI_MASK_HEAD:\n    CONV_DIM: 32\n"
        "  RPN:\n    POST_NMS_TOPK_TEST: 50\nTEST:\n  DETECTIONS_PER_IMAGE: 5\n"
    )
    (root / "toy" / "tiny_a.yaml").write_text('_BASE_: "Base-Tiny.yaml"\n')
    (root / "toy" / "tiny_b.yaml").write_text('_BASE_: "Base-Tiny.yaml"\nMODEL:\n  BACKBONE:\n    FREEZE_AT: 0\n')


def test_cli_prints_counts_and_writes_golden(tmp_path, monkeypatch, capsys):
    root = tmp_path / "configs"
    _tiny_configs(root)
    monkeypatch.setenv("DETGN_CONFIGS", str(root))
    golden = tmp_path / "golden.json"
    golden.write_text(json.dumps({"about": "x", "configs": {"toy/gone.yaml": {"params": 1, "trainable": 1}}}))

    infos = model_info.main(["--config", "tiny_a.yaml", "--write-golden", str(golden)])
    out = capsys.readouterr().out
    a = infos[0]
    assert a["weights_ignored"] == "detgn://ImageNetPretrained/R-50"
    assert "not loaded" in out and f"parameters: {a['params']:,} total, {a['trainable']:,} trainable" in out
    assert "backbone (ResNet): FrozenBN" in out and "frozen (stem, res2)" in out  # describe_model
    assert a["trainable"] < a["params"]
    data = json.loads(golden.read_text())["configs"]
    # --config merges: the old entry stays, the new one is added under its configs/ path.
    assert data == {"toy/gone.yaml": {"params": 1, "trainable": 1},
                    "toy/tiny_a.yaml": {"params": a["params"], "trainable": a["trainable"]}}

    infos = model_info.main(["--all", "--write-golden", str(golden)])
    out = capsys.readouterr().out
    assert [Path(i["config"]).name for i in infos] == ["tiny_a.yaml", "tiny_b.yaml"]  # Base-Tiny skipped
    b = infos[1]
    assert b["params"] == a["params"] and b["trainable"] == b["params"]  # FREEZE_AT 0 trains everything
    assert "toy/tiny_b.yaml" in out and f"{b['params']:,}" in out  # summary table
    # --all rewrites: exactly the configs that exist.
    assert json.loads(golden.read_text())["configs"] == {
        "toy/tiny_a.yaml": {"params": a["params"], "trainable": a["trainable"]},
        "toy/tiny_b.yaml": {"params": b["params"], "trainable": b["trainable"]},
    }


@pytest.mark.filterwarnings("ignore::FutureWarning")  # fvcore traces with torch.jit
def test_cli_flops(tmp_path, monkeypatch, capsys):
    root = tmp_path / "configs"
    _tiny_configs(root)
    monkeypatch.setenv("DETGN_CONFIGS", str(root))
    torch.set_num_threads(1)
    info = model_info.main(["--config", "tiny_a.yaml", "--flops", "--height", "64", "--width", "96"])[0]
    out = capsys.readouterr().out
    # The stem alone (7x7x3 -> 16 channels on a 32x48 map) costs 1.8 MFLOPs; the whole
    # tiny detector stays far below a real R50's ~hundreds of GFLOPs.
    assert 7 * 7 * 3 * 16 * 32 * 48 / 1e9 < info["gflops"] < 5.0 and math.isfinite(info["gflops"])
    assert "inference GFLOPs" in out and "64x96" in out
    assert info["weights_ignored"] == "detgn://ImageNetPretrained/R-50"


def test_write_golden_refuses_overrides(capsys):
    with pytest.raises(SystemExit):
        model_info.main(["--all", "--write-golden", "x.json", "MODEL.RESNETS.DEPTH", "101"])
    assert "overrides" in capsys.readouterr().err
