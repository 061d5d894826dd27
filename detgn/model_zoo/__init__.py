"""Model zoo: zoo names -> hash-verified cached files.

``download("detgn://ImageNetPretrained/R-50-GN")`` returns a local path (cache in
``DETGN_CACHE``, offline mirror in ``DETGN_MODEL_ZOO_MIRROR``, server in
``DETGN_MODEL_ZOO_URL``), checking its sha256 where the catalog pins one;
``is_verified(path)`` says whether it passed such a check. Loading does not depend on
it: ``.pkl`` weights are always read with a restricted unpickler (no code from the
file runs), verified or not.

The zoo is a leaf: ``catalog`` (names -> files), ``verify`` (cache, sha256, trust),
``transfer`` (mirror and HTTP) and ``download`` import nothing of detgn but
``detgn.utils``. Configs and models by zoo name (``get``, ``get_config``,
``trained_weights_name``) are :mod:`detgn.model_zoo.configs`, the one zoo module that
builds models; importing ``detgn.model_zoo`` does not import it (nor any model code).
"""
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
    "get_checkpoint_path",
    "is_trusted_zoo_file",
    "is_verified",
    "list_models",
    "mirror_root",
    "register_model",
    "resolve",
]
