"""Seeding and capturing every global RNG a training step can draw from.

Exact resume needs the python ``random``, numpy and torch (CPU and CUDA) global
generators back in the state they had right after the last saved iteration.
:func:`get_rng_state` returns them as plain lists, ints and tensors so that a
checkpoint holding them still loads with ``torch.load(weights_only=True)``.
"""
from __future__ import annotations

import logging
import os
import random
from typing import Any, Dict

import numpy as np
import torch

logger = logging.getLogger(__name__)

__all__ = ["draw_seed", "seed_all_rng", "get_rng_state", "set_rng_state"]


def draw_seed() -> int:
    """A fresh seed from the OS entropy pool (for ``SEED < 0``), small enough for numpy."""
    return int.from_bytes(os.urandom(4), "little") & 0x7FFFFFFF


def seed_all_rng(seed: int) -> int:
    """Seed python ``random``, numpy and torch (all devices) with ``seed``.

    A negative seed draws one from the OS and logs it, so the run can be repeated.

    Returns:
        the seed actually used.
    """
    if seed < 0:
        seed = draw_seed()
        logger.info("Drew random seed %d (set SEED to it to repeat this run)", seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds every CUDA device
    return seed


def get_rng_state() -> Dict[str, Any]:
    """The state of every global RNG, made only of lists, ints, floats and tensors."""
    version, internal, gauss = random.getstate()
    np_state = np.random.get_state(legacy=False)
    state: Dict[str, Any] = {
        "python": [version, list(internal), gauss],
        "numpy": {
            "bit_generator": np_state["bit_generator"],
            "key": np_state["state"]["key"].tolist(),
            "pos": int(np_state["state"]["pos"]),
            "has_gauss": int(np_state["has_gauss"]),
            "gauss": float(np_state["gauss"]),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        # Only the current device: each process of a run owns one GPU.
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: Dict[str, Any]) -> None:
    """Restore what :func:`get_rng_state` returned (a missing CUDA entry is skipped)."""
    version, internal, gauss = state["python"]
    random.setstate((int(version), tuple(int(v) for v in internal), gauss))
    npst = state["numpy"]
    np.random.set_state(
        {
            "bit_generator": npst["bit_generator"],
            "state": {"key": np.asarray(npst["key"], dtype=np.uint32), "pos": int(npst["pos"])},
            "has_gauss": int(npst["has_gauss"]),
            "gauss": float(npst["gauss"]),
        }
    )
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"].cpu())
