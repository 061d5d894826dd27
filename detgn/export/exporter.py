"""Export a trained detector: ``torch.export`` program (``.pt2``) or ONNX, plus its metadata.

    from detgn.export import export_model
    export_model(cfg, "exported/", fmt="onnx")      # MODEL.WEIGHTS, any image size

What is exported is :class:`~detgn.export.graph.ExportableDetector` over the config's model
in eval mode, on the CPU, with contiguous tensors:

- frozen BN (and BN without EvalNorm) after a conv is folded into the conv's weights; GN, LN,
  IN, EvalNorm (its eval form, per-sample statistics) export as they are (GN in ONNX as an
  exact InstanceNormalization over the groups);
- the image's height and width are dynamic (any size from ``min_side`` up, see
  :func:`input_side_limits`), never frozen at the sample used for tracing;
- the export is checked before anything is written: the exported program is run on two image
  sizes other than the tracing size and must give the eager graph's detections (count,
  classes, boxes and scores within float32 precision: :mod:`detgn.export.compare`). A failure is an :class:`ExportError`
  naming the part of the model (module path and type) where tracing or translation failed;
  no file is written then.
"""
from __future__ import annotations

import copy
import io
import json
import logging
import traceback
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

import detgn
from detgn.utils.file_io import atomic_write_bytes, atomic_write_json

from .compare import match_detections, rules_of_model
from .graph import OUTPUT_NAMES, ExportableDetector
from .metadata import (EMBEDDED_KEY, FORMAT_VERSION, METADATA_FILE, MODEL_FILES, ExportError, canonical_json)

logger = logging.getLogger(__name__)

__all__ = ["export_model", "export_detector", "fold_batch_norms", "input_side_limits", "ONNX_OPSET"]

ONNX_OPSET = 18
MAX_SIDE = 8192


def fold_batch_norms(model: nn.Module) -> int:
    """Fold every frozen BN / eval-mode BN that directly follows a ``detgn.layers.Conv2d`` into it.

    ``y = (conv(x) - mean) / sqrt(var + eps) * w + b`` becomes one conv with scaled weights and
    a bias. BN layers evaluated with EvalNorm (per-sample statistics) are left alone. Changes
    ``model`` in place (call it on a copy); returns the number of layers folded.
    """
    from detgn.layers import Conv2d, FrozenBatchNorm2d

    folded = 0
    for conv in model.modules():
        norm = getattr(conv, "norm", None)
        if not isinstance(conv, Conv2d) or norm is None:
            continue
        if isinstance(norm, nn.modules.batchnorm._BatchNorm):
            # Eval-mode BN normalises with its running statistics, unless EvalNorm is on.
            if norm.training or norm.running_mean is None or getattr(norm, "evalnorm_eval", False):
                continue
        elif not isinstance(norm, FrozenBatchNorm2d):
            continue
        with torch.no_grad():
            weight = norm.weight if norm.weight is not None else torch.ones_like(norm.running_mean)
            bias = norm.bias if norm.bias is not None else torch.zeros_like(norm.running_mean)
            scale = weight * (norm.running_var + norm.eps).rsqrt()
            shift = bias - norm.running_mean * scale
            conv.weight.mul_(scale.view(-1, 1, 1, 1).to(conv.weight.dtype))
            new_bias = shift if conv.bias is None else conv.bias * scale + shift
            conv.bias = nn.Parameter(new_bias.to(conv.weight.dtype), requires_grad=False)
        conv.norm = None
        folded += 1
    return folded


