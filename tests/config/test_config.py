"""Config loading: _BASE_ inheritance, name resolution, overrides and strict errors."""
from pathlib import Path

import pytest

from detgn.config import ConfigError, get_cfg, load_config, resolve_config_path


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.fixture
def cfg_root(tmp_path, monkeypatch):
    root = tmp_path / "configs"
    monkeypatch.setenv("DETGN_CONFIGS", str(root))
    write(root / "Base-A.yaml", "MODEL:\n  RESNETS:\n    DEPTH: 101\nSOLVER:\n  BASE_LR: 0.01\n  STEPS: [10, 20]\n")
    write(root / "sub" / "Base-B.yaml", "_BASE_: ../Base-A.yaml\nSOLVER:\n  BASE_LR: 0.03\n  MAX_ITER: 50\n")
    write(root / "sub" / "deep" / "child.yaml", "_BASE_: ../Base-B.yaml\nMODEL:\n  RESNETS:\n    NORM: GN\n")
    return root


def test_defaults_have_paper_values():
    cfg = get_cfg()
    assert cfg.SOLVER.WEIGHT_DECAY == 1e-4 and cfg.SOLVER.WEIGHT_DECAY_NORM == 0.0
    assert cfg.SOLVER.IMS_PER_GPU == 1 and cfg.SOLVER.REFERENCE_IMS_PER_BATCH == 16
    assert cfg.MODEL.PIXEL_MEAN == [102.9801, 115.9465, 122.7717]
    assert cfg.MODEL.GROUP_NORM.NUM_GROUPS == 32 and cfg.MODEL.GROUP_NORM.EPSILON == 1e-5
    assert cfg.SOLVER.WARMUP_ITERS == 500 and abs(cfg.SOLVER.WARMUP_FACTOR - 1 / 3) < 1e-12


def test_every_default_key_has_a_comment():
    src = (Path(__file__).resolve().parents[2] / "detgn" / "config" / "defaults.py").read_text().splitlines()
    missing = []
    for i, line in enumerate(src):
        if line.startswith("_C.") and "= CN()" not in line and " = " in line:
            j = i - 1
            while j >= 0 and src[j].startswith("_C.") and "= CN()" not in src[j]:
                j -= 1  # keys grouped under one comment
            if j < 0 or not src[j].lstrip().startswith("#"):
                missing.append(line)
    assert not missing, f"keys without a comment above: {missing}"


def test_inheritance_chain_of_three(cfg_root):
    cfg = load_config("child.yaml")
    assert cfg.MODEL.RESNETS.DEPTH == 101  # from the grand-parent
    assert cfg.SOLVER.BASE_LR == 0.03  # parent overrides grand-parent
    assert cfg.SOLVER.MAX_ITER == 50
    assert cfg.SOLVER.STEPS == (10, 20)  # list in YAML becomes the default's tuple
    assert cfg.MODEL.RESNETS.NORM == "GN"
    assert cfg.is_frozen()


def test_overrides_and_type_coercion(cfg_root):
    cfg = load_config("child.yaml", ["SOLVER.BASE_LR", "0.5", "SOLVER.STEPS", "(1, 2)", "OUTPUT_DIR", "123",
                                     "SOLVER.MAX_ITER", "7", "SOLVER.WARMUP_FACTOR", "1"])
    assert cfg.SOLVER.BASE_LR == 0.5 and cfg.SOLVER.STEPS == (1, 2)
    assert cfg.OUTPUT_DIR == "123" and cfg.SOLVER.MAX_ITER == 7
    assert cfg.SOLVER.WARMUP_FACTOR == 1.0 and isinstance(cfg.SOLVER.WARMUP_FACTOR, float)


