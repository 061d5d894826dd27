"""Checkpoint files: names, integrity checks, listing, and safe loading.

A training run's folder holds ``model_0004999.pth`` (the state after 5000 iterations),
``model_final.pth`` and a ``last_checkpoint`` file naming the newest one; saves write
them atomically (:mod:`detgn.utils.file_io`), so a killed save leaves at most a
``.<name>.<random>.tmp`` file that :data:`TEMP_FILE` matches.

Before a file is loaded, the zip container's CRC32 of every member is checked
(:func:`verify_checkpoint`), so a truncated or bit-flipped file is reported, naming the
previous good checkpoint, instead of silently loading garbage; it is then read with
``torch.load(weights_only=True)`` (:func:`load_checkpoint_file`). :func:`weights_digest`
tells whether two sets of weights are identical (across ranks, runs or files).
"""
from __future__ import annotations

import hashlib
import logging
import os
import pickle
import re
import zipfile
from typing import Any, List, Optional

import torch
from torch import nn

from detgn.utils.errors import UserError

logger = logging.getLogger(__name__)

__all__ = [
    "CheckpointError",
    "FINAL_NAME",
    "POINTER_FILE",
    "PERIODIC_NAME",
    "TEMP_FILE",
    "find_good_checkpoint",
    "latest_good_checkpoint",
    "list_checkpoints",
    "load_checkpoint_file",
    "older_checkpoints",
    "pointed_checkpoint",
    "unwrap_model",
    "verify_checkpoint",
    "weights_digest",
]

POINTER_FILE = "last_checkpoint"
FINAL_NAME = "model_final.pth"
PERIODIC_NAME = re.compile(r"^model_(\d{7})\.pth$")
# Temp files of an interrupted atomic save (see detgn.utils.file_io.atomic_write).
TEMP_FILE = re.compile(r"^\.(model_\d{7}|model_final|last_checkpoint)(\.pth)?\..*\.tmp$")


class CheckpointError(UserError, RuntimeError):
    """A checkpoint that cannot be used as asked (corrupt, incompatible, schedule refused)."""


def verify_checkpoint(path: str) -> Optional[str]:
    """None when ``path`` is an intact file, else why not (missing, truncated, CRC mismatch).

    torch's zip format stores a CRC32 per member; checking them reads the file once
    and catches truncation and flipped bytes that ``torch.load`` would not notice.
    Files in torch's legacy (non-zip) format cannot be checked this way and pass.
    """
    if not os.path.isfile(path):
        return "file does not exist"
    if os.path.getsize(path) == 0:
        return "file is empty (0 bytes)"
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != b"PK\x03\x04":
        return None if magic[:1] == b"\x80" else "not a torch zip checkpoint (bad header; truncated or overwritten?)"
    try:
        with zipfile.ZipFile(path) as z:
            bad = z.testzip()
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        return f"truncated or damaged zip container ({e})"
    except Exception as e:  # zlib.error and friends: still a damaged file
        return f"damaged zip container ({type(e).__name__}: {e})"
    if bad is not None:
        return f"CRC mismatch in member {bad!r} (bytes changed after saving)"
    return None


def _iteration_of_name(path: str) -> Optional[int]:
    m = PERIODIC_NAME.match(os.path.basename(path))
    return int(m.group(1)) if m else None


def list_checkpoints(save_dir: str) -> List[str]:
    """Checkpoints in ``save_dir``, newest first: ``model_final.pth``, then periodic ones by iteration."""
    if not os.path.isdir(save_dir):
        return []
    periodic = sorted(
        (f for f in os.listdir(save_dir) if PERIODIC_NAME.match(f)), key=lambda f: _iteration_of_name(f), reverse=True
    )
    out = [os.path.join(save_dir, FINAL_NAME)] if os.path.isfile(os.path.join(save_dir, FINAL_NAME)) else []
    return out + [os.path.join(save_dir, f) for f in periodic]


def older_checkpoints(path: str) -> List[str]:
    """Checkpoints in ``path``'s folder that were written before it (by name), newest first."""
    folder = os.path.dirname(os.path.abspath(path))
    it = _iteration_of_name(path)
    out = []
    for c in list_checkpoints(folder):
        if os.path.abspath(c) == os.path.abspath(path):
            continue
        ci = _iteration_of_name(c)
        if it is None or (ci is not None and ci < it):
            out.append(c)
    return out


