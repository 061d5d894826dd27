"""Command line for the model zoo (also how catalog hashes are pinned).

    python -m detgn.model_zoo list
    python -m detgn.model_zoo fetch detgn://ImageNetPretrained/R-50-GN [--sha256 HEX]
    python -m detgn.model_zoo hash path/to/file.pkl

``fetch`` and ``hash`` print ``sha256`` and ``size`` in the form of a catalog entry.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys

from . import MODEL_ZOO, download, file_sha256, is_verified, list_models
from .catalog import canonical_name


def _print_entry(path: str) -> None:
    print(f"path:     {path}")
    print(f"sha256:   {file_sha256(path)}")
    print(f"size:     {os.path.getsize(path)}")
    print(f"verified: {is_verified(path)}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m detgn.model_zoo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("list", help="list zoo names and whether their sha256 is pinned")
    f = sub.add_parser("fetch", help="download a zoo name or URL into the cache")
    f.add_argument("name")
    f.add_argument("--sha256", default=None, help="expected hex digest (default: the catalog's)")
    f.add_argument("--cache-dir", default=None)
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
        _print_entry(download(args.name, sha256=args.sha256, cache_dir=args.cache_dir))
    else:
        if not os.path.isfile(args.file):
            print(f"No such file: {args.file}", file=sys.stderr)
            return 2
        _print_entry(args.file)
    return 0


if __name__ == "__main__":
    sys.exit(main())
