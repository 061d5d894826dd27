"""Where zoo files live and whether they are the published bytes: cache, mirror, sha256 checks.

A downloaded file that matched a known sha256 gets a ``<file>.sha256`` sidecar
(``sha256sum`` format). :func:`is_verified` re-hashes the file against it, so a file
edited after its check is not verified; :func:`is_trusted_zoo_file` also requires the
recorded hash to be one the catalog pins. Both are integrity checks: reading a
Detectron ``.pkl`` is made safe by the restricted unpickler of
:mod:`detgn.checkpoint.safe_pickle`, not by the hash.
"""
from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from typing import Optional

from detgn.utils.file_io import atomic_write_text

from .catalog import MODEL_ZOO

__all__ = [
    "CACHE_ENV",
    "MIRROR_ENV",
    "cache_root",
    "file_sha256",
    "is_trusted_zoo_file",
    "is_verified",
    "mirror_root",
    "remove_sidecar",
    "write_sidecar",
]

CACHE_ENV = "DETGN_CACHE"
MIRROR_ENV = "DETGN_MODEL_ZOO_MIRROR"


def cache_root(cache_dir: Optional[str] = None) -> Path:
    """The cache folder: ``cache_dir``, else ``DETGN_CACHE``, else ``~/.cache/detgn``."""
    root = cache_dir or os.environ.get(CACHE_ENV) or os.path.join("~", ".cache", "detgn")
    return Path(os.path.expanduser(str(root)))


def mirror_root() -> Optional[Path]:
    """The offline mirror folder from ``DETGN_MODEL_ZOO_MIRROR``, or None."""
    m = os.environ.get(MIRROR_ENV)
    return Path(os.path.expanduser(m)) if m else None


def file_sha256(path) -> str:
    """Hex sha256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def _recorded_sha256(path: Path) -> Optional[str]:
    """The hex digest a file's sidecar records, or None (no sidecar, unreadable, malformed)."""
    try:
        recorded = _sidecar(path).read_text().split()[0].lower()
    except (OSError, IndexError, UnicodeDecodeError):
        return None
    return recorded if re.fullmatch(r"[0-9a-f]{64}", recorded) else None


def write_sidecar(path: Path, digest: str) -> None:
    """Record that ``path`` matched ``digest`` (written atomically)."""
    atomic_write_text(str(_sidecar(path)), f"{digest}  {path.name}\n")


def remove_sidecar(path: Path) -> None:
    _sidecar(path).unlink(missing_ok=True)


def is_verified(path) -> bool:
    """True if ``path`` passed a check against a known sha256 and is unchanged since.

    The check is recorded in a ``<file>.sha256`` sidecar (``sha256sum`` format); the
    file is hashed again here, so a file edited or replaced after its check is not
    verified.
    """
    path = Path(path)
    if not path.is_file():
        return False
    recorded = _recorded_sha256(path)
    return recorded is not None and file_sha256(path) == recorded


def is_trusted_zoo_file(path) -> bool:
    """True if ``path`` passed a model-zoo sha256 check and that hash is pinned in the catalog.

    API for callers that want to know whether a file is a verified zoo file; loading
    does not depend on it (a ``.pkl`` is always read with the restricted unpickler,
    whatever its origin, and full unpickling needs ``allow_pickle``). Requiring the
    recorded hash to be one the catalog pins means a sidecar written next to some other
    file does not make it trusted.
    """
    if not is_verified(path):
        return False
    pinned = {str(e.get("sha256")).lower() for e in MODEL_ZOO.values() if e.get("sha256")}
    return _recorded_sha256(Path(path)) in pinned