def find_good_checkpoint(candidates: List[str]) -> Optional[str]:
    """The first of ``candidates`` that passes :func:`verify_checkpoint`."""
    for c in candidates:
        if verify_checkpoint(c) is None:
            return c
    return None


def pointed_checkpoint(save_dir: str) -> Optional[str]:
    """The file named by ``save_dir/last_checkpoint``, if the pointer exists."""
    try:
        with open(os.path.join(save_dir, POINTER_FILE)) as f:
            name = f.read().strip()
    except OSError:
        return None
    return os.path.join(save_dir, name) if name else None


def latest_good_checkpoint(save_dir: str) -> Optional[str]:
    """The newest intact checkpoint of a run's folder: the pointer's file, else the newest older one.

    Damaged files on the way are skipped with a warning that names them.
    """
    pointed = pointed_checkpoint(save_dir)
    candidates = [pointed] + older_checkpoints(pointed) if pointed is not None else list_checkpoints(save_dir)
    for c in candidates:
        reason = verify_checkpoint(c)
        if reason is None:
            return c
        logger.warning("Skipping checkpoint %s: %s", c, reason)
    return None


def _corrupt_error(path: str, reason: str) -> CheckpointError:
    prev = find_good_checkpoint(older_checkpoints(path))
    if prev:
        todo = (
            f"The previous good checkpoint is {prev}: load it with MODEL.WEIGHTS {prev}, or move "
            f"{os.path.basename(path)} away and --resume (it takes the newest good checkpoint)."
        )
    else:
        todo = f"No other good checkpoint is in {os.path.dirname(os.path.abspath(path))}; re-create or re-download it."
    return CheckpointError(f"Checkpoint {path} is truncated or corrupt: {reason}. {todo}")


def load_checkpoint_file(path: str, *, allow_pickle: bool = False) -> Any:
    """``torch.load`` to the CPU with ``weights_only=True``, after an integrity check.

    Args:
        path: a ``.pth`` file.
        allow_pickle: fall back to full unpickling when the file holds Python objects
            that ``weights_only`` refuses (only for files you trust: unpickling runs code).

    Raises:
        CheckpointError: corrupt or truncated (naming the previous good checkpoint), or
            holding pickled objects while ``allow_pickle`` is False.
    """
    reason = verify_checkpoint(path)
    if reason is not None:
        raise _corrupt_error(path, reason)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "weights only" not in str(e).lower():
            raise _corrupt_error(path, f"unpickling failed: {e}") from None
        if not allow_pickle:
            first = str(e).strip().splitlines()[-1][:300]
            raise CheckpointError(
                f"{path} holds pickled Python objects that safe loading (weights_only=True) refuses "
                f"({first}). Unpickling can run arbitrary code: only if you trust the file, load it "
                f"with load_weights(model, path, allow_pickle=True), or re-save it as a plain state dict."
            ) from None
        logger.warning("Loading %s with full unpickling (allow_pickle=True)", path)
        return torch.load(path, map_location="cpu", weights_only=False)
    except (RuntimeError, EOFError, ValueError, OSError) as e:
        raise _corrupt_error(path, f"{type(e).__name__}: {str(e).splitlines()[0]}") from None



def unwrap_model(model: nn.Module) -> nn.Module:
    """The module inside a DistributedDataParallel / DataParallel wrapper (or the model itself)."""
    while isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
        model = model.module
    return model


def weights_digest(model_or_state) -> str:
    """SHA-256 of a model's state dict (names, dtypes, shapes, values), for "are these weights
    identical?" checks across ranks or runs without comparing files."""
    state = model_or_state.state_dict() if hasattr(model_or_state, "state_dict") else model_or_state
    h = hashlib.sha256()
    for k in sorted(state):
        v = state[k].detach().cpu().contiguous()
        h.update(f"{k}|{v.dtype}|{tuple(v.shape)}|".encode())
        h.update(v.reshape(-1).view(torch.uint8).numpy().tobytes() if v.numel() else b"")
    return h.hexdigest()
