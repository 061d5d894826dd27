"""Detectron-format ImageNet backbones (``R-50-GN.pkl`` and friends), written as the real files are.

The model zoo's ``ImageNetPretrained/47261647/R-50-GN.pkl`` is a Python 2 ``cPickle``
(protocol 2) of ``{"blobs": {name: float32 ndarray}}`` with Detectron's ResNet blob
names: ``conv1_w`` + ``conv1_gn_{s,b}`` for the stem, ``res{2..5}_{i}_branch{2a,2b,2c}_w``
+ ``_gn_{s,b}`` and ``res{k}_0_branch1_w`` + ``_gn_{s,b}`` for the blocks (no conv
biases), and the ImageNet classifier ``pred_w`` (1000 x 2048) / ``pred_b``. GN models put
the stride on the 3x3 conv. The names and shapes here are derived from the ResNet
definition itself, not from detgn's model, so a mismatch on either side shows up when
the file is loaded. Values are random but of a trained network's scale.

``write_imagenet_gn_pkl(path, depth=50)`` writes such a file (about 100 MB for R-50);
``zoo_mirror(root)`` puts it where ``DETGN_MODEL_ZOO_MIRROR=root`` serves
``detgn://ImageNetPretrained/R-50-GN``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, Iterator, Tuple

import numpy as np
from py2_cpickle import py2_dumps

__all__ = ["imagenet_blob_shapes", "write_imagenet_gn_pkl", "zoo_mirror", "R50_GN_ZOO_PATH"]

R50_GN_ZOO_PATH = "ImageNetPretrained/47261647/R-50-GN.pkl"
_BLOCKS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}


def imagenet_blob_shapes(depth: int = 50) -> Iterator[Tuple[str, Tuple[int, ...]]]:
    """(blob name, shape) of every weight of a GN ResNet-``depth`` ImageNet model."""
    yield "conv1_w", (64, 3, 7, 7)
    yield "conv1_gn_s", (64,)
    yield "conv1_gn_b", (64,)
    in_ch = 64
    for stage, blocks in zip(range(2, 6), _BLOCKS[depth]):
        width = 64 * 2 ** (stage - 2)
        out_ch = 4 * width
        for i in range(blocks):
            prefix = f"res{stage}_{i}"
            if i == 0:
                yield f"{prefix}_branch1_w", (out_ch, in_ch, 1, 1)
                yield f"{prefix}_branch1_gn_s", (out_ch,)
                yield f"{prefix}_branch1_gn_b", (out_ch,)
            for branch, shape in (("2a", (width, in_ch if i == 0 else out_ch, 1, 1)), ("2b", (width, width, 3, 3)),
                                  ("2c", (out_ch, width, 1, 1))):
                yield f"{prefix}_branch{branch}_w", shape
                yield f"{prefix}_branch{branch}_gn_s", (shape[0],)
                yield f"{prefix}_branch{branch}_gn_b", (shape[0],)
        in_ch = out_ch
    yield "pred_w", (1000, 2048)
    yield "pred_b", (1000,)


def imagenet_gn_blobs(depth: int = 50, seed: int = 0) -> Dict[str, np.ndarray]:
    """Random float32 blobs of the right names, shapes and scale (MSRA-scaled convs, GN near 1/0)."""
    rng = np.random.default_rng(seed)
    blobs: Dict[str, np.ndarray] = {}
    for name, shape in imagenet_blob_shapes(depth):
        if name.endswith("_gn_s"):
            value = rng.uniform(0.5, 1.5, shape)
        elif name.endswith(("_gn_b", "pred_b")):
            value = rng.normal(0.0, 0.1, shape)
        else:
            fan_in = int(np.prod(shape[1:]))
            value = rng.normal(0.0, np.sqrt(2.0 / fan_in), shape)
        blobs[name] = value.astype(np.float32)
    return blobs


def write_imagenet_gn_pkl(path, *, depth: int = 50, seed: int = 0) -> Dict[str, np.ndarray]:
    """Write ``path`` as Python 2 cPickle wrote Detectron's files; returns the blobs written."""
    blobs = imagenet_gn_blobs(depth, seed)
    obj = {"blobs": {name.encode("ascii"): arr for name, arr in blobs.items()}}  # Python 2 str keys
    obj[b"__author__"] = b"detgn test stand-in (Detectron format)"
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_bytes(py2_dumps(obj))
    return blobs


def zoo_mirror(root, *, seed: int = 0) -> Dict[str, np.ndarray]:
    """A ``DETGN_MODEL_ZOO_MIRROR`` folder serving ``detgn://ImageNetPretrained/R-50-GN``."""
    return write_imagenet_gn_pkl(Path(root) / R50_GN_ZOO_PATH, depth=50, seed=seed)
