"""Run an exported model like :class:`~detgn.engine.Predictor`: BGR uint8 image in, ``Instances`` out.

    from detgn.export import ExportedPredictor
    predictor = ExportedPredictor("exported/")            # onnxruntime for model.onnx
    instances = predictor(cv2.imread("a.jpg"))            # pred_boxes, scores, pred_classes, pred_masks

It needs only the export folder (model file + ``detgn_export.json``), no config tree. Around
the graph it runs the very code ``Predictor`` runs: the test-time resize of
:class:`~detgn.data.DatasetMapper` (OpenCV, from the metadata's rule) before, and
:func:`~detgn.layers.mask_ops.paste_masks_in_image` with the model's paste method after.

Backends: ``onnxruntime`` (default for ONNX), ``openvino`` (the same ONNX file, OpenVINO's CPU
plugin) and ``torch`` (the ``torch.export`` program of a ``.pt2`` export).
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import torch

from detgn.data.mapper import DatasetMapper
from detgn.layers.mask_ops import paste_masks_in_image
from detgn.structures import Boxes, Instances
from detgn.utils.cpu import bf16_autocast

from .metadata import EMBEDDED_KEY, ExportError, ExportMismatchError, check_embedded, read_metadata

logger = logging.getLogger(__name__)

__all__ = ["ExportedPredictor", "BACKENDS"]

# Environment variables that cap oneDNN's instruction set (PyTorch's and OpenVINO's copies read them).
ONEDNN_CAP_VARS = ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA")
# Backends that can run each export format; the first is the default.
BACKENDS = {"onnx": ("onnxruntime", "openvino"), "torch_export": ("torch",)}


class ExportedPredictor:
    """An exported detector, called like ``Predictor``.

    Args:
        export_dir: a folder written by ``tools/export_model.py``.
        backend: see ``BACKENDS``; None picks the format's default.
        num_threads: intra-op threads of the backend (0: its default).
        precision: "fp32" (default: the detections of the eager fp32 model) or "bf16" (OpenVINO's
            bf16 inference precision, or bf16 autocast for the torch program; faster on CPUs with
            native bf16, detections no longer equal the fp32 model's).

    Attributes:
        metadata: the folder's checked metadata (class names, resize rule, ...).
        class_names: names by class index, or None.
    """

    def __init__(self, export_dir, *, backend: Optional[str] = None, num_threads: int = 0,
                 precision: str = "fp32"):
        self.export_dir = Path(export_dir)
        self.metadata = meta = read_metadata(self.export_dir)
        choices = BACKENDS[meta["format"]]
        self.backend = backend or choices[0]
        if self.backend not in choices:
            raise ExportError(
                f"{self.export_dir} holds a {meta['format']} export, which backend {self.backend!r} cannot run; "
                f"use one of {list(choices)}"
            )
        self.model_path = self.export_dir / meta["model_file"]
        if precision not in ("fp32", "bf16") or (precision == "bf16" and self.backend == "onnxruntime"):
            raise ValueError(f"precision must be 'fp32' or 'bf16' (bf16 with openvino or torch), got {precision!r} "
                             f"for backend {self.backend}")
        self.precision = precision
        self._run = getattr(self, "_load_" + self.backend)(num_threads)
        self.class_names: Optional[List[str]] = meta.get("class_names")
        resize = meta["resize"]
        self.mapper = DatasetMapper(is_train=False, min_size_test=int(resize["min_size_test"]),
                                    max_size_test=int(resize["max_size_test"]), image_format=meta["input"]["format"],
                                    mask_on=False)
        self.min_side, self.max_side = int(meta["input"]["min_side"]), int(meta["input"]["max_side"])

    # -- backends: each returns run(image (3, h, w) uint8 array, size (2,) int64) -> list of arrays

    def _check_io(self, inputs: List[str], outputs: List[str]) -> None:
        expected = list(self.metadata["outputs"])
        if inputs != ["image", "original_size"] or outputs != expected:
            raise ExportMismatchError(
                f"{self.model_path} has inputs {inputs} and outputs {outputs}, but {self.export_dir}'s metadata "
                f"describes inputs ['image', 'original_size'] and outputs {expected}; export the model again"
            )

    def _load_onnxruntime(self, num_threads: int):
        import onnxruntime as ort

        options = ort.SessionOptions()
        if num_threads > 0:
            options.intra_op_num_threads = num_threads
        ort_session = ort.InferenceSession(str(self.model_path), options, providers=["CPUExecutionProvider"])
        embedded = ort_session.get_modelmeta().custom_metadata_map.get(EMBEDDED_KEY)
        check_embedded(self.metadata, embedded or "{}", str(self.model_path))
        self._check_io([i.name for i in ort_session.get_inputs()], [o.name for o in ort_session.get_outputs()])
        return lambda image, size: ort_session.run(None, {"image": image, "original_size": size})

    def _load_openvino(self, num_threads: int):
        import onnx
        import openvino as ov

        proto = onnx.load(str(self.model_path))
        embedded = {p.key: p.value for p in proto.metadata_props}.get(EMBEDDED_KEY)
        check_embedded(self.metadata, embedded or "{}", str(self.model_path))
        self._check_io([i.name for i in proto.graph.input], [o.name for o in proto.graph.output])
        core = ov.Core()
        removed = {k: os.environ.pop(k) for k in ONEDNN_CAP_VARS if k in os.environ}
        if removed:
            # OpenVINO 2026.4.1 crashes (SIGSEGV in infer) when its oneDNN is capped below the
            # CPU's ISA (seen with ONEDNN_MAX_CPU_ISA=AVX2 on an AVX-512 AMD EPYC Zen 5): its own
            # kernels still use the CPU's full ISA. It compiles without the cap, which is put back.
            logger.warning("OpenVINO runs without %s (it crashes under a capped oneDNN); its kernels "
                           "use the CPU's full instruction set", ", ".join(f"{k}={v}" for k, v in removed.items()))
        # OpenVINO picks bf16 by itself on CPUs with native bf16; fp32 unless bf16 is asked for.
        config = {"INFERENCE_PRECISION_HINT": "bf16" if self.precision == "bf16" else "f32"}
        if num_threads > 0:
            config["INFERENCE_NUM_THREADS"] = num_threads
        try:
            compiled = core.compile_model(core.read_model(str(self.model_path)), "CPU", config)
            request = compiled.create_infer_request()
        finally:
            os.environ.update(removed)

        def run(image, size):
            result = request.infer({"image": image, "original_size": size})
            return [np.asarray(result[out]) for out in compiled.outputs]

        return run

    def _load_torch(self, num_threads: int):
        extra = {EMBEDDED_KEY + ".json": ""}
        program = torch.export.load(str(self.model_path), extra_files=extra)
        check_embedded(self.metadata, extra[EMBEDDED_KEY + ".json"] or "{}", str(self.model_path))
        self._check_io([s.arg.name for s in program.graph_signature.input_specs if s.kind.name == "USER_INPUT"],
                       list(self.metadata["outputs"][: len(program.graph_signature.user_outputs)]))
        module = program.module()
        if num_threads > 0:
            torch.set_num_threads(num_threads)

        bf16 = self.precision == "bf16"

        def run(image, size):
            with torch.no_grad(), bf16_autocast(bf16):
                return [t.float().numpy() if t.is_floating_point() else t.numpy()
                        for t in module(torch.from_numpy(image), torch.from_numpy(size))]

        return run

    # -- prediction

    def input_for(self, image_bgr: np.ndarray) -> Dict:
        """The mapper's resized (3, h, w) uint8 tensor of an image, with its original size."""
        if not isinstance(image_bgr, np.ndarray) or image_bgr.ndim != 3 or image_bgr.shape[2] != 3 \
                or image_bgr.dtype != np.uint8:
            got = f"{image_bgr.dtype} {image_bgr.shape}" if isinstance(image_bgr, np.ndarray) else type(image_bgr)
            raise ValueError(f"expected an (H, W, 3) uint8 BGR image, got {got}")
        image = np.ascontiguousarray(image_bgr[:, :, ::-1]) if self.mapper.image_format == "RGB" else image_bgr
        inputs = self.mapper.map_image(image)
        h, w = inputs["image"].shape[-2:]
        if min(h, w) < self.min_side or max(h, w) > self.max_side:
            raise ValueError(
                f"an image of {image_bgr.shape[0]}x{image_bgr.shape[1]} is resized to {h}x{w}, outside the sides "
                f"{self.min_side}..{self.max_side} the exported graph takes (its aspect ratio is too extreme for "
                f"max_size_test {self.mapper.max_size_test}); crop it or use the PyTorch model"
            )
        return inputs

    def __call__(self, image_bgr: np.ndarray) -> Instances:
        """Detections of one image, as ``Predictor`` returns them (on the CPU, at the image's size)."""
        inputs = self.input_for(image_bgr)
        height, width = inputs["height"], inputs["width"]
        outputs = self._run(inputs["image"].numpy(), np.array([height, width], dtype=np.int64))
        boxes = torch.from_numpy(np.asarray(outputs[0], dtype=np.float32).reshape(-1, 4))
        result = Instances((height, width), pred_boxes=Boxes(boxes),
                           scores=torch.from_numpy(np.asarray(outputs[1], dtype=np.float32).reshape(-1)),
                           pred_classes=torch.from_numpy(np.asarray(outputs[2]).astype(np.int64).reshape(-1)))
        if self.metadata["mask_on"]:
            probs = torch.from_numpy(np.asarray(outputs[3], dtype=np.float32))
            result.pred_masks = paste_masks_in_image(
                probs, boxes, (height, width), threshold=float(self.metadata["mask_threshold"]),
                method=self.metadata["mask_paste"],
            )
        return result

    def __repr__(self) -> str:
        return f"ExportedPredictor({str(self.export_dir)!r}, backend={self.backend!r}, precision={self.precision!r})"
