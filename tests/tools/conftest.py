"""Fixtures of the end-to-end tool tests: a tiny synthetic dataset and a tiny model config.

``tools_synthetic_root`` (``scope="session"``): a ``DETGN_DATASETS``-style folder holding
``synthetic/`` (8 train images, 5 val images of 128-160 px), so the built-in
``synthetic_train`` / ``synthetic_val`` names resolve to it in this process (with
``monkeypatch.setenv``) and in subprocesses (with :func:`subprocess_env`). Five val
images split 3 + 2 over two ranks, so uneven sharding is exercised.

``tiny_config``: writes a YAML of a GN Mask R-CNN small enough to train on the CPU
in a fraction of a second per step: ResNet-18 trunk with 32-channel stem and res2,
32-channel FPN, GN with 8 groups everywhere, nothing frozen, 2conv1fc box head and
2-conv mask head of 32 channels, few RoIs and proposals, inputs ~128 px, one image
per step, no data workers, one thread.

The helpers are attributes of the ``tools_helpers`` fixture (not imported from this
file: several ``conftest.py`` modules exist and the module name would be ambiguous).
"""
from __future__ import annotations

import importlib.util
import json
import logging
import os
import socket
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Dict, List

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
NUM_TRAIN, NUM_VAL = 8, 5

TINY_YAML = """\
_BASE_: "Base-RCNN-FPN.yaml"
MODEL:
  DEVICE: "cpu"
  WEIGHTS: ""
  BACKBONE:
    FREEZE_AT: 0
  RESNETS:
    DEPTH: 18
    NORM: "GN"
    STEM_OUT_CHANNELS: 32
    RES2_OUT_CHANNELS: 32
  FPN:
    NORM: "GN"
    OUT_CHANNELS: 32
  GROUP_NORM:
    NUM_GROUPS: 8
  ANCHOR_GENERATOR:
    SIZES: [[16], [32], [64], [128], [256]]
  RPN:
    BATCH_SIZE_PER_IMAGE: 64
    PRE_NMS_TOPK_TRAIN: 200
    PRE_NMS_TOPK_TEST: 100
    POST_NMS_TOPK_TRAIN: 100
    POST_NMS_TOPK_TEST: 50
  ROI_HEADS:
    NUM_CLASSES: 8
    BATCH_SIZE_PER_IMAGE: 32
  ROI_BOX_HEAD:
    NUM_CONV: 2
    NUM_FC: 1
    CONV_DIM: 32
    FC_DIM: 64
    NORM: "GN"
  ROI_MASK_HEAD:
    NUM_CONV: 2
    CONV_DIM: 32
    NORM: "GN"
DATASETS:
  TRAIN: ("synthetic_train",)
  TEST: ("synthetic_val",)
INPUT:
  MIN_SIZE_TRAIN: (128,)
  MAX_SIZE_TRAIN: 160
  MIN_SIZE_TEST: 128
  MAX_SIZE_TEST: 160
DATALOADER:
  NUM_WORKERS: 0
SOLVER:
  IMS_PER_GPU: 1
  REFERENCE_IMS_PER_BATCH: 1
  SCALE_SCHEDULE: False
  BASE_LR: 0.01
  MAX_ITER: 6
  STEPS: (4,)
  WARMUP_ITERS: 2
  CHECKPOINT_PERIOD: 2
TEST:
  EVAL_PERIOD: 0
  DETECTIONS_PER_IMAGE: 20
SEED: 0
VERBOSE_STARTUP: False
LOG_PERIOD: 1
CPU:
  NUM_THREADS: 1
"""


@pytest.fixture(scope="session")
def tools_synthetic_root(tmp_path_factory) -> Path:
    from detgn.data.datasets.synthetic import generate_synthetic_coco

    root = tmp_path_factory.mktemp("detgn_datasets")
    generate_synthetic_coco(str(root / "synthetic"), num_train=NUM_TRAIN, num_val=NUM_VAL, seed=0,
                            min_side=128, max_side=160, log=None)
    return root


