"""Durable file writes: a file is either its old content or the complete new one, never a mix.

Every file detgn writes for later reading (checkpoints and their pointer, downloads and
their ``.sha256`` sidecars, evaluation JSON, the synthetic dataset's JSON, ``config.yaml``,
the curve plot, golden counts) goes through :func:`atomic_write`: the content is
written into a temp file in the destination's folder, flushed and fsynced, renamed over
the destination (``os.replace``, atomic on POSIX and Windows), and the folder is fsynced
so the rename survives a power loss. A process killed at any point, even with
``kill -9``, leaves the previous file intact and at most a temp file named
``.<name>.<random>.tmp`` beside it; on an exception the temp file is removed.

A file that is filled progressively by other means (a resumable download's ``.part``)
is moved into place with :func:`replace_durably`.
"""
from __future__ import annotations

import json
import os
import tempfile
from typing import Any, BinaryIO, Callable

__all__ = [
    "atomic_write",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "fsync_dir",
    "replace_durably",
]


def fsync_dir(path: str) -> None:
    """fsync the folder ``path`` so that a rename in it is durable (best effort).

    Not every platform or filesystem lets a folder be opened or fsynced; the file's own
    data is fsynced anyway, so failing here is silently accepted.
    """
    try:
        fd = os.open(os.fspath(path), os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def replace_durably(src: str, dst: str) -> None:
    """``os.replace(src, dst)``, then fsync ``dst``'s folder (``src`` must already be fsynced)."""
    os.replace(src, dst)
    fsync_dir(os.path.dirname(os.path.abspath(dst)))


def atomic_write(path: str, write_fn: Callable[[BinaryIO], Any]) -> None:
    """Write ``path`` atomically; ``write_fn(binary_file)`` writes the content.

    Args:
        path: the destination (its folder must exist).
        write_fn: called once with a binary file open on the temp file.

    Raises:
        whatever ``write_fn`` or the filesystem raises; the temp file is removed first
        and ``path`` is left as it was.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            write_fn(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    fsync_dir(folder)


def atomic_write_bytes(path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path: str, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str, obj: Any, **dumps_kwargs: Any) -> None:
    """Write ``json.dumps(obj, **dumps_kwargs)`` to ``path`` atomically, creating its folder.

    ``json.dumps`` (one call of the C encoder) is several times faster than
    ``json.dump``'s chunked writes on large result lists.
    """
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    atomic_write_text(path, json.dumps(obj, **dumps_kwargs))
