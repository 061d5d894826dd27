"""The package a user installs: a wheel carries the configs and the ``detgn`` command and works
from any folder, without a clone (configs resolve inside the installed package)."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from detgn.config import configs_root

REPO = Path(__file__).resolve().parents[1]


def _run(cmd, **kwargs) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, **kwargs)
    assert proc.returncode == 0, f"{' '.join(map(str, cmd))} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """``pip wheel --no-deps`` of the checkout, installed with ``pip install --target``.

    The wheel is built from a copy of what setup.py reads, so the build writes nothing into
    the checkout. Returns ``(wheel, target)``.
    """
    pytest.importorskip("setuptools", reason="building the wheel needs setuptools (pip install -e '.[dev]')")
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    src.mkdir()
    for name in ("setup.py", "README.md", "LICENSE"):
        shutil.copy2(REPO / name, src / name)
    shutil.copytree(REPO / "detgn", src / "detgn", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    _run(pip + ["wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", str(tmp / "dist"), str(src)])
    (wheel,) = (tmp / "dist").glob("detgn-*.whl")
    target = tmp / "T"
    _run(pip + ["install", "--no-deps", "--no-index", "--target", str(target), str(wheel)])
    return wheel, target


def _outside_env(target: Path) -> dict:
    """An environment that sees the installed copy first, never the checkout."""
    env = dict(os.environ, PYTHONPATH=str(target), OMP_NUM_THREADS="1")
    env.pop("DETGN_CONFIGS", None)
    return env


def test_wheel_carries_every_config_and_the_command(installed):
    wheel, _ = installed
    names = set(zipfile.ZipFile(wheel).namelist())
    root = configs_root()
    shipped = {"detgn/configs/" + p.relative_to(root).as_posix() for p in root.rglob("*.yaml")}
    assert len(shipped) > 20 and shipped <= names, sorted(shipped - names)
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert "detgn = detgn.cli.main:main" in zipfile.ZipFile(wheel).read(entry_points).decode()
    assert any(n.endswith(".dist-info/licenses/LICENSE") or n.endswith(".dist-info/LICENSE") for n in names)


def test_installed_wheel_works_from_another_folder(installed, tmp_path):
    _, target = installed
    env = _outside_env(target)
    code = ("import detgn; from detgn import model_zoo; print(detgn.__file__); "
            "print(model_zoo.get_config('fpn_gn_long.yaml').SOLVER.MAX_ITER); "
            "print(model_zoo.get_config_file('fpn_gn_long.yaml'))")
    out = _run([sys.executable, "-c", code], cwd=tmp_path, env=env).stdout.split()
    assert Path(out[0]).is_relative_to(target), out
    assert out[1] == "270000"
    assert Path(out[2]).is_relative_to(target) and out[2].endswith("gn_paper/fpn_gn_long.yaml"), out

    detgn_script = target / "bin" / "detgn"
    usage = _run([sys.executable, str(detgn_script), "--help"], cwd=tmp_path, env=env).stdout
    assert all(sub in usage for sub in ("train", "eval", "export", "predict", "validate", "benchmark"))
    train_help = _run([sys.executable, str(detgn_script), "train", "--help"], cwd=tmp_path, env=env).stdout
    assert train_help.startswith("usage: detgn train") and "--config" in train_help and "--resume" in train_help
