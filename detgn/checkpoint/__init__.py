"""Checkpoints (atomic save, keep-last-K, exact resume) and loading pre-trained weights."""
from .checkpointer import (
    FORMAT_VERSION,
    Checkpointer,
    CheckpointError,
    ResumeState,
    atomic_write,
    find_good_checkpoint,
    list_checkpoints,
    load_checkpoint_file,
    unwrap_model,
    verify_checkpoint,
)
from .safe_pickle import UnsafePickleError, load_safe_pickle
from .weights import (
    WEIGHT_FORMATS,
    ConvertedWeights,
    WeightsReport,
    is_trusted_zoo_file,
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
    "list_checkpoints",
    "load_safe_pickle",
    "load_checkpoint_file",
    "load_weights",
    "register_weight_format",
    "unwrap_model",
    "verify_checkpoint",
]
