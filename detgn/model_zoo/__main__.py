"""Command line for the model zoo (also how catalog hashes are pinned).

    python -m detgn.model_zoo list
    python -m detgn.model_zoo fetch detgn://ImageNetPretrained/R-50-GN [--sha256 HEX] [--retries N]
    python -m detgn.model_zoo hash path/to/file.pkl

``fetch`` and ``hash`` print ``sha256`` and ``size``; for a catalog entry that has no pinned
sha256, ``fetch`` also prints the exact lines to paste into that entry of
``detgn/model_zoo/catalog.py``. A failed download (offline, HTTP 404, checksum mismatch,
truncated transfer) prints its message on stderr and exits with status 1.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Optional

from . import (
    MODEL_ZOO,
    ModelZooError,
    UnknownModelError,
    base_url,
    download,
    file_sha256,
    is_verified,
    list_models,
)
from .catalog import ZOO_PREFIX, canonical_name


def _print_entry(path: str) -> str:
    digest = file_sha256(path)
    print(f"path:     {path}")
    print(f"sha256:   {digest}")
    print(f"size:     {os.path.getsize(path)}")
    print(f"verified: {is_verified(path)}")
    return digest


def _catalog_key(name: str) -> Optional[str]:
    """The catalog key of a zoo name, or of a URL under the base URL that a catalog entry points at."""
    if "://" not in name or name.startswith(ZOO_PREFIX):
        key = canonical_name(name)
        return key if key in MODEL_ZOO else None
    if name.startswith(base_url()):
        rel = name[len(base_url()):].split("?", 1)[0]
        return next((k for k, e in MODEL_ZOO.items() if e["path"] == rel), None)
    return None


def _print_pin(key: str, path: str, digest: str) -> None:
    """For an unpinned catalog entry: the lines that pin it, ready to paste."""
    entry = MODEL_ZOO[key]
    size = os.path.getsize(path)
    print()
    print(f"{ZOO_PREFIX}{key} has no pinned sha256. To pin it, replace "
          f'"sha256": None, "size": {entry.get("size")!r} in its entry in detgn/model_zoo/catalog.py with:')
    print(f'    "sha256": "{digest}", "size": {size}')
    print("so that the entry reads:")
    print(f'    "{key}": {{"path": "{entry["path"]}", "sha256": "{digest}", "size": {size}}},')


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m detgn.model_zoo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("list", help="list zoo names and whether their sha256 is pinned")
    f = sub.add_parser("fetch", help="download a zoo name or URL into the cache")
    f.add_argument("name")
    f.add_argument("--sha256", default=None, help="expected hex digest (default: the catalog's)")
    f.add_argument("--cache-dir", default=None)
    f.add_argument("--retries", type=int, default=3, help="extra attempts after a transient failure (default 3)")
    f.add_argument("--timeout", type=float, default=30.0, help="seconds for the connection and each read")
    h = sub.add_parser("hash", help="print the sha256 and size of a local file")
    h.add_argument("file")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    if args.cmd == "list":
        for name in list_models():
            entry = MODEL_ZOO[canonical_name(name)]
            pinned = "pinned" if entry["sha256"] else "UNPINNED"
            print(f"{name:40s} {pinned:9s} {entry['path']}")
    elif args.cmd == "fetch":
        try:
            path = download(args.name, sha256=args.sha256, cache_dir=args.cache_dir, retries=args.retries,
                            timeout=args.timeout)
        except (ModelZooError, UnknownModelError, ValueError) as e:  # the message says what to do
            print(str(e), file=sys.stderr)
            return 1
        digest = _print_entry(path)
        key = _catalog_key(args.name)
        if key is not None and not MODEL_ZOO[key].get("sha256"):
            _print_pin(key, path, digest)
    else:
        if not os.path.isfile(args.file):
            print(f"No such file: {args.file}", file=sys.stderr)
            return 2
        _print_entry(args.file)
    return 0


if __name__ == "__main__":
    sys.exit(main())
