"""Where an ONNX export's numbers part from the model's: eager against onnxruntime, stage by stage.

    detgn check-export --config gn_paper/mask_rcnn_R_50_C4_GN_2x.yaml --stages MODEL.WEIGHTS "" ...

:class:`StagedDetector` is the exported graph (:class:`~detgn.export.graph.ExportableDetector`)
with its intermediate tensors as outputs: the backbone's last feature map, the proposals, the
pooled RoI features, the box head's features, the class logits, the box deltas and the final
detections. It is exported to ONNX once and run in onnxruntime and in PyTorch on the same
resized image. Proposals are matched one to one (a backend may order near-tied objectness
differently), and the per-RoI stages are compared on the matched proposals, so each stage's
error is its own and not a reordering.
"""
from __future__ import annotations

import copy
from typing import Dict, List, Sequence

import numpy as np
import torch
from torch import nn

from .compare import box_tolerance, match_detections, rules_of_model
from .graph import ExportableDetector

__all__ = ["StagedDetector", "STAGES", "compare_stages", "format_stages"]

STAGES = ("backbone (last map)", "proposals", "pooled RoI features", "box head features", "class logits",
          "box deltas")


class StagedDetector(ExportableDetector):
    """The exported graph with its intermediate tensors as outputs (see the module docstring)."""

    def forward(self, image: torch.Tensor, original_size: torch.Tensor):
        height, width = image.shape[-2], image.shape[-1]
        x = self._normalize_and_pad(image)
        features = self.model.backbone(x)
        proposals = self._proposals(features, height, width, x.shape[-2:])
        pooled = self._pooled_for_boxes(features, proposals)
        box_features = self._box_head(pooled)[: proposals.shape[0]]
        logits, deltas = self.model.roi_heads.box_predictor(box_features)
        boxes, scores, classes = self._detections(features, proposals, height, width)
        last = list(features.values())[-1]
        return last, proposals, pooled[: proposals.shape[0]], box_features, logits, deltas, boxes, scores, classes


def _onnx_session(staged: nn.Module, sample: torch.Tensor, min_side: int):
    import onnxruntime as ort

    from .exporter import ONNX_OPSET, export_program
    from .ops import onnx_translation_table

    with torch.no_grad():
        program = export_program(staged, sample, min_side)
    proto = torch.onnx.export(program, f=None, dynamo=True, opset_version=ONNX_OPSET, verbose=False,
                              custom_translation_table=onnx_translation_table(), external_data=False).model_proto
    return ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])


def _error(a: np.ndarray, b: np.ndarray) -> Dict[str, float]:
    diff = np.abs(a.astype(np.float64) - b) if a.size else np.zeros(1)
    scale = float(np.abs(a).max()) if a.size else 0.0
    return {"max_abs": float(diff.max()), "max_value": scale, "relative": float(diff.max()) / max(scale, 1e-30)}


def _stage_rows(eager: Sequence[np.ndarray], onnx: Sequence[np.ndarray], rules) -> List[Dict]:
    rows = [dict(stage=STAGES[0], shape=tuple(eager[0].shape), **_error(eager[0], onnx[0]))]
    pe, po = eager[1].astype(np.float64), onnx[1].astype(np.float64)
    tol = box_tolerance(pe)
    err = np.abs(pe[:, None, :] - po[None, :, :]).max(-1) if len(pe) and len(po) else np.zeros((len(pe), 0))
    pairs, used = [], set()
    for i in np.argsort(err.min(1) if err.shape[1] else np.zeros(len(pe))):
        if not err.shape[1]:
            break
        for j in np.argsort(err[i]):
            if j not in used:
                if err[i, j] <= tol[i]:
                    pairs.append((int(i), int(j)))
                    used.add(j)
                break
    ie, io = np.array([p[0] for p in pairs], dtype=np.int64), np.array([p[1] for p in pairs], dtype=np.int64)
    sizes = np.maximum(pe[ie, 2] - pe[ie, 0], pe[ie, 3] - pe[ie, 1]).clip(min=1) if len(ie) else np.ones(1)
    matched_err = err[ie, io] if len(ie) else np.zeros(1)
    rows.append(dict(stage=STAGES[1], shape=tuple(eager[1].shape), max_abs=float(matched_err.max()),
                     max_value=float(np.abs(pe).max()) if pe.size else 0.0,
                     relative=float((matched_err / sizes).max()),
                     note=f"{len(pairs)} of {len(pe)} vs {len(po)} matched within the box tolerance; "
                          "relative: to the box's side"))
    for k, name in enumerate(STAGES[2:], start=2):
        rows.append(dict(stage=name, shape=tuple(eager[k].shape), **_error(eager[k][ie], onnx[k][io]),
                         note="on the matched proposals"))
    m = match_detections(*eager[6:9], *onnx[6:9], rules=rules)
    rows.append(dict(stage="detections", shape=tuple(eager[6].shape), max_abs=m.max_box_err,
                     max_value=float("nan"), relative=float("nan"), note=m.summary()))
    return rows


@torch.no_grad()
def compare_stages(model: nn.Module, images: Sequence[np.ndarray], *, min_size_test: int,
                   max_size_test: int, image_format: str = "BGR") -> List[List[Dict]]:
    """Per (H, W, 3) BGR image, one row per stage: ``max_abs`` and ``relative`` (to the stage's
    largest value) error of onnxruntime against PyTorch; the proposals' relative error is to
    each box's side; the last row matches the detections (:func:`match_detections`)."""
    from detgn.data.mapper import DatasetMapper

    from .exporter import input_side_limits, prepare_for_export, sample_images

    model = copy.deepcopy(model).cpu().eval()
    prepare_for_export(model)
    staged = StagedDetector(model).eval()
    min_side, _ = input_side_limits(model)
    ort_session = _onnx_session(staged, sample_images(model, min_size_test, max_size_test)[0], min_side)
    names = [i.name for i in ort_session.get_inputs()]
    mapper = DatasetMapper(is_train=False, min_size_test=min_size_test, max_size_test=max_size_test,
                           image_format=image_format, mask_on=False)
    out = []
    for image in images:
        image = np.ascontiguousarray(image[:, :, ::-1]) if image_format == "RGB" else image
        inputs = mapper.map_image(image)
        size = torch.tensor([inputs["height"], inputs["width"]], dtype=torch.int64)
        eager = [t.numpy() for t in staged(inputs["image"], size)]
        onnx = ort_session.run(None, {names[0]: inputs["image"].numpy(), names[1]: size.numpy()})
        out.append(_stage_rows(eager, onnx, rules_of_model(model)))
    return out


def format_stages(rows: List[Dict]) -> str:
    """The rows of one image as a Markdown table."""
    lines = ["| stage | shape | max abs error | largest value | relative | |", "|---|---|---|---|---|---|"]
    def number(v: float) -> str:
        return "–" if v != v else f"{v:.3g}"

    for r in rows:
        lines.append(f"| {r['stage']} | {r['shape']} | {number(r['max_abs'])} | {number(r['max_value'])} | "
                     f"{number(r['relative'])} | {r.get('note', '')} |")
    return "\n".join(lines)
