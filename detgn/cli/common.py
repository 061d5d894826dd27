"""What the subcommands share: loading the config a user named, with a clear error."""
from __future__ import annotations

import sys
from typing import Sequence

from detgn.config import ConfigError, load_config


def load_config_or_report(name: str, opts: Sequence[str]):
    """The config ``name`` with the ``KEY VALUE`` overrides ``opts``, or None after printing
    ``Config error: ...`` to stderr (the caller exits with status 2)."""
    try:
        return load_config(name, list(opts))
    except ConfigError as e:
        print(f"Config error: {e}", file=sys.stderr)
        return None