@pytest.fixture(scope="session")
def tiny_config(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("tiny_config") / "tiny_gn_mask_rcnn.yaml"
    path.write_text(TINY_YAML)
    return path


@pytest.fixture
def use_synthetic_root(tools_synthetic_root, monkeypatch) -> Path:
    """The built-in synthetic_* names resolve to the tiny set in this process."""
    monkeypatch.setenv("DETGN_DATASETS", str(tools_synthetic_root))
    return tools_synthetic_root


@pytest.fixture
def restore_process_state():
    """In-process tool runs reconfigure the 'detgn' logger and torch's thread count; undo it."""
    log = logging.getLogger("detgn")
    saved = (list(log.handlers), log.propagate, log.level)
    threads = torch.get_num_threads()
    yield
    for h in list(log.handlers):
        if h not in saved[0]:
            log.removeHandler(h)
            h.close()
    log.propagate, log.level = saved[1], saved[2]
    torch.set_num_threads(threads)


def load_tool(name: str):
    """Import ``tools/<name>.py`` as a module (tools/ is not a package)."""
    spec = importlib.util.spec_from_file_location(f"detgn_tool_{name}_under_test", REPO / "tools" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def subprocess_env(datasets_root: Path, **extra: str) -> Dict[str, str]:
    """Environment of a tool subprocess: the tiny datasets, the checkout on the path, one thread."""
    env = dict(os.environ, DETGN_DATASETS=str(datasets_root), PYTHONPATH=str(REPO), OMP_NUM_THREADS="1",
               MKL_NUM_THREADS="1")
    for var in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(var, None)  # a stray torchrun variable would make a plain run wait for peers
    env.update(extra)
    return env


def train_net_cmd(config: Path, output_dir: Path, *opts, resume: bool = False) -> List[str]:
    cmd = [sys.executable, str(REPO / "tools" / "train_net.py"), "--config", str(config)]
    if resume:
        cmd.append("--resume")
    return cmd + ["OUTPUT_DIR", str(output_dir), *[str(o) for o in opts]]


def start(cmd: List[str], env: Dict[str, str], log_file: Path) -> subprocess.Popen:
    """Start ``cmd`` with stdout and stderr going to ``log_file`` (no pipe to fill up)."""
    f = open(log_file, "w")
    try:
        return subprocess.Popen(cmd, env=env, cwd=str(REPO), stdout=f, stderr=subprocess.STDOUT)
    finally:
        f.close()  # the child holds its own descriptor


def finish(proc: subprocess.Popen, log_file: Path, timeout: float) -> tuple:
    """Wait for ``proc`` (killing it past ``timeout``); returns (exit status, output)."""
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        pytest.fail(f"{proc.args} ran past {timeout} s; output:\n{Path(log_file).read_text()[-4000:]}")
    return proc.returncode, Path(log_file).read_text()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def final_weights(output_dir: Path) -> Dict[str, torch.Tensor]:
    return torch.load(Path(output_dir) / "model_final.pth", map_location="cpu", weights_only=True)["model"]


def assert_same_weights(actual: Dict[str, torch.Tensor], expected: Dict[str, torch.Tensor]) -> None:
    assert actual.keys() == expected.keys()
    for k in expected:
        # Same ops on one thread: bit-identical in practice; float tolerance is the promise.
        torch.testing.assert_close(actual[k], expected[k], rtol=1e-5, atol=1e-6, msg=k)


def dataset_image_ids(root: Path, split: str) -> List[int]:
    data = json.loads((Path(root) / "synthetic" / "annotations" / f"instances_{split}.json").read_text())
    return [im["id"] for im in data["images"]]


def tail(text: str, n: int = 4000) -> str:
    return text[-n:]


@pytest.fixture(scope="session")
def tools_helpers() -> SimpleNamespace:
    return SimpleNamespace(
        REPO=REPO, NUM_TRAIN=NUM_TRAIN, NUM_VAL=NUM_VAL, load_tool=load_tool, subprocess_env=subprocess_env,
        train_net_cmd=train_net_cmd, start=start, finish=finish, free_port=free_port,
        final_weights=final_weights, assert_same_weights=assert_same_weights,
        dataset_image_ids=dataset_image_ids, tail=tail,
    )

