"""The model-zoo catalog: zoo names -> files under one base URL, each with its sha256.

A zoo name is what users type in ``MODEL.WEIGHTS``: ``detgn://ImageNetPretrained/R-50-GN``
or ``detgn://<config>/model_final``. The catalog is the plain dict :data:`MODEL_ZOO`
(keys without the ``detgn://`` prefix)::

    {name: {"path": relative path under the base URL, "sha256": 64 hex chars or None,
            "size": bytes or None}}

The same relative path locates the file in the cache (``DETGN_CACHE``) and in an
offline mirror folder (``DETGN_MODEL_ZOO_MIRROR``), so a mirror is simply a copy of
the server's tree.

Entries with ``"sha256": None`` are *unpinned*: their files download without an
integrity check and are not marked verified. They still load: a Detectron ``.pkl`` is
always read with the restricted unpickler of :mod:`detgn.checkpoint.safe_pickle`
(dicts, strings, numbers and numpy arrays only, so no code from the file runs), pinned
or not; a pinned sha256 adds a check that the bytes are the published ones (a
corrupted or substituted download is rejected). The four ImageNet backbones below are
Detectron's public files; their hashes were not available when this catalog was
written (no network). Pin them from a machine with network access::

    python -m detgn.model_zoo fetch detgn://ImageNetPretrained/R-50-GN

which prints the ``"sha256": ..., "size": ...`` lines to paste into the entry.
Trained detgn weights (``<config>/model_final``) are added here when they have been
trained and uploaded under the base URL; no entry is listed for a file that does not
exist yet.
"""
from __future__ import annotations

import difflib
import os
import re
from typing import Dict, List, Optional, Tuple

from detgn.utils.errors import UserError

__all__ = [
    "MODEL_ZOO",
    "MODEL_ZOO_BASE_URL",
    "ZOO_PREFIX",
    "UnknownModelError",
    "base_url",
    "canonical_name",
    "get_entry",
    "list_models",
    "register_model",
    "resolve",
]

# Where zoo paths live. Detectron's public bucket hosts the ImageNet backbones the
# GN paper fine-tunes from; the env var points it elsewhere (a lab server, or the
# loopback server of the tests) without editing code.
MODEL_ZOO_BASE_URL = "https://dl.fbaipublicfiles.com/detectron/"
BASE_URL_ENV = "DETGN_MODEL_ZOO_URL"
ZOO_PREFIX = "detgn://"

_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")

MODEL_ZOO: Dict[str, Dict[str, object]] = {
    # MSRA's ResNet-50 with BN folded into a per-channel affine (BN*, load into FrozenBN).
    "ImageNetPretrained/R-50": {"path": "ImageNetPretrained/MSRA/R-50.pkl", "sha256": None, "size": None},
    # MSRA's ResNet-101, BN folded (BN*).
    "ImageNetPretrained/R-101": {"path": "ImageNetPretrained/MSRA/R-101.pkl", "sha256": None, "size": None},
    # ResNet-50 trained with GN (G=32) on ImageNet, 24.0% top-1 error (GN paper).
    "ImageNetPretrained/R-50-GN": {"path": "ImageNetPretrained/47261647/R-50-GN.pkl", "sha256": None, "size": None},
    # ResNet-101 trained with GN (G=32) on ImageNet, 22.6% top-1 error (GN paper).
    "ImageNetPretrained/R-101-GN": {"path": "ImageNetPretrained/47592356/R-101-GN.pkl", "sha256": None, "size": None},
}


class UnknownModelError(UserError, KeyError):
    """A zoo name that the catalog does not list."""

    def __str__(self) -> str:  # KeyError quotes its message; show it plainly
        return str(self.args[0]) if self.args else ""


def base_url() -> str:
    """The base URL in force: ``DETGN_MODEL_ZOO_URL`` if set, else :data:`MODEL_ZOO_BASE_URL`.

    Read at every call so a test or a script can change it after import.
    """
    url = os.environ.get(BASE_URL_ENV) or MODEL_ZOO_BASE_URL
    return url if url.endswith("/") else url + "/"


def canonical_name(name: str) -> str:
    """``detgn://A/B`` or ``A/B`` -> ``A/B`` (the catalog key)."""
    if name.startswith(ZOO_PREFIX):
        name = name[len(ZOO_PREFIX):]
    return name.strip("/")


def check_relative_path(path: str, what: str) -> str:
    """Reject paths that would escape the cache or mirror folder (absolute, ``..``, URLs)."""
    if not isinstance(path, str) or not path:
        raise ValueError(f"{what}: the path must be a non-empty string, got {path!r}")
    parts = path.replace("\\", "/").split("/")
    if path.startswith(("/", "\\")) or "://" in path or ".." in parts or (len(parts[0]) == 2 and parts[0][1] == ":"):
        raise ValueError(
            f"{what}: path {path!r} must be relative to the base URL "
            "(like 'ImageNetPretrained/MSRA/R-50.pkl'), without '..' or a scheme"
        )
    return "/".join(p for p in parts if p not in ("", "."))


def check_sha256(sha256: Optional[str], what: str) -> Optional[str]:
    """Normalise a hex digest to lower case; None means 'not pinned'."""
    if sha256 is None:
        return None
    if not isinstance(sha256, str) or not _SHA256_RE.match(sha256.lower()):
        raise ValueError(f"{what}: sha256 must be 64 hexadecimal characters, got {sha256!r}")
    return sha256.lower()


def register_model(name: str, path: str, sha256: Optional[str], size: Optional[int] = None) -> None:
    """Add (or replace) a catalog entry.

    Args:
        name: zoo name, with or without ``detgn://`` (``"myconfig/model_final"``).
        path: file path relative to the base URL (``"myconfig/model_final.pth"``).
        sha256: hex digest of the file, or None to leave it unpinned (never verified).
        size: file size in bytes, if known (used for progress and truncation checks).
    """
    key = canonical_name(name)
    if not key:
        raise ValueError(f"register_model: empty model name {name!r}")
    what = f"model-zoo entry '{key}'"
    if size is not None and (not isinstance(size, int) or size < 0):
        raise ValueError(f"{what}: size must be a non-negative int or None, got {size!r}")
    MODEL_ZOO[key] = {
        "path": check_relative_path(path, what),
        "sha256": check_sha256(sha256, what),
        "size": size,
    }


def list_models() -> List[str]:
    """Every zoo name, sorted, as users type it (``detgn://...``)."""
    return [ZOO_PREFIX + k for k in sorted(MODEL_ZOO)]


def get_entry(name: str) -> Dict[str, object]:
    """The catalog entry of a zoo name; a clear error with close names if unknown."""
    key = canonical_name(name)
    entry = MODEL_ZOO.get(key)
    if entry is None:
        close = difflib.get_close_matches(key, list(MODEL_ZOO), n=3, cutoff=0.5)
        hint = ("Did you mean: " + ", ".join(ZOO_PREFIX + c for c in close) + "? ") if close else ""
        raise UnknownModelError(
            f"Unknown model-zoo name '{ZOO_PREFIX}{key}'. {hint}"
            f"Check the model name in MODEL_ZOO.md; known names: {', '.join(list_models()) or '(none)'}"
        )
    return entry


def resolve(name: str) -> Tuple[str, Optional[str]]:
    """Zoo name -> ``(url, sha256)`` under the base URL in force (sha256 None if unpinned)."""
    entry = get_entry(name)
    return base_url() + str(entry["path"]), entry["sha256"]  # type: ignore[return-value]
