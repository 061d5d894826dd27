"""Logging set-up: the console on rank 0, and ``log.txt`` (``log.txt.rankN``) per process.

Every module logs through ``logging.getLogger(__name__)``; all of them sit under
the ``detgn`` logger, which is the one configured here. Calling
:func:`setup_logger` again (a second run in the same process, tests) replaces
the handlers it added before instead of printing every line twice.
"""
from __future__ import annotations

import logging
import os
import sys
from typing import Optional

__all__ = ["setup_logger", "log_path"]

_FORMAT = "[%(asctime)s %(name)s %(levelname)s] %(message)s"
_DATEFMT = "%m/%d %H:%M:%S"
_OWN = "_detgn_handler"  # marks handlers this module added


def log_path(output_dir: str, rank: int) -> str:
    """``OUTPUT_DIR/log.txt`` for rank 0, ``OUTPUT_DIR/log.txt.rank{r}`` for the others."""
    name = "log.txt" if rank == 0 else f"log.txt.rank{rank}"
    return os.path.join(output_dir, name)


def setup_logger(
    output_dir: Optional[str] = None,
    *,
    rank: int = 0,
    name: str = "detgn",
    level: int = logging.INFO,
    color: bool = True,
) -> logging.Logger:
    """Configure the ``name`` logger for this process.

    Args:
        output_dir: where ``log.txt`` goes (created if missing); None logs to the console only.
        rank: the process rank; only rank 0 writes to the console, every rank to its file.
        name: the logger to configure (``detgn`` covers the whole package).
        level: the threshold of both handlers.
        color: colour the level name on a terminal (never in the file).

    Returns:
        the configured logger.
    """
    logger = logging.getLogger(name)
    logger.setLevel(level)
    # Our handlers print; the root logger would print a second copy.
    logger.propagate = False
    for h in list(logger.handlers):
        if getattr(h, _OWN, False):
            logger.removeHandler(h)
            h.close()
    plain = logging.Formatter(_FORMAT, datefmt=_DATEFMT)
    if rank == 0:
        console = logging.StreamHandler(stream=sys.stdout)
        console.setLevel(level)
        use_color = color and hasattr(sys.stdout, "isatty") and sys.stdout.isatty()
        console.setFormatter(_ColorFormatter(_FORMAT, datefmt=_DATEFMT) if use_color else plain)
        setattr(console, _OWN, True)
        logger.addHandler(console)
    if output_dir:
        os.makedirs(output_dir, exist_ok=True)
        fh = logging.FileHandler(log_path(output_dir, rank), mode="a")
        fh.setLevel(level)
        fh.setFormatter(plain)
        setattr(fh, _OWN, True)
        logger.addHandler(fh)
    return logger


class _ColorFormatter(logging.Formatter):
    """Warnings in yellow, errors in red, so they stand out in a long training log."""

    _COLORS = {logging.WARNING: "\x1b[33m", logging.ERROR: "\x1b[31m", logging.CRITICAL: "\x1b[31;1m"}

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        color = self._COLORS.get(record.levelno)
        return f"{color}{text}\x1b[0m" if color else text
