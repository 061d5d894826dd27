"""``ConfigError``: a config file, name, key or value that cannot be used as written.

Its own module so that every part of :mod:`detgn.config` (loading, conventions) raises the
same class without importing each other.
"""
from __future__ import annotations

from detgn.utils.errors import UserError

__all__ = ["ConfigError"]


class ConfigError(UserError, ValueError):
    """A config file, name or override that cannot be used as written."""
