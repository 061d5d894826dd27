"""Model zoo: zoo names -> hash-verified cached files.

``download("detgn://ImageNetPretrained/R-50-GN")`` returns a local path (cache in
``DETGN_CACHE``, offline mirror in ``DETGN_MODEL_ZOO_MIRROR``, server in
``DETGN_MODEL_ZOO_URL``), checking its sha256 where the catalog pins one;
``is_verified(path)`` says whether it passed such a check. Loading does not depend on
it: ``.pkl`` weights are always read with a restricted unpickler (no code from the
file runs), verified or not.

The zoo is a leaf: ``catalog`` (names -> files), ``verify`` (cache, sha256, trust),
``transfer`` (mirror and HTTP) and ``download`` import nothing of detgn but
``detgn.utils``. Configs and models by zoo name (``get``, ``get_config``, ``get_config_file``,
``trained_weights_name``) are :mod:`detgn.model_zoo.configs`, the one zoo module that
builds models. They are attributes of ``detgn.model_zoo`` too (``model_zoo.get_config(name)``,
as in detectron2), loaded on first access (PEP 562), so importing ``detgn.model_zoo`` still
imports no model code and not torch.
"""
from importlib import import_module

from .catalog import (
    MODEL_ZOO,
    MODEL_ZOO_BASE_URL,
    ZOO_PREFIX,
    UnknownModelError,
    base_url,
    list_models,
    register_model,
    resolve,
)
from .download import download, get_checkpoint_path
from .transfer import (
    ChecksumError,
    DownloadHTTPError,
    ModelNotFoundError,
    ModelZooError,
    OfflineError,
    TruncatedDownloadError,
)
from .verify import cache_root, file_sha256, is_trusted_zoo_file, is_verified, mirror_root

__all__ = [
    "MODEL_ZOO",
    "MODEL_ZOO_BASE_URL",
    "ZOO_PREFIX",
    "ChecksumError",
    "DownloadHTTPError",
    "ModelNotFoundError",
    "ModelZooError",
    "OfflineError",
    "TruncatedDownloadError",
    "UnknownModelError",
    "base_url",
    "cache_root",
    "download",
    "file_sha256",
    "get",
    "get_checkpoint_path",
    "get_config",
    "get_config_file",
    "is_trusted_zoo_file",
    "is_verified",
    "list_models",
    "mirror_root",
    "register_model",
    "resolve",
    "trained_weights_name",
]

# Names of detgn.model_zoo.configs, which imports the model code: loaded when first used.
_FROM_CONFIGS = ("get", "get_config", "get_config_file", "trained_weights_name")


def __getattr__(name: str):
    """PEP 562: the names of :mod:`detgn.model_zoo.configs`, imported on first access."""
    if name in _FROM_CONFIGS:
        value = getattr(import_module(".configs", __name__), name)
        globals()[name] = value  # later look-ups skip this hook
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    """The module's names, the lazily loaded ones included."""
    return sorted(list(globals()) + list(_FROM_CONFIGS))
