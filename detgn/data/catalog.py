"""Named datasets: ``DatasetCatalog`` (name -> records) and ``MetadataCatalog``.

A dataset is registered as a function returning ``list[dict]`` records (the COCO-style
format of ``detgn/data/datasets/coco.py``); nothing is read until ``DatasetCatalog.get``. The
catalog knows no format: COCO-format sets are registered by
:func:`detgn.data.datasets.coco.register_coco_instances`, the built-in names by
:mod:`detgn.data.datasets.builtin`. Built-in files live under :func:`datasets_root`
(``DETGN_DATASETS``, default ``./datasets``), resolved at lookup time.
"""
from __future__ import annotations

import difflib
import os
from typing import Any, Callable, Dict, FrozenSet, List, Sequence

from detgn.utils.errors import UserError

__all__ = [
    "DatasetNotFoundError",
    "DatasetCatalog",
    "MetadataCatalog",
    "Metadata",
    "datasets_root",
]


class DatasetNotFoundError(UserError, FileNotFoundError):
    """A built-in dataset whose files are not where ``DETGN_DATASETS`` says (the message says how to get them)."""


def datasets_root() -> str:
    """The folder built-in datasets live under: ``$DETGN_DATASETS`` or ``./datasets``."""
    return os.path.abspath(os.environ.get("DETGN_DATASETS", "datasets"))


def _unknown_name_message(kind: str, name: str, names: List[str]) -> str:
    close = difflib.get_close_matches(name, names, n=3, cutoff=0.5)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    return (
        f"{kind} '{name}' is not registered.{hint} Registered: {', '.join(sorted(names))}. "
        "Register a COCO-format set with detgn.data.register_coco_instances(name, json_file, image_root)."
    )


class _DatasetCatalog:
    """Maps a dataset name to a function returning its records (``list[dict]``)."""

    def __init__(self) -> None:
        self._fns: Dict[str, Callable[..., List[dict]]] = {}
        self._accepts: Dict[str, FrozenSet[str]] = {}

    def register(self, name: str, fn: Callable[..., List[dict]], *, accepts: Sequence[str] = ()) -> None:
        """Register ``fn`` (called on every :meth:`get`) under ``name``.

        Args:
            accepts: the keyword arguments ``fn`` takes that loaders may pass, e.g.
                ``("on_bad",)`` for a set that validates its annotations with the
                ``DATASETS.ON_BAD_ANNOTATION`` policy. ``fn`` is called without them otherwise.
        """
        if not callable(fn):
            raise TypeError(f"DatasetCatalog.register('{name}', fn): fn must be callable, got {type(fn).__name__}")
        if name in self._fns:
            raise ValueError(
                f"Dataset '{name}' is already registered; pick another name or call "
                f"DatasetCatalog.remove('{name}') first."
            )
        self._fns[name] = fn
        self._accepts[name] = frozenset(accepts)

    def get(self, name: str, **kwargs: Any) -> List[dict]:
        """Call the registered function (with ``kwargs``) and return its records."""
        if name not in self._fns:
            raise KeyError(_unknown_name_message("Dataset", name, list(self._fns)))
        records = self._fns[name](**kwargs)
        if not isinstance(records, list):
            raise TypeError(
                f"Dataset '{name}': the registered function returned {type(records).__name__}, not a list of dicts"
            )
        return records

    def accepts(self, name: str, kwarg: str) -> bool:
        """Whether ``name``'s function takes keyword ``kwarg`` (as declared when it was registered)."""
        if name not in self._fns:
            raise KeyError(_unknown_name_message("Dataset", name, list(self._fns)))
        return kwarg in self._accepts[name]

    def list(self) -> List[str]:
        return list(self._fns)

    def remove(self, name: str) -> None:
        self._fns.pop(name, None)
        self._accepts.pop(name, None)

    def __contains__(self, name: str) -> bool:
        return name in self._fns


class Metadata:
    """Attributes of one dataset (``name``, ``json_file``, ``thing_classes``, ...).

    Values are set with :meth:`set` or resolved lazily from zero-argument functions
    (used for paths under ``DETGN_DATASETS`` and for categories read from the JSON).
    Setting an attribute to a different value than it already has is an error, since
    two parts of a run would otherwise disagree about, e.g., the class order.
    """

    def __init__(self, name: str):
        self.__dict__["name"] = name
        self.__dict__["_lazy"] = {}

    def __getattr__(self, key: str) -> Any:
        lazy = self.__dict__["_lazy"]
        if key in lazy:
            return lazy[key]()
        raise AttributeError(
            f"Metadata of dataset '{self.__dict__['name']}' has no attribute '{key}'; it has: "
            f"{', '.join(sorted(self.keys()))}"
        )

    def __setattr__(self, key: str, value: Any) -> None:
        if key in self.__dict__ and key != "_lazy":
            old = self.__dict__[key]
            if old != value:
                raise ValueError(
                    f"Metadata '{key}' of dataset '{self.name}' is already {old!r}; refusing to change it to "
                    f"{value!r}. Register the other data under a new dataset name."
                )
            return
        self.__dict__["_lazy"].pop(key, None)
        self.__dict__[key] = value

    def set(self, **kwargs: Any) -> "Metadata":
        for k, v in kwargs.items():
            setattr(self, k, v)
        return self

    def set_lazy(self, **fns: Callable[[], Any]) -> "Metadata":
        """Attributes computed on every access by the given zero-argument functions."""
        for k, fn in fns.items():
            if k in self.__dict__:
                raise ValueError(f"Metadata '{k}' of dataset '{self.name}' is already set")
            self.__dict__["_lazy"][k] = fn
        return self

    def get(self, key: str, default: Any = None) -> Any:
        try:
            return getattr(self, key)
        except AttributeError:
            return default

    def keys(self) -> List[str]:
        return [k for k in self.__dict__ if k != "_lazy"] + list(self.__dict__["_lazy"])

    def has(self, key: str) -> bool:
        return key in self.keys()

    def as_dict(self) -> Dict[str, Any]:
        return {k: getattr(self, k) for k in self.keys()}

    def __repr__(self) -> str:
        return f"Metadata(name={self.name!r}, keys={sorted(self.keys())})"


class _MetadataCatalog:
    """Maps a dataset name to its :class:`Metadata` (created empty on first ``get``)."""

    def __init__(self) -> None:
        self._meta: Dict[str, Metadata] = {}

    def get(self, name: str) -> Metadata:
        if name not in self._meta:
            self._meta[name] = Metadata(name)
        return self._meta[name]

    def list(self) -> List[str]:
        return list(self._meta)

    def remove(self, name: str) -> None:
        self._meta.pop(name, None)


DatasetCatalog = _DatasetCatalog()
MetadataCatalog = _MetadataCatalog()
