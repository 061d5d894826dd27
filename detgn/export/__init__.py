"""Deployment: export a trained detector (ONNX, ``torch.export``) and run the export.

- :func:`export_model` / :func:`export_detector` write ``DIR/model.onnx`` (or ``model.pt2``) and
  ``DIR/detgn_export.json`` (:mod:`detgn.export.exporter`);
- :class:`ExportedPredictor` runs such a folder like ``Predictor`` (:mod:`detgn.export.runtime`);
- :class:`ExportableDetector` is the single-image, tensor-only graph that is exported
  (:mod:`detgn.export.graph`), with the ``detgn::batched_nms`` operator of :mod:`detgn.export.ops`.

onnx, onnxruntime, onnxscript and openvino are imported only when used (``pip install detgn[export]``).
"""
from .exporter import export_detector, export_model, fold_batch_norms, input_side_limits
from .graph import ExportableDetector
from .metadata import METADATA_FILE, ExportError, ExportMismatchError, read_metadata
from .runtime import BACKENDS, ExportedPredictor

__all__ = [
    "BACKENDS",
    "METADATA_FILE",
    "ExportError",
    "ExportMismatchError",
    "ExportableDetector",
    "ExportedPredictor",
    "export_detector",
    "export_model",
    "fold_batch_norms",
    "input_side_limits",
    "read_metadata",
]
