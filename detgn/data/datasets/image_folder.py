"""ImageFolder datasets (ImageNet layout ``root/<class name>/<image>``) for the image classifier.

Records are ``{"file_name", "image_id", "label"}`` dicts (``image_id`` is the index in
the listing, ``label`` the index of the class in the sorted class list), so the data path
is the detection one: records -> :class:`~detgn.data.classification.ClassificationMapper`
-> the loaders of :mod:`detgn.data.classification` (exact resume, per-sample augmentation
generators, unreadable training files skipped and counted, see :mod:`detgn.data.build`).

A validation set takes its labels from the TRAINING set's class list
(``register_image_folder(..., classes_of=train_name)``), so a val folder that lacks a
class does not shift the labels of the others; a val class the training set does not
have is an error.

Built-in names (registered by :func:`register_builtin_image_folders`, under
``$DETGN_DATASETS``, default ``./datasets``, resolved at lookup time):
``imagenet_train`` / ``imagenet_val`` -> ``imagenet/{train,val}``,
``synthetic_cls_train`` / ``synthetic_cls_val`` -> ``synthetic_cls/{train,val}``.
"""
from __future__ import annotations

import logging
import os
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

from ..catalog import DatasetCatalog, DatasetNotFoundError, MetadataCatalog, datasets_root

logger = logging.getLogger(__name__)

__all__ = [
    "load_image_folder",
    "register_image_folder",
    "register_builtin_image_folders",
    "get_classification_dataset_dicts",
    "BUILTIN_IMAGE_FOLDERS",
]

# name -> (folder relative to the datasets root, name of the set whose classes it uses)
BUILTIN_IMAGE_FOLDERS = {
    "imagenet_train": ("imagenet/train", None),
    "imagenet_val": ("imagenet/val", "imagenet_train"),
    "synthetic_cls_train": ("synthetic_cls/train", None),
    "synthetic_cls_val": ("synthetic_cls/val", "synthetic_cls_train"),
}

_HOW_TO_GET = {
    "imagenet": "put ILSVRC2012 there as train/<wnid>/*.JPEG and val/<wnid>/*.JPEG (the val images sorted into "
                "per-class folders, e.g. by ILSVRC2012's validation ground truth)",
    "synthetic_cls": "create it with `python datasets/prepare_synthetic_cls.py --out <DETGN_DATASETS>/synthetic_cls`",
}
_LAYOUT = "root/<class name>/<image>.{jpg,jpeg,png,...}, one folder per class (the ImageNet layout)"

# ----------------------------------------------------------------------------- listing


def _not_found(root: str, what: str, hint: Optional[str]) -> DatasetNotFoundError:
    env = os.environ.get("DETGN_DATASETS", "<unset: ./datasets>")
    return DatasetNotFoundError(
        f"{what} at {root}. Expected {_LAYOUT}. Built-in sets are looked up under DETGN_DATASETS={env}"
        + (f"; {hint}." if hint else ".")
    )


def _folder_classes(root: str, hint: Optional[str] = None) -> List[str]:
    from torchvision.datasets.folder import find_classes  # here: torchvision is slow to import

    if not os.path.isdir(root):
        raise _not_found(root, "Image folder dataset not found", hint)
    try:
        return find_classes(root)[0]
    except FileNotFoundError:  # no class sub-folder at all
        raise _not_found(root, "No class folders found", hint) from None


def _list(root: str, classes: Optional[Sequence[str]], hint: Optional[str]) -> Tuple[List[dict], List[str]]:
    from torchvision.datasets.folder import IMG_EXTENSIONS, make_dataset

    root = os.path.abspath(os.path.expanduser(os.fspath(root)))
    found = _folder_classes(root, hint)
    if classes is None:
        classes = found
    else:
        classes = list(classes)
        unknown = [c for c in found if c not in classes]
        if unknown:
            shown = ", ".join(repr(c) for c in unknown[:10])
            shown += f" and {len(unknown) - 10} more" if len(unknown) > 10 else ""
            raise ValueError(
                f"{root}: class folder(s) {shown} are not classes of the training set ({len(classes)} classes: "
                f"{', '.join(classes[:10])}{' ...' if len(classes) > 10 else ''}); a validation folder may only "
                "hold classes the model was trained on"
            )
    index = {c: i for i, c in enumerate(classes)}
    try:
        # Only the folder's own classes, with the given labels: a missing class shifts nothing.
        samples = make_dataset(root, {c: index[c] for c in found}, extensions=IMG_EXTENSIONS)
    except FileNotFoundError as e:  # a class folder without a single image
        raise _not_found(root, f"Class folder(s) without images ({e})", hint) from None
    records = [{"file_name": path, "image_id": i, "label": int(label)} for i, (path, label) in enumerate(samples)]
    return records, list(classes)