class _GroupNormForExport(nn.GroupNorm):
    """``nn.GroupNorm`` calling the same kernel without ``F.group_norm``'s Python check of the
    batch (``N * C / G * H * W == 1``), which cannot be evaluated on a data-dependent number of
    RoIs (IN heads: one channel per group). Numerically identical."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.group_norm(x, self.num_groups, self.weight, self.bias, self.eps, False)


def prepare_for_export(model: nn.Module) -> int:
    """Put a copy of a detector into its exported form: fold BNs (see :func:`fold_batch_norms`),
    GN/LN/IN through :class:`_GroupNormForExport`. Returns the number of BN layers folded."""
    for m in model.modules():
        if isinstance(m, nn.GroupNorm) and type(m) is not _GroupNormForExport:  # nn's and detgn's GroupNorm
            m.__class__ = _GroupNormForExport
    return fold_batch_norms(model)


def input_side_limits(model: nn.Module) -> Tuple[int, int]:
    """(min_side, max_side) of the (resized) images the exported graph takes.

    Below ``max(size_divisibility, coarsest stride) + 1`` pixels the coarsest feature map has a
    single row or column, a shape the traced graph does not cover.
    """
    shapes = model.backbone.output_shape()
    coarsest = max(int(s.stride) for s in shapes.values())
    return max(int(model.size_divisibility), coarsest) + 1, MAX_SIDE


def _module_path(exc: BaseException, model: nn.Module) -> Optional[str]:
    """``name (Type)`` of the innermost module of ``model`` on the traceback of ``exc`` (or its causes)."""
    names = {id(m): n for n, m in model.named_modules()}
    found = None
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        for frame, _ in traceback.walk_tb(exc.__traceback__):
            owner = frame.f_locals.get("self")
            if isinstance(owner, nn.Module) and id(owner) in names:
                found = f"{names[id(owner)] or '(the whole detector)'} ({type(owner).__name__})"
        exc = exc.__cause__ or exc.__context__
    return found


def sample_images(model: nn.Module, min_size: int, max_size: int, seed: int = 0) -> List[torch.Tensor]:
    """Three (3, h, w) uint8 images: the tracing sample and two other sizes to check the export on."""
    from detgn.data.transforms import resized_shape

    lo, _ = input_side_limits(model)
    rng = np.random.default_rng(seed)
    out = []
    for h, w in ((480, 640), (640, 427), (375, 500)):  # landscape, portrait, another landscape
        nh, nw = resized_shape(h, w, min_size, max_size)
        nh, nw = max(nh, lo), max(nw, lo)
        out.append(torch.from_numpy(rng.integers(0, 256, (3, nh, nw), dtype=np.uint8)))
    return out


def _run_torch(program, image: torch.Tensor, size: torch.Tensor):
    with torch.no_grad():
        return [t.detach() for t in program(image, size)]


def _compare(expected: Sequence[torch.Tensor], got: Sequence[np.ndarray], what: str, rules) -> None:
    """Raise ExportError unless ``got`` gives ``expected``'s detections (:func:`match_detections`)."""
    match = match_detections(*expected[:3], *got[:3], ref_masks=expected[3] if len(expected) > 3 else None,
                             masks=got[3] if len(got) > 3 else None, rules=rules)
    if not match.ok:
        raise ExportError(f"{what}: the exported model does not reproduce the eager model: {match.summary()}")


def export_program(graph: nn.Module, sample: torch.Tensor, min_side: int):
    """``torch.export`` of ``graph(image, original_size)`` traced on ``sample``, with dynamic height
    and width from ``min_side`` to ``MAX_SIDE``."""
    from torch.export import Dim, export

    dims = {"image": {1: Dim("height", min=min_side, max=MAX_SIDE), 2: Dim("width", min=min_side, max=MAX_SIDE)},
            "original_size": None}
    size = torch.tensor(sample.shape[-2:], dtype=torch.int64)
    return export(graph, (sample, size), dynamic_shapes=dims, strict=False)


def _onnx_bytes(program, meta_json: str, optimize: bool = True) -> bytes:
    import onnx

    from .ops import onnx_translation_table

    names = list(OUTPUT_NAMES[: len(program.graph_signature.user_outputs)])
    onnx_program = torch.onnx.export(
        program, f=None, dynamo=True, opset_version=ONNX_OPSET, custom_translation_table=onnx_translation_table(),
        input_names=["image", "original_size"], output_names=names, external_data=False, verbose=False,
        optimize=optimize,
    )
    proto = onnx_program.model_proto
    entry = proto.metadata_props.add()
    entry.key, entry.value = EMBEDDED_KEY, meta_json
    proto.producer_name = "detgn"
    onnx.checker.check_model(proto)
    return proto.SerializeToString()


def _pt2_bytes(program, meta_json: str) -> bytes:
    buffer = io.BytesIO()
    torch.export.save(program, buffer, extra_files={EMBEDDED_KEY + ".json": meta_json})
    return buffer.getvalue()


