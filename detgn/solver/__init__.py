"""Optimizer (weight decay by parameter kind) and the linearly scaled LR schedule."""
from .build import build_optimizer, format_param_groups, get_param_groups, is_norm_module
from .schedule import (
    Schedule,
    WarmupMultiStepLR,
    build_lr_scheduler,
    format_schedule_table,
    reference_schedule,
    resolve_schedule,
    schedule_changes,
)

__all__ = [
    "build_optimizer",
    "format_param_groups",
    "get_param_groups",
    "is_norm_module",
    "Schedule",
    "WarmupMultiStepLR",
    "build_lr_scheduler",
    "format_schedule_table",
    "reference_schedule",
    "resolve_schedule",
    "schedule_changes",
]
