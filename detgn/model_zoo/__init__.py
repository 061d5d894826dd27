"""Model zoo: zoo names -> hash-verified cached files, and configs/models by name.

``download("detgn://ImageNetPretrained/R-50-GN")`` returns a local path (cache in
``DETGN_CACHE``, offline mirror in ``DETGN_MODEL_ZOO_MIRROR``, server in
``DETGN_MODEL_ZOO_URL``), checking its sha256 where the catalog pins one;
``is_verified(path)`` says whether it passed such a check. Loading does not depend on
it: ``.pkl`` weights are always read with a restricted unpickler (no code from the
file runs), verified or not.
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
from .download import (
    ChecksumError,
    DownloadHTTPError,
    ModelNotFoundError,
    ModelZooError,
    OfflineError,
    TruncatedDownloadError,
    cache_root,
    download,
    file_sha256,
    get_checkpoint_path,
    is_verified,
    mirror_root,
)
from .model_zoo import get, get_config, trained_weights_name

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
    "is_verified",
    "list_models",
    "mirror_root",
    "register_model",
    "resolve",
    "trained_weights_name",
]
