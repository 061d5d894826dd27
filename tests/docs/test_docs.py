"""The documentation: every config key has a line of meaning in defaults.py (so the generated
reference documents it), and the Sphinx build has no warnings."""
from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

from detgn.config.reference import config_reference_markdown, defaults_comments, key_docs, leaf_keys

REPO = Path(__file__).resolve().parents[2]


def test_every_config_key_has_a_documentation_line():
    undocumented = [d.key for d in key_docs() if not d.meaning]
    assert undocumented == [], (
        "config keys without a comment above them in detgn/config/defaults.py (the docs' reference "
        f"is generated from those comments): {undocumented}"
    )


def test_reference_lists_every_key_with_its_default():
    text = config_reference_markdown()
    keys = leaf_keys()
    assert len(keys) > 100
    missing = [k for k in keys if f"| `{k}` |" not in text]
    assert missing == []
    assert "| `MODEL.GROUP_NORM.NUM_GROUPS` | `32` |" in text


def test_comments_are_read_per_key_and_per_group():
    source = (
        "_C = CN()\n"
        "# ---------------------------------------------------------------------------- #\n"
        "# Solver\n"
        "# ---------------------------------------------------------------------------- #\n"
        "_C.SOLVER = CN()\n"
        "# Steps of the schedule,\n"
        "# in iterations.\n"
        "_C.SOLVER.STEPS = (\n"
        "    3,\n"
        ")\n"
        "_C.SOLVER.GAMMA = 0.1\n"
        "\n"
        "_C.SOLVER.UNDOCUMENTED = 1\n"
    )
    assert defaults_comments(source) == {
        "SOLVER.STEPS": "Steps of the schedule, in iterations.",
        "SOLVER.GAMMA": "Steps of the schedule, in iterations.",
    }


def test_docs_build_without_warnings(tmp_path):
    missing = [m for m in ("sphinx", "myst_parser") if importlib.util.find_spec(m) is None]
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed (pip install -e '.[dev]' or '.[docs]' installs them)")
    cmd = [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html",
           "-d", str(tmp_path / "doctrees"), str(REPO / "docs"), str(tmp_path / "html")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    reference = (tmp_path / "html" / "_generated" / "config_reference.html").read_text()
    assert "MODEL.GROUP_NORM.NUM_GROUPS" in reference and (tmp_path / "html" / "api.html").is_file()
