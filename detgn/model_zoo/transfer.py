"""Moving zoo files into the cache: mirror copies and resumable, retried HTTP transfers.

A transfer streams into ``<file>.part`` while hashing; a failed HTTP transfer keeps the
part so the next attempt asks for the rest with a ``Range`` request (and starts over
when the server ignores it); transient failures (connection errors, timeouts,
truncated transfers, HTTP 5xx/429) are retried with exponential backoff. A complete
part is hash checked and moved into place durably (:func:`finalize`), so the final
path never holds a partial or unverified file. Processes fetching the same file
serialise on a :class:`FileLock`. Every failure is a :class:`ModelZooError` whose
message says what to do.
"""
from __future__ import annotations

import hashlib
import http.client
import logging
import os
import re
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from detgn.utils.errors import UserError
from detgn.utils.file_io import replace_durably

from .catalog import base_url
from .verify import CACHE_ENV, MIRROR_ENV, mirror_root, remove_sidecar, write_sidecar

__all__ = [
    "ChecksumError",
    "DownloadHTTPError",
    "FileLock",
    "ModelNotFoundError",
    "ModelZooError",
    "OfflineError",
    "Target",
    "TruncatedDownloadError",
    "copy_from_mirror",
    "fetch_from_network",
    "finalize",
]

logger = logging.getLogger(__name__)

_CHUNK = 256 * 1024
# A live process may legitimately hold the lock while it fetches a large file over a
# slow link; a dead one releases it at exit, so only a hung peer hits this bound.
_LOCK_TIMEOUT_S = 3600.0
_MAX_BACKOFF_S = 30.0
_TRANSIENT_HTTP = {408, 425, 429, 500, 502, 503, 504}


class ModelZooError(UserError, RuntimeError):
    """A model-zoo file that could not be obtained; the message says what to do."""


class ChecksumError(ModelZooError):
    """The bytes do not have the sha256 the catalog (or the caller) expects."""


class TruncatedDownloadError(ModelZooError):
    """The connection ended before the whole file arrived."""


class ModelNotFoundError(ModelZooError):
    """The server answered 404 for the file."""


class DownloadHTTPError(ModelZooError):
    """Any other HTTP error status."""


class OfflineError(ModelZooError):
    """The server could not be reached at all."""


class _Transient(Exception):
    """Internal: a failure worth retrying; ``error`` is raised once retries run out."""

    def __init__(self, error: ModelZooError):
        super().__init__(str(error))
        self.error = error


class _RangeRefused(Exception):
    """Internal: HTTP 416 to a resume request (the partial file does not fit)."""


@dataclass
class Target:
    """What to fetch and how to check it."""

    url: str
    sha256: Optional[str]
    size: Optional[int]
    rel: str  # relative path in the cache and in the mirror
    label: str  # what messages call the file


class _Progress:
    """A throttled 'done/total MB (pct%) rate MB/s' line on stderr."""

    def __init__(self, label: str, total: Optional[int], *, enabled: bool, start: int = 0):
        self.label, self.total, self.enabled, self.start = label, total, enabled, start
        self.t0 = self.last = time.monotonic()
        stream = sys.stderr
        self.tty = bool(getattr(stream, "isatty", lambda: False)())
        # Redraw in place on a terminal; in a log file, a line every few seconds.
        self.interval = 0.5 if self.tty else 5.0

    def update(self, done: int) -> None:
        now = time.monotonic()
        if self.enabled and now - self.last >= self.interval:
            self.last = now
            self._emit(done, final=False)

    def close(self, done: int) -> None:
        if self.enabled:
            self._emit(done, final=True)

    def _emit(self, done: int, final: bool) -> None:
        elapsed = max(time.monotonic() - self.t0, 1e-6)
        rate = (done - self.start) / elapsed / 1e6
        if self.total:
            pct = 100.0 * done / self.total
            line = f"{self.label}: {done / 1e6:.1f}/{self.total / 1e6:.1f} MB ({pct:.0f}%) {rate:.2f} MB/s"
        else:
            line = f"{self.label}: {done / 1e6:.1f} MB {rate:.2f} MB/s"
        if final:
            line += f", {done} bytes in {elapsed:.1f} s"
        stream = sys.stderr
        if self.tty:
            stream.write("\r" + line + ("\n" if final else ""))
        else:
            stream.write(line + "\n")
        stream.flush()


