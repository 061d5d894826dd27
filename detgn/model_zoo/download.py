"""Hash-verified, resumable, cached downloads of model-zoo files (urllib only).

``download("detgn://ImageNetPretrained/R-50-GN")`` returns a local path. In order:

1. the cache (``cache_dir`` or ``DETGN_CACHE``, default ``~/.cache/detgn``): a file
   already there with the right sha256 is used without contacting any server;
2. the offline mirror ``DETGN_MODEL_ZOO_MIRROR`` (same relative paths as the URLs):
   the file is hash checked while it is copied into the cache;
3. the network: a resumable, retried transfer (:mod:`.transfer`), hash checked and
   moved into place durably, so the final path never holds a partial or unverified file.

After a successful check against a known sha256 a ``<file>.sha256`` sidecar is
written; :func:`detgn.model_zoo.verify.is_verified` tells whether a file passed such a
check (integrity: reading a ``.pkl`` is made safe by the restricted unpickler, not by
the hash). Processes downloading the same file (one per GPU) serialise on a lock file
and all but the first find it in the cache.
"""
from __future__ import annotations

import logging
import os
import re
import urllib.parse
from pathlib import Path
from typing import Optional

from .catalog import (
    MODEL_ZOO,
    ZOO_PREFIX,
    base_url,
    canonical_name,
    check_relative_path,
    check_sha256,
    get_entry,
    list_models,
)
from .transfer import (
    ChecksumError,
    DownloadHTTPError,
    FileLock,
    ModelNotFoundError,
    ModelZooError,
    OfflineError,
    Target,
    TruncatedDownloadError,
    copy_from_mirror,
    fetch_from_network,
)
from .verify import cache_root, file_sha256, is_verified, mirror_root, remove_sidecar, write_sidecar

__all__ = [
    "ChecksumError",
    "DownloadHTTPError",
    "ModelNotFoundError",
    "ModelZooError",
    "OfflineError",
    "TruncatedDownloadError",
    "download",
    "get_checkpoint_path",
]

logger = logging.getLogger(__name__)


def _url_key(url: str) -> str:
    """Relative cache/mirror path of a URL: its path under the base URL, else host/path."""
    base = base_url()
    if url.startswith(base):
        rel = url[len(base):]
    else:
        p = urllib.parse.urlsplit(url)
        rel = (p.netloc.replace(":", "_") + "/" + p.path.lstrip("/")).lstrip("/")
    rel = rel.split("?", 1)[0].split("#", 1)[0]
    return check_relative_path(rel, f"URL {url}")


def _target_for(url_or_name: str, sha256: Optional[str]) -> Target:
    sha256 = check_sha256(sha256, f"download({url_or_name!r})")
    if "://" in url_or_name and not url_or_name.startswith(ZOO_PREFIX):
        rel = _url_key(url_or_name)
        # A plain URL of a catalog file gets the catalog's hash too.
        entry = next((e for e in MODEL_ZOO.values() if e["path"] == rel), None) if url_or_name.startswith(base_url()) else None
        size = entry["size"] if entry else None
        known = entry["sha256"] if entry else None
        label = Path(urllib.parse.urlsplit(url_or_name).path).name or url_or_name
        url = url_or_name
    else:
        entry = get_entry(url_or_name)
        rel = str(entry["path"])
        url = base_url() + rel
        size, known = entry["size"], entry["sha256"]
        label = ZOO_PREFIX + canonical_name(url_or_name)
    if sha256 and known and sha256 != known:
        raise ValueError(
            f"download({url_or_name!r}): sha256={sha256} contradicts the catalog's {known}; "
            "pass no sha256 to use the catalog's, or fix the catalog entry"
        )
    return Target(url=url, sha256=sha256 or known, size=size, rel=rel, label=label)  # type: ignore[arg-type]


def _cached(final: Path, t: Target, *, remove_bad: bool) -> bool:
    """Whether ``final`` can be used as is; ``remove_bad`` (under the lock only) deletes
    a cached file with the wrong hash, which a peer may be replacing otherwise."""
    if not final.is_file():
        return False
    if t.sha256 is None:
        logger.info("Using cached %s (no sha256 pinned: not verified)", final)
        return True
    digest = file_sha256(final)
    if digest == t.sha256:
        if not is_verified(final):
            write_sidecar(final, digest)
        logger.info("Using cached %s (sha256 verified)", final)
        return True
    if not remove_bad:
        return False
    logger.warning("Cached %s has sha256 %s, expected %s: removing it and fetching again", final, digest, t.sha256)
    final.unlink()
    remove_sidecar(final)
    return False


def download(
    url_or_name: str,
    *,
    sha256: Optional[str] = None,
    cache_dir: Optional[str] = None,
    progress: bool = True,
    retries: int = 3,
    timeout: float = 30,
    backoff_s: float = 1.0,
) -> str:
    """Fetch a zoo name (``detgn://...``) or a URL into the cache and return its local path.

    Args:
        url_or_name: a model-zoo name (with or without ``detgn://``) or an http(s) URL.
        sha256: expected hex digest; defaults to the catalog's. None for both means the
            file is used unverified (:func:`is_verified` is False for it).
        cache_dir: cache folder; default ``DETGN_CACHE`` or ``~/.cache/detgn``.
        progress: print a throttled progress line to stderr.
        retries: extra attempts after a transient failure (connection errors, timeouts,
            truncated transfers, HTTP 5xx/429), each resuming the partial file.
        timeout: seconds for the connection and for each read.
        backoff_s: wait before the first retry, doubled at each further retry (<= 30 s).

    Returns:
        The path of the file, ``<cache>/<path relative to the base URL>``.

    Raises:
        ChecksumError, TruncatedDownloadError, ModelNotFoundError (404), DownloadHTTPError,
        OfflineError, UnknownModelError: each with a message that says what to do.
    """
    t = _target_for(url_or_name, sha256)
    final = cache_root(cache_dir) / t.rel
    final.parent.mkdir(parents=True, exist_ok=True)
    if _cached(final, t, remove_bad=False):
        return str(final)
    with FileLock(final.with_name(final.name + ".lock")):
        # Another process may have finished it while we waited for the lock.
        if _cached(final, t, remove_bad=True):
            return str(final)
        part = final.with_name(final.name + ".part")
        mirror = mirror_root()
        if mirror is not None and (mirror / t.rel).is_file():
            copy_from_mirror(mirror / t.rel, part, final, t, progress)
        else:
            if mirror is not None:
                logger.info("%s not in the mirror (%s); trying the network", t.label, mirror / t.rel)
            fetch_from_network(t, part, final, progress, retries, timeout, backoff_s)
    logger.info("Saved %s to %s", t.label, final)
    return str(final)


def get_checkpoint_path(name: str, **download_kwargs) -> str:
    """A local path for weights given as a file path, a URL or a zoo name.

    Zoo names and URLs go through :func:`download` (``download_kwargs`` are passed on);
    an existing file is returned as is.
    """
    name = str(name)
    if name.startswith(ZOO_PREFIX) or re.match(r"^(https?|ftp|file)://", name):
        return download(name, **download_kwargs)
    path = os.path.expanduser(name)
    if os.path.isfile(path):
        return path
    if canonical_name(name) in MODEL_ZOO:
        return download(name, **download_kwargs)
    raise FileNotFoundError(
        f"Weights '{name}' not found: not an existing file, not a URL, and not a model-zoo name "
        f"(known: {', '.join(list_models()) or 'none'}). Give a path, a URL or a detgn:// name."
    )
