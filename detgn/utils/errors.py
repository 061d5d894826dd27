"""``UserError``: the mark of an error whose message says everything the user needs.

Bad configs, datasets, weights files, downloads, unreadable images and diverging losses
raise exceptions that name the file or key and say what to do. Their classes also
derive from :class:`UserError`, so the tools print such a message alone, without a
traceback (which only buries it), and the trainer logs it the same way. Anything else
is a bug and keeps its traceback.
"""
from __future__ import annotations

__all__ = ["UserError", "is_user_error"]


class UserError(Exception):
    """Mixin base of exceptions whose message is complete (see the module docstring)."""


def is_user_error(exc: BaseException) -> bool:
    """Whether ``exc`` is a :class:`UserError` (print its message alone)."""
    return isinstance(exc, UserError)