class FileLock:
    """Exclusive ``flock`` on a lock file, polled with a deadline (no-op where unsupported)."""

    def __init__(self, path: Path, timeout_s: float = _LOCK_TIMEOUT_S):
        self.path, self.timeout_s, self.fd = path, timeout_s, None

    def __enter__(self):
        try:
            import fcntl
        except ImportError:  # Windows: no flock; concurrent downloads just race
            return self
        self.fd = os.open(str(self.path), os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + self.timeout_s
        next_note = time.monotonic() + 30.0
        while True:
            try:
                fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return self
            except BlockingIOError:
                now = time.monotonic()
                if now > deadline:
                    os.close(self.fd)
                    self.fd = None
                    raise ModelZooError(
                        f"Waited {self.timeout_s:.0f} s for another process downloading into "
                        f"{self.path.parent}; if no such process is running, delete {self.path}"
                    ) from None
                if now > next_note:
                    logger.info("Waiting for another process to finish downloading (%s)", self.path)
                    next_note = now + 30.0
                time.sleep(0.1)
            except OSError:  # filesystem without flock (some NFS): go on unlocked
                return self

    def __exit__(self, *exc):
        if self.fd is not None:
            import fcntl

            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None


def finalize(part: Path, final: Path, digest: str, t: Target, source: str) -> None:
    """Check the hash of a complete ``part``, then move it into place atomically."""
    if t.sha256 is not None and digest != t.sha256:
        part.unlink(missing_ok=True)
        raise ChecksumError(
            f"sha256 mismatch for {t.label} from {source}: expected {t.sha256}, got {digest}; "
            f"the file was removed. The download was corrupted or the catalog is out of date; "
            f"retry or set {MIRROR_ENV} to a folder holding a good copy at <mirror>/{t.rel}"
        )
    remove_sidecar(final)
    replace_durably(str(part), str(final))
    if t.sha256 is not None:
        write_sidecar(final, digest)
    else:
        logger.warning("%s has no pinned sha256; %s is NOT verified (sha256 %s)", t.label, final, digest)


class _ReadError(Exception):
    """Internal: reading the source failed (as opposed to writing the destination)."""


def _copy_stream(src, dst, hasher, received: int, bar: _Progress) -> int:
    """Copy ``src`` (file-like) into ``dst`` while hashing; returns the new byte count.

    Read failures become :class:`_ReadError` so that a full disk (a write error) is
    not mistaken for a dropped connection and retried.
    """
    while True:
        try:
            chunk = src.read(_CHUNK)
        except (http.client.HTTPException, OSError) as e:  # reset, timeout, IncompleteRead
            raise _ReadError(e) from e
        if not chunk:
            return received
        dst.write(chunk)
        hasher.update(chunk)
        received += len(chunk)
        bar.update(received)


def copy_from_mirror(src: Path, part: Path, final: Path, t: Target, progress: bool) -> None:
    logger.info("Copying %s from the mirror %s", t.label, src)
    hasher = hashlib.sha256()
    bar = _Progress(t.label + " (mirror)", src.stat().st_size, enabled=progress)
    with open(src, "rb") as fin, open(part, "wb") as fout:
        try:
            done = _copy_stream(fin, fout, hasher, 0, bar)
        except _ReadError as e:
            raise ModelZooError(f"Cannot read the mirror file {src}: {e.__cause__}; check the mirror disk") from None
        fout.flush()
        os.fsync(fout.fileno())
    bar.close(done)
    try:
        finalize(part, final, hasher.hexdigest(), t, f"the mirror file {src}")
    except ChecksumError as e:
        raise ChecksumError(f"{e}. The mirror file {src} itself is bad: replace it with a good copy") from None


def _offline_error(t: Target, final: Path, reason: object) -> OfflineError:
    mirror = mirror_root()
    where_m = f"{MIRROR_ENV}={mirror} as {mirror / t.rel}" if mirror else f"{MIRROR_ENV}=/path/to/mirror as /path/to/mirror/{t.rel}"
    return OfflineError(
        f"no network: cannot reach {t.url} ({reason}). Put the file in {where_m}, "
        f"or in {CACHE_ENV}={_root_of(final, t)} as {final}"
    )


def _root_of(final: Path, t: Target) -> Path:
    """The cache folder a cached file lives in (``final`` minus its relative path)."""
    root = final
    for _ in t.rel.split("/"):
        root = root.parent
    return root


def _open(t: Target, offset: int, timeout: float, final: Path):
    headers = {"User-Agent": "detgn-model-zoo", "Accept-Encoding": "identity"}
    if offset > 0:
        headers["Range"] = f"bytes={offset}-"
    req = urllib.request.Request(t.url, headers=headers)
    try:
        return urllib.request.urlopen(req, timeout=timeout)
    except urllib.error.HTTPError as e:
        e.close()
        if e.code == 404:
            raise ModelNotFoundError(
                f"HTTP 404 Not Found: {t.url} ({t.label}). Check the model name in MODEL_ZOO.md, "
                f"and that the base URL ({base_url()}, env DETGN_MODEL_ZOO_URL) is right"
            ) from None
        if e.code == 416 and offset > 0:
            raise _RangeRefused() from None
        err = DownloadHTTPError(f"HTTP {e.code} {e.reason} for {t.url} ({t.label})")
        if e.code in _TRANSIENT_HTTP:
            raise _Transient(err) from None
        raise err from None
    except (urllib.error.URLError, http.client.HTTPException, OSError) as e:
        reason = getattr(e, "reason", e)
        raise _Transient(_offline_error(t, final, reason)) from None


def _fetch_once(t: Target, part: Path, final: Path, progress: bool, timeout: float) -> str:
    """One HTTP transfer into ``part`` (resuming it if possible); returns the sha256."""
    offset = part.stat().st_size if part.is_file() else 0
    try:
        resp = _open(t, offset, timeout, final)
    except _RangeRefused:
        # Our partial file does not fit the server's file; start over.
        logger.info("Server refused to resume %s (HTTP 416); starting over", t.label)
        part.unlink()
        return _fetch_once(t, part, final, progress, timeout)
    with resp:
        total: Optional[int] = None
        if offset > 0 and resp.status == 206:
            m = re.match(r"bytes (\d+)-\d+/(\d+|\*)", resp.headers.get("Content-Range", ""))
            if not m or int(m.group(1)) != offset:
                logger.info("Server answered a resume of %s with a different range; starting over", t.label)
                resp.close()
                part.unlink()
                return _fetch_once(t, part, final, progress, timeout)
            total = int(m.group(2)) if m.group(2) != "*" else None
            mode = "ab"
            logger.info("Resuming %s at byte %d", t.label, offset)
        else:
            if offset > 0:
                logger.info("Server does not support resuming (HTTP %d to a Range request); restarting %s", resp.status, t.label)
            offset, mode = 0, "wb"
            length = resp.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
        if total is None:
            total = t.size
        hasher = hashlib.sha256()
        if offset:
            with open(part, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    hasher.update(chunk)
        if offset == 0:
            logger.info("Downloading %s from %s", t.label, t.url)
        bar = _Progress(t.label, total, enabled=progress, start=offset)
        cause: Optional[BaseException] = None
        with open(part, mode) as f:
            try:
                _copy_stream(resp, f, hasher, offset, bar)
            except _ReadError as e:
                cause = e.__cause__
            f.flush()
            os.fsync(f.fileno())
        received = part.stat().st_size
        bar.close(received)
    if cause is not None or (total is not None and received < total):
        of = f"{received} of {total}" if total is not None else f"{received} of an unknown number of"
        why = f" ({type(cause).__name__}: {cause})" if cause is not None else ""
        raise _Transient(TruncatedDownloadError(
            f"Truncated transfer of {t.label} from {t.url}: got {of} bytes{why}. The partial file "
            f"{part} is kept; run again to resume (or put the file in {MIRROR_ENV})"
        ))
    return hasher.hexdigest()


def fetch_from_network(t: Target, part: Path, final: Path, progress: bool, retries: int, timeout: float, backoff_s: float) -> None:
    attempts = max(int(retries), 0) + 1
    for attempt in range(attempts):
        try:
            digest = _fetch_once(t, part, final, progress, timeout)
        except _Transient as e:
            if attempt + 1 >= attempts:
                raise e.error from None
            delay = min(backoff_s * (2 ** attempt), _MAX_BACKOFF_S)
            logger.warning("%s; retry %d of %d in %.2f s", e.error, attempt + 1, attempts - 1, delay)
            time.sleep(delay)
            continue
        finalize(part, final, digest, t, t.url)
        return