def load_image_folder(root: str, *, classes: Optional[Sequence[str]] = None) -> Tuple[List[dict], List[str]]:
    """List an ImageFolder dataset (``root/<class name>/<image>``).

    Args:
        root: the folder holding one sub-folder per class.
        classes: the class list that defines the labels (a validation set passes its
            training set's); None: the sorted sub-folder names of ``root``.
    Returns:
        ``(records, classes)``: records ``{"file_name" (absolute path), "image_id" (index in
        the listing), "label" (index into classes)}`` sorted by class folder then file name.
    Raises:
        DatasetNotFoundError: ``root`` is missing, has no class folder, or a class folder has no image.
        ValueError: a class folder of ``root`` is not in the given ``classes``.
    """
    return _list(root, classes, hint=None)


# ---------------------------------------------------------------------------- registering
PathLike = Union[str, os.PathLike, Callable[[], str]]


def register_image_folder(name: str, root: PathLike, *, classes_of: Optional[str] = None) -> None:
    """Register an ImageFolder dataset under ``name``.

    Args:
        root: the folder of class sub-folders, or a zero-argument function returning it
            (resolved at every lookup).
        classes_of: the registered training set whose class list gives this set's labels
            (for a validation set); None: this folder's own classes.

    Metadata: ``classes`` (listed when asked for), ``image_root``, ``classes_of`` and
    ``evaluator_type = "classification"``.
    """
    root_fn = root if callable(root) else (lambda path=os.path.abspath(os.fspath(root)): path)
    _register(name, root_fn, classes_of=classes_of, hint=lambda: None)


def _register(name: str, root_fn: Callable[[], str], *, classes_of: Optional[str],
              hint: Callable[[], Optional[str]]) -> None:
    def classes() -> List[str]:
        if classes_of is not None:
            return list(MetadataCatalog.get(classes_of).classes)
        return _folder_classes(root_fn(), hint())

    def load() -> List[dict]:
        root, labels = root_fn(), None
        try:
            if classes_of is not None:
                _folder_classes(root, hint())  # its own folder missing is the first thing to say
                try:
                    labels = classes()
                except DatasetNotFoundError as e:
                    raise DatasetNotFoundError(
                        f"it takes its labels from '{classes_of}', which is missing: {e}") from None
            return _list(root, labels, hint())[0]
        except DatasetNotFoundError as e:  # name the dataset: the path alone may not say which
            raise DatasetNotFoundError(f"Dataset '{name}': {e}") from None

    DatasetCatalog.register(name, load)
    meta = MetadataCatalog.get(name)
    meta.set(evaluator_type="classification", classes_of=classes_of)
    meta.set_lazy(image_root=root_fn, classes=classes)


def register_builtin_image_folders() -> None:
    """Register :data:`BUILTIN_IMAGE_FOLDERS` (paths under ``datasets_root()`` at lookup time)."""
    for name, (rel, classes_of) in BUILTIN_IMAGE_FOLDERS.items():
        family = rel.split("/")[0]
        # Default arguments bind this iteration's values.
        _register(name, lambda rel=rel: os.path.join(datasets_root(), rel), classes_of=classes_of,
                  hint=lambda family=family: _HOW_TO_GET[family])


def get_classification_dataset_dicts(names: Union[str, Sequence[str]]) -> Tuple[List[dict], List[str]]:
    """Records of one or more registered classification sets, concatenated, and their classes.

    Several sets must share their class list; ``image_id`` is renumbered over the
    concatenation so it stays unique.
    """
    names = [names] if isinstance(names, str) else list(names)
    if not names:
        raise ValueError("No dataset names given (DATASETS.TRAIN / DATASETS.TEST is empty)")
    records: List[dict] = []
    classes: Dict[str, List[str]] = {}
    for name in names:
        dicts = DatasetCatalog.get(name)
        if not dicts:
            raise ValueError(f"Dataset '{name}' has no images")
        classes[name] = list(MetadataCatalog.get(name).classes)
        records.extend(dicts)
    if len({tuple(c) for c in classes.values()}) > 1:
        listing = "; ".join(f"{n}: {len(c)} classes {c[:5]}{'...' if len(c) > 5 else ''}" for n, c in classes.items())
        raise ValueError(f"Datasets {names} disagree on their classes ({listing}); train on sets that share them")
    if len(names) > 1:
        records = [{**r, "image_id": i} for i, r in enumerate(records)]
    return records, classes[names[0]]
