"""Checkpoints (atomic save, keep-last-K, exact resume) and loading pre-trained weights.

``files``: checkpoint names, integrity checks and safe loading; ``checkpointer``: saving
and resuming a run; ``weights``: loading pre-trained or foreign weights, through the
formats of ``weight_formats`` and reported by ``weights_report``.
"""
from detgn.model_zoo.verify import is_trusted_zoo_file
from detgn.utils.file_io import atomic_write

from .checkpointer import FORMAT_VERSION, Checkpointer, ResumeState
from .files import (
    CheckpointError,
    find_good_checkpoint,
    latest_good_checkpoint,
    list_checkpoints,
    load_checkpoint_file,
    unwrap_model,
    verify_checkpoint,
    weights_digest,
)
from .safe_pickle import UnsafePickleError, load_safe_pickle
from .weights import (
    WEIGHT_FORMATS,
    ConvertedWeights,
    WeightsReport,
    load_weights,
    register_weight_format,
)

__all__ = [
    "FORMAT_VERSION",
    "WEIGHT_FORMATS",
    "Checkpointer",
    "CheckpointError",
    "ConvertedWeights",
    "ResumeState",
    "UnsafePickleError",
    "WeightsReport",
    "atomic_write",
    "find_good_checkpoint",
    "is_trusted_zoo_file",
    "latest_good_checkpoint",
    "list_checkpoints",
    "load_safe_pickle",
    "load_checkpoint_file",
    "load_weights",
    "register_weight_format",
    "unwrap_model",
    "verify_checkpoint",
    "weights_digest",
]
