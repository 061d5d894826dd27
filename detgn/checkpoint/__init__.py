"""Checkpoints (atomic save, keep-last-K, exact resume) and loading pre-trained weights."""
from .checkpointer import (
    FORMAT_VERSION,
    WEIGHT_FORMATS,
    Checkpointer,
    CheckpointError,
    ResumeState,
    WeightsReport,
    atomic_write,
    find_good_checkpoint,
    list_checkpoints,
    load_checkpoint_file,
    load_weights,
    register_weight_format,
    unwrap_model,
    verify_checkpoint,
)

__all__ = [
    "FORMAT_VERSION",
    "WEIGHT_FORMATS",
    "Checkpointer",
    "CheckpointError",
    "ResumeState",
    "WeightsReport",
    "atomic_write",
    "find_good_checkpoint",
    "list_checkpoints",
    "load_checkpoint_file",
    "load_weights",
    "register_weight_format",
    "unwrap_model",
    "verify_checkpoint",
]