def test_name_resolution_from_any_directory(cfg_root, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert resolve_config_path("child.yaml") == cfg_root / "sub" / "deep" / "child.yaml"
    assert resolve_config_path("child") == cfg_root / "sub" / "deep" / "child.yaml"
    assert resolve_config_path("sub/Base-B.yaml") == cfg_root / "sub" / "Base-B.yaml"


def test_ambiguous_name_lists_candidates(cfg_root):
    write(cfg_root / "other" / "child.yaml", "SOLVER:\n  BASE_LR: 0.1\n")
    with pytest.raises(ConfigError) as e:
        resolve_config_path("child.yaml")
    assert "ambiguous" in str(e.value)
    assert "sub/deep/child.yaml" in str(e.value) and "other/child.yaml" in str(e.value)


def test_missing_name_suggests_close_ones(cfg_root):
    with pytest.raises(ConfigError) as e:
        resolve_config_path("chld.yaml")
    assert "chld.yaml" in str(e.value) and "child.yaml" in str(e.value)


def test_cycle_rejected(cfg_root):
    write(cfg_root / "c1.yaml", "_BASE_: c2.yaml\n")
    write(cfg_root / "c2.yaml", "_BASE_: c1.yaml\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_config("c1.yaml")


def test_unknown_key_in_yaml_names_key_file_and_suggestion(cfg_root):
    bad = write(cfg_root / "bad.yaml", "_BASE_: Base-A.yaml\nSOLVER:\n  BASE_LRR: 0.1\n")
    with pytest.raises(ConfigError) as e:
        load_config("bad.yaml")
    msg = str(e.value)
    assert "SOLVER.BASE_LRR" in msg and str(bad) in msg and "SOLVER.BASE_LR" in msg


def test_unknown_key_inherited_names_the_base_file(cfg_root):
    base = write(cfg_root / "badbase.yaml", "MODEL:\n  RESNET:\n    DEPTH: 50\n")
    write(cfg_root / "kid.yaml", "_BASE_: badbase.yaml\n")
    with pytest.raises(ConfigError) as e:
        load_config("kid.yaml")
    assert "MODEL.RESNET" in str(e.value) and str(base) in str(e.value)


def test_unknown_override_key(cfg_root):
    with pytest.raises(ConfigError) as e:
        load_config("child.yaml", ["SOLVER.MAX_ITERS", "10"])
    assert "SOLVER.MAX_ITERS" in str(e.value) and "SOLVER.MAX_ITER" in str(e.value)
    assert "command-line" in str(e.value)


def test_wrong_type_names_key_and_both_types(cfg_root):
    write(cfg_root / "wt.yaml", "SOLVER:\n  MAX_ITER: fast\n")
    with pytest.raises(ConfigError) as e:
        load_config("wt.yaml")
    msg = str(e.value)
    assert "SOLVER.MAX_ITER" in msg and "int" in msg and "str" in msg
    with pytest.raises(ConfigError, match="MODEL.MASK_ON.*bool.*int"):
        load_config(None, ["MODEL.MASK_ON", "3"])


def test_invalid_yaml_names_file(cfg_root):
    f = write(cfg_root / "broken.yaml", "SOLVER: [unclosed\n")
    with pytest.raises(ConfigError) as e:
        load_config("broken.yaml")
    assert str(f) in str(e.value)


def test_gn_groups_exactly_one(cfg_root):
    with pytest.raises(ConfigError, match="NUM_GROUPS"):
        load_config(None, ["MODEL.GROUP_NORM.DIM_PER_GP", "16"])
    cfg = load_config(None, ["MODEL.GROUP_NORM.DIM_PER_GP", "16", "MODEL.GROUP_NORM.NUM_GROUPS", "-1"])
    assert cfg.MODEL.GROUP_NORM.DIM_PER_GP == 16


def test_bad_norm_name(cfg_root):
    with pytest.raises(ConfigError, match="MODEL.FPN.NORM"):
        load_config(None, ["MODEL.FPN.NORM", "GroupNorm"])


def test_odd_override_count():
    with pytest.raises(ConfigError, match="pairs"):
        load_config(None, ["SOLVER.BASE_LR"])


def test_shipped_configs_load():
    root = Path(__file__).resolve().parents[2] / "configs"
    files = sorted(root.rglob("*.yaml"))
    assert files, "no configs shipped"
    for f in files:
        load_config(str(f))
