"""Named datasets: ``DatasetCatalog`` (name -> records) and ``MetadataCatalog``.

A dataset is registered as a function returning ``list[dict]`` records (the COCO-style
format of ``detgn/data/coco.py``); nothing is read until ``DatasetCatalog.get``.
COCO-format sets registered with :func:`register_coco_instances` get metadata whose
category attributes (``thing_classes``, id maps) are read from the JSON on first use
and cached, so an evaluator can ask for them before the records are loaded.

Built-in names (``coco_2017_{train,val}``, ``synthetic_{train,val}``) resolve their
files under the ``DETGN_DATASETS`` environment variable (default ``./datasets``) at
lookup time, so setting the variable after ``import detgn`` still works.
"""
from __future__ import annotations

import difflib
import inspect
import os
from typing import Any, Callable, Dict, List, Union

from detgn.utils.errors import UserError

__all__ = [
    "DatasetNotFoundError",
    "DatasetCatalog",
    "MetadataCatalog",
    "Metadata",
    "register_coco_instances",
    "datasets_root",
    "BUILTIN_COCO_DATASETS",
]

# name -> (json path, image folder), relative to the datasets root.
BUILTIN_COCO_DATASETS = {
    "coco_2017_train": ("coco/annotations/instances_train2017.json", "coco/train2017"),
    "coco_2017_val": ("coco/annotations/instances_val2017.json", "coco/val2017"),
    "synthetic_train": ("synthetic/annotations/instances_train.json", "synthetic/train"),
    "synthetic_val": ("synthetic/annotations/instances_val.json", "synthetic/val"),
}

_HOW_TO_GET = {
    "coco": "download COCO 2017 (images and annotations) into that folder (see datasets/README.md)",
    "synthetic": "create it with `python datasets/prepare_synthetic.py --out <DETGN_DATASETS>/synthetic`",
}


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

    def register(self, name: str, fn: Callable[..., List[dict]]) -> None:
        if not callable(fn):
            raise TypeError(f"DatasetCatalog.register('{name}', fn): fn must be callable, got {type(fn).__name__}")
        if name in self._fns:
            raise ValueError(
                f"Dataset '{name}' is already registered; pick another name or call "
                f"DatasetCatalog.remove('{name}') first."
            )
        self._fns[name] = fn

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
        """Whether ``name``'s function takes keyword ``kwarg`` (e.g. ``on_bad``)."""
        if name not in self._fns:
            raise KeyError(_unknown_name_message("Dataset", name, list(self._fns)))
        try:
            params = inspect.signature(self._fns[name]).parameters
        except (TypeError, ValueError):
            return False
        return kwarg in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())

    def list(self) -> List[str]:
        return list(self._fns)

    def remove(self, name: str) -> None:
        self._fns.pop(name, None)

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

PathLike = Union[str, os.PathLike, Callable[[], str]]


def _as_fn(p: PathLike) -> Callable[[], str]:
    if callable(p):
        return p
    path = os.path.abspath(os.fspath(p))
    return lambda: path


def register_coco_instances(name: str, json_file: PathLike, image_root: PathLike) -> None:
    """Register a COCO-format instances set under ``name``.

    Args:
        json_file: the instances JSON (a path, or a zero-argument function returning one,
            resolved at every lookup).
        image_root: the folder the JSON's ``file_name`` entries are relative to.

    ``DatasetCatalog.get(name, on_bad="drop_degenerate"|"error"|"skip")`` loads and validates it with
    :func:`detgn.data.coco.load_coco_json`. Its metadata: ``json_file``, ``image_root``,
    ``evaluator_type = "coco"``, and ``thing_classes``, ``thing_dataset_id_to_contiguous_id``,
    ``contiguous_id_to_dataset_id`` read from the JSON's categories (sorted by id).
    """
    _register_coco(name, _as_fn(json_file), _as_fn(image_root), missing_hint=None)


def _register_coco(
    name: str,
    json_fn: Callable[[], str],
    root_fn: Callable[[], str],
    missing_hint: Union[Callable[[], str], None],
) -> None:
    # Imported here: coco.py imports this module for metadata.
    from .coco import load_coco_categories, load_coco_json

    def load(on_bad: str = "drop_degenerate") -> List[dict]:
        # A missing built-in set is the usual first-run problem: say where it was
        # looked for and how to get it instead of a bare "file not found".
        if missing_hint is not None and not os.path.isfile(json_fn()):
            raise DatasetNotFoundError(f"Dataset '{name}': annotations not found at {json_fn()}. {missing_hint()}")
        return load_coco_json(json_fn(), root_fn(), name, on_bad=on_bad)

    DatasetCatalog.register(name, load)
    meta = MetadataCatalog.get(name)
    meta.set(evaluator_type="coco")
    meta.set_lazy(
        json_file=json_fn,
        image_root=root_fn,
        thing_classes=lambda: load_coco_categories(json_fn()).thing_classes,
        thing_dataset_id_to_contiguous_id=lambda: load_coco_categories(json_fn()).dataset_to_contiguous,
        contiguous_id_to_dataset_id=lambda: load_coco_categories(json_fn()).contiguous_to_dataset,
    )


def _register_builtins() -> None:
    for name, (json_rel, root_rel) in BUILTIN_COCO_DATASETS.items():
        family = name.split("_")[0]
        # Default arguments bind this iteration's values.
        json_fn = lambda rel=json_rel: os.path.join(datasets_root(), rel)
        root_fn = lambda rel=root_rel: os.path.join(datasets_root(), rel)
        hint = lambda family=family: (
            f"DETGN_DATASETS={os.environ.get('DETGN_DATASETS', '<unset: ./datasets>')}; set it to the folder "
            f"that holds '{family}/', or {_HOW_TO_GET[family]}."
        )
        _register_coco(name, json_fn, root_fn, missing_hint=hint)


_register_builtins()
