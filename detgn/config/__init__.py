"""Config defaults (yacs) and loading with ``_BASE_`` inheritance and strict checks."""
from .config import (
    ConfigError,
    configs_root,
    load_config,
    load_yaml_with_base,
    merge_from_file,
    merge_from_list,
    parse_args_with_overrides,
    resolve_config_path,
    validate_config,
)
from .defaults import get_cfg

__all__ = [
    "ConfigError",
    "configs_root",
    "get_cfg",
    "load_config",
    "load_yaml_with_base",
    "merge_from_file",
    "merge_from_list",
    "parse_args_with_overrides",
    "resolve_config_path",
    "validate_config",
]