def export_detector(
    model: nn.Module,
    output_dir,
    *,
    fmt: str = "onnx",
    metadata: Dict,
    min_size_test: int,
    max_size_test: int,
    verify: bool = True,
) -> Path:
    """Export an (already loaded) detector; returns the metadata file's path.

    Args:
        model: a GeneralizedRCNN with its weights; it is copied, never changed.
        output_dir: the export folder (created; an export in it is replaced).
        fmt: "onnx" or "torch_export".
        metadata: what the runtime needs (see :mod:`detgn.export.metadata`); completed here.
        min_size_test, max_size_test: the resize rule, to pick realistic tracing sizes.
        verify: run the exported model on two other sizes and compare with the eager graph.
    """
    if fmt not in MODEL_FILES:
        raise ExportError(f"--format must be one of {sorted(MODEL_FILES)}, got {fmt!r}")
    if getattr(model, "test_resize", None) is not None:
        raise ExportError(
            "INPUT.RESIZE_TEST torchvision (the model resizes the float image itself) cannot be exported yet: "
            "the runtime resizes with OpenCV. Export with INPUT.RESIZE_TEST opencv (detections then follow "
            "detgn's resize, not torchvision's). Nothing was written"
        )
    model = copy.deepcopy(model).cpu().eval().to(memory_format=torch.contiguous_format)
    for p in model.parameters():
        p.requires_grad_(False)
    folded = prepare_for_export(model)
    graph = ExportableDetector(model).eval()
    min_side, max_side = input_side_limits(model)
    samples = sample_images(model, min_size_test, max_size_test)
    meta = dict(metadata)
    meta.update(format_version=FORMAT_VERSION, format=fmt, model_file=MODEL_FILES[fmt], detgn_version=detgn.__version__,
                mask_on=graph.mask_on, outputs=list(OUTPUT_NAMES[: 4 if graph.mask_on else 3]),
                folded_batch_norms=folded, torch_version=torch.__version__)
    meta["input"] = dict(meta.get("input", {}), layout="CHW uint8", min_side=min_side, max_side=max_side)
    meta_json = canonical_json(meta)

    stage = "tracing the detector with torch.export"
    try:
        with torch.no_grad():
            program = export_program(graph, samples[0], min_side)
        if fmt == "onnx":
            stage = "translating the exported program to ONNX"
            data = _onnx_bytes(program, meta_json)
        else:
            stage = "serialising the exported program"
            data = _pt2_bytes(program, meta_json)
    except ExportError:
        raise
    except Exception as e:  # noqa: BLE001 - any tracing/translation failure becomes one clear error
        part = _module_path(e, model)
        where = f" in {part}" if part else ""
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ExportError(
            f"Export failed while {stage}{where}: {type(e).__name__}: {first}. Nothing was written. "
            "If this part cannot be exported, change it in the config (e.g. its NORM) or report it"
        ) from e

    if verify:
        runner = _runner_for_bytes(fmt, data)
        for image in samples[1:]:
            size = torch.tensor([image.shape[1] + 7, image.shape[2] + 5])  # an original size unlike the input's
            expected = _run_torch(graph, image, size)
            _compare(expected, runner(image, size), f"check of the {fmt} export on a {tuple(image.shape[1:])} image",
                     rules_of_model(model))

    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    from detgn.model_zoo.verify import file_sha256

    model_path = out / MODEL_FILES[fmt]
    atomic_write_bytes(str(model_path), data)
    meta["model_sha256"] = file_sha256(model_path)
    meta_path = out / METADATA_FILE
    atomic_write_json(str(meta_path), meta, indent=2, sort_keys=True)
    logger.info("Exported %s (%.1f MB, %d BN layers folded) and %s", model_path, len(data) / 1e6, folded, meta_path)
    return meta_path


def _runner_for_bytes(fmt: str, data: bytes):
    """Run a just-exported model from its bytes: (image, size) -> list of arrays."""
    if fmt == "onnx":
        import onnxruntime as ort

        session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
        return lambda image, size: session.run(None, {"image": image.numpy(), "original_size": size.numpy()})
    program = torch.export.load(io.BytesIO(data)).module()
    return lambda image, size: [t.numpy() for t in _run_torch(program, image, size)]


def metadata_from_config(cfg, *, config_name: str = "", weights: str = "") -> Dict:
    """The config-derived part of the metadata (class names, input, resize, thresholds)."""
    from detgn.visualization.predictions import category_ids_for, class_names_for

    names = class_names_for(cfg)
    category_ids = category_ids_for(cfg)
    return {
        "config": config_name,
        "config_yaml": cfg.dump(),
        "weights": weights,
        "class_names": list(names) if names else None,
        "category_ids": category_ids,
        "num_classes": int(cfg.MODEL.ROI_HEADS.NUM_CLASSES),
        "input": {"format": cfg.INPUT.FORMAT},
        "resize": {"rule": "shorter side to min_size_test, longer side at most max_size_test (cv2 bilinear)",
                   "min_size_test": int(cfg.INPUT.MIN_SIZE_TEST), "max_size_test": int(cfg.INPUT.MAX_SIZE_TEST)},
        "score_threshold": float(cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST),
        "nms_threshold": float(cfg.MODEL.ROI_HEADS.NMS_THRESH_TEST),
        "detections_per_image": int(cfg.TEST.DETECTIONS_PER_IMAGE),
        "mask_paste": cfg.MODEL.ROI_MASK_HEAD.PASTE_METHOD,
        "mask_threshold": 0.5,
    }


def export_model(cfg, output_dir, *, fmt: str = "onnx", config_name: str = "", weights: Optional[str] = None,
                 verify: bool = True) -> Path:
    """Build the config's model, load ``weights`` (default MODEL.WEIGHTS) and export it.

    Returns the path of the metadata file written beside the model.
    """
    from detgn.engine.predictor import build_and_load_model

    weights = cfg.MODEL.WEIGHTS if weights is None else weights
    model, report = build_and_load_model(cfg, weights=weights)
    if report is None:
        logger.warning("No weights given (MODEL.WEIGHTS is empty): exporting a randomly initialised model")
    meta = metadata_from_config(cfg, config_name=config_name, weights=str(weights or ""))
    return export_detector(model, output_dir, fmt=fmt, metadata=meta, min_size_test=int(cfg.INPUT.MIN_SIZE_TEST),
                           max_size_test=int(cfg.INPUT.MAX_SIZE_TEST), verify=verify)


def describe(meta_path) -> str:
    """One line about an export folder, for logs."""
    meta = json.loads(Path(meta_path).read_text())
    return (f"{meta['format']} model {meta['model_file']} ({meta['num_classes']} classes, "
            f"input {meta['input']['format']} sides {meta['input']['min_side']}-{meta['input']['max_side']})")
