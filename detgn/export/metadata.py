"""The metadata written beside an exported model, and the checks made when it is loaded.

``DIR/detgn_export.json`` says everything the runtime needs that the graph does not hold:
class names, input channel order, the resize rule, the mask paste, the score threshold, the
detgn version and the config the model came from. The same JSON is embedded in the model
file itself (ONNX ``metadata_props``, or an extra file of the ``.pt2`` archive), and the
JSON records the model file's sha256. Loading refuses, with a message naming the file and
the field, a folder whose JSON was edited, whose model file was replaced, or whose JSON
belongs to another export.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict

from detgn.utils.errors import UserError

__all__ = ["METADATA_FILE", "FORMAT_VERSION", "ExportError", "ExportMismatchError", "read_metadata",
           "canonical_json", "MODEL_FILES"]

METADATA_FILE = "detgn_export.json"
FORMAT_VERSION = 1
# File name of the model for each export format.
MODEL_FILES = {"onnx": "model.onnx", "torch_export": "model.pt2"}
# Key of the embedded copy (ONNX metadata_props key, .pt2 extra file name).
EMBEDDED_KEY = "detgn_export"
# Fields the embedded copy must repeat exactly (everything but the file's own hash).
_REQUIRED = ("format_version", "format", "model_file", "detgn_version", "config", "class_names", "num_classes",
             "input", "resize", "score_threshold", "mask_on", "outputs")


class ExportError(UserError, RuntimeError):
    """A model could not be exported (names the part that failed), or an export folder is unusable."""


class ExportMismatchError(ExportError):
    """An export folder's metadata does not match its model file."""


def canonical_json(meta: Dict[str, Any]) -> str:
    """The metadata as embedded: without ``model_sha256`` (the file cannot hold its own hash)."""
    return json.dumps({k: v for k, v in meta.items() if k != "model_sha256"}, sort_keys=True)


def read_metadata(export_dir) -> Dict[str, Any]:
    """The metadata of an export folder, checked for its fields and against the model file's hash.

    Raises:
        ExportError: no folder or no metadata file, unreadable JSON, a missing field, a newer
            format version, or a missing model file.
        ExportMismatchError: the model file is not the one the metadata was written for.
    """
    from detgn.model_zoo.verify import file_sha256

    folder = Path(export_dir)
    path = folder / METADATA_FILE
    if not path.is_file():
        raise ExportError(
            f"{path} does not exist: {folder} is not an export folder (tools/export_model.py writes one)"
        )
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ExportError(f"{path} is not readable JSON ({e}); export the model again") from e
    missing = [k for k in _REQUIRED + ("model_sha256",) if k not in meta]
    if missing:
        raise ExportError(f"{path} lacks {missing}; it was not written by tools/export_model.py. Export again")
    if int(meta["format_version"]) > FORMAT_VERSION:
        raise ExportError(
            f"{path} has format_version {meta['format_version']}, newer than this detgn reads "
            f"({FORMAT_VERSION}); update detgn"
        )
    if meta["format"] not in MODEL_FILES:
        raise ExportError(f"{path}: unknown format {meta['format']!r} (expected one of {sorted(MODEL_FILES)})")
    model_path = folder / meta["model_file"]
    if not model_path.is_file():
        raise ExportError(f"{path} names the model file {meta['model_file']}, which is not in {folder}")
    digest = file_sha256(model_path)
    if digest != meta["model_sha256"]:
        raise ExportMismatchError(
            f"{model_path} does not match {path}: its sha256 is {digest}, the metadata was written for "
            f"{meta['model_sha256']}. The model file was replaced or the metadata belongs to another export; "
            "export the model again (tools/export_model.py) rather than mixing files"
        )
    return meta


def check_embedded(meta: Dict[str, Any], embedded: str, source: str) -> None:
    """Refuse a model whose embedded metadata differs from the folder's JSON (an edited JSON)."""
    try:
        inner = json.loads(embedded)
    except ValueError as e:
        raise ExportMismatchError(f"{source}: its embedded metadata is not JSON ({e}); export the model again") from e
    outer = json.loads(canonical_json(meta))
    differ = sorted(k for k in set(inner) | set(outer) if inner.get(k) != outer.get(k))
    if differ:
        raise ExportMismatchError(
            f"{source} was exported with other metadata than {METADATA_FILE} holds: {differ} differ "
            f"(e.g. {differ[0]}: model {inner.get(differ[0])!r}, file {outer.get(differ[0])!r}). "
            "Edit nothing in an export folder; export the model again to change it"
        )
