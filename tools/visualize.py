#!/usr/bin/env python
"""Draw a model's detections (masks, boxes, class names, scores) on images as PNGs.

    python tools/visualize.py --config NAME MODEL.WEIGHTS model_final.pth --input img_or_dir --output out/
    python tools/visualize.py --config NAME MODEL.WEIGHTS model_final.pth --dataset synthetic_val --num 8 --output out/

Every image goes through the test-time mapper (``DatasetMapper(is_train=False)``
built from the config), so its resize and channel order are exactly what
evaluation sees; detections come back at the original size and are drawn on the
original pixels. With ``--input`` each PNG is the image with the detections on it;
with ``--dataset NAME`` the first ``--num`` images of that registered split are
drawn with the predictions (left) next to the ground truth (right).

Class names come from the dataset's metadata (``--dataset``, else the config's
first DATASETS.TEST set) when it is registered and readable, otherwise class
numbers are shown. ``KEY VALUE`` config overrides may stand anywhere on the line.
Exit status: 0 when every image was drawn, 1 when some image could not be read
(the others are still drawn), 2 for a bad command line or config.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from typing import Any, Dict, List, Optional, Sequence

# Runnable from a checkout without installing the package.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from detgn.config import ConfigError, load_config  # noqa: E402
from detgn.data import (  # noqa: E402
    CocoFormatError,
    DatasetCatalog,
    DatasetMapper,
    ImageReadError,
    MetadataCatalog,
)
from detgn.data.mapper import read_image  # noqa: E402
from detgn.structures import polygons_to_bitmask, rle_to_bitmask  # noqa: E402
from detgn.utils.visualizer import draw_instances, draw_predictions  # noqa: E402

logger = logging.getLogger("detgn.visualize")

__all__ = [
    "IMAGE_EXTENSIONS",
    "load_model",
    "class_names_for",
    "predict",
    "gt_arrays",
    "render",
    "list_images",
    "visualize_files",
    "visualize_dataset",
    "parse_args",
    "main",
]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
_CAPTION_H = 18  # pixels of the caption strip above each panel of a side-by-side picture
_GAP = 4  # white columns between the two panels


# ---------------------------------------------------------------------------- #
# Model and class names
# ---------------------------------------------------------------------------- #
def load_model(cfg) -> nn.Module:
    """The config's detector with MODEL.WEIGHTS loaded, in eval mode on MODEL.DEVICE."""
    from detgn.checkpoint import load_weights
    from detgn.modeling import build_model

    model = build_model(cfg)
    if cfg.MODEL.WEIGHTS:
        load_weights(model, cfg.MODEL.WEIGHTS, allow_pickle=cfg.MODEL.WEIGHTS_ALLOW_PICKLE)
    else:
        logger.warning("MODEL.WEIGHTS is empty: drawing the detections of a randomly initialised model")
    return model.eval()


def _registered_names(name: str) -> Optional[List[str]]:
    if name not in DatasetCatalog:
        return None
    try:
        names = MetadataCatalog.get(name).get("thing_classes")
    except Exception as e:  # a missing/unreadable JSON only costs the names, not the pictures
        logger.warning("Class names of '%s' unavailable (%s: %s); showing class numbers", name, type(e).__name__, e)
        return None
    return list(names) if names else None


def class_names_for(cfg, dataset_name: Optional[str] = None) -> Optional[List[str]]:
    """Names by contiguous class id: from ``dataset_name``'s metadata, else from the config's
    first registered DATASETS.TEST set; None (draw numbers) when neither is available or
    their count differs from MODEL.ROI_HEADS.NUM_CLASSES."""
    candidates = ([dataset_name] if dataset_name else []) + list(cfg.DATASETS.TEST)
    for name in candidates:
        names = _registered_names(name)
        if names is None:
            continue
        if len(names) != cfg.MODEL.ROI_HEADS.NUM_CLASSES:
            logger.warning(
                "Dataset '%s' has %d classes but MODEL.ROI_HEADS.NUM_CLASSES is %d; showing class numbers",
                name, len(names), cfg.MODEL.ROI_HEADS.NUM_CLASSES,
            )
            return None
        return names
    return None


# ---------------------------------------------------------------------------- #
# One image
# ---------------------------------------------------------------------------- #
@torch.no_grad()
def predict(model: nn.Module, mapper: DatasetMapper, record: Dict[str, Any]):
    """Run ``model`` (eval mode) on one record through the test-time ``mapper``.

    Args:
        record: at least ``file_name``, ``height``, ``width`` (a dataset record works).
    Returns:
        ``Instances`` on the CPU at the original (height, width): ``pred_boxes``, ``scores``,
        ``pred_classes`` and, with masks on, ``pred_masks`` (N, H, W) bool.
    """
    was_training = model.training
    model.eval()
    try:
        output = model([mapper(record)])[0]["instances"]
    finally:
        model.train(was_training)
    return output.to("cpu")


def gt_arrays(record: Dict[str, Any]):
    """Non-crowd ground truth of a record: (boxes (N, 4) XYXY, classes (N,), masks (N, H, W) bool or None)."""
    anns = [a for a in record.get("annotations", []) if not a.get("iscrowd", 0)]
    h, w = int(record["height"]), int(record["width"])
    xywh = np.asarray([a["bbox"] for a in anns], dtype=np.float64).reshape(-1, 4)
    boxes = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1)
    classes = [int(a["category_id"]) for a in anns]
    if not anns or not all("segmentation" in a for a in anns):
        return boxes, classes, None
    masks = np.zeros((len(anns), h, w), dtype=bool)
    for i, a in enumerate(anns):
        segm = a["segmentation"]
        masks[i] = rle_to_bitmask(segm, h, w) if isinstance(segm, dict) else polygons_to_bitmask(segm, h, w)
    return boxes, classes, masks


def _captioned(panel: np.ndarray, text: str) -> np.ndarray:
    strip = np.full((_CAPTION_H, panel.shape[1], 3), 255, dtype=np.uint8)
    cv2.putText(strip, text, (3, _CAPTION_H - 5), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
    return np.concatenate([strip, panel], axis=0)


def render(
    image_bgr: np.ndarray,
    instances,
    *,
    class_names: Optional[Sequence[str]] = None,
    score_thresh: float = 0.5,
    record: Optional[Dict[str, Any]] = None,
) -> np.ndarray:
    """Draw one image's detections; with ``record``, its ground truth beside them.

    Args:
        image_bgr: (H, W, 3) uint8, the original image in BGR order.
        instances: model output at (H, W) (``pred_boxes``, ``scores``, ``pred_classes``,
            optional ``pred_masks``).
        class_names: names by contiguous class id (None: numbers).
        score_thresh: detections scoring lower are not drawn.
        record: the dataset record of the image, for the ground-truth panel.
    Returns:
        (H, W, 3) uint8 without ``record``; otherwise (H + caption, 2W + gap, 3): the
        predictions on the left, the ground truth on the right, each with a caption.
    """
    pred = draw_predictions(image_bgr, instances, class_names, score_thresh=score_thresh)
    if record is None:
        return pred
    boxes, classes, masks = gt_arrays(record)
    gt = draw_instances(image_bgr, boxes, classes, None, masks, class_names)
    n_pred = int((instances.scores >= score_thresh).sum())
    left = _captioned(pred, f"predicted {n_pred} (>={score_thresh:.2f})")
    right = _captioned(gt, f"ground truth {len(boxes)}")
    gap = np.full((left.shape[0], _GAP, 3), 255, dtype=np.uint8)
    return np.concatenate([left, gap, right], axis=1)


def _write_png(path: str, image: np.ndarray) -> None:
    ok, buf = cv2.imencode(".png", image)
    if not ok:
        raise RuntimeError(f"OpenCV could not encode {path} as PNG")
    buf.tofile(path)


def _draw_one(model, mapper, record, out_path, *, class_names, score_thresh, with_gt) -> int:
    """Predict, draw and write one record's PNG; returns the number of detections drawn.

    A record without ``height``/``width`` (a plain image file) takes them from the file.
    """
    # The display copy is read in BGR whatever INPUT.FORMAT is; the mapper reads the
    # model's copy itself, so the preprocessing is the evaluation's to the pixel.
    image = read_image(record["file_name"], image_format="BGR", image_id=record.get("image_id"))
    if "height" not in record:
        record = dict(record, height=image.shape[0], width=image.shape[1])
    instances = predict(model, mapper, record)
    picture = render(image, instances, class_names=class_names, score_thresh=score_thresh,
                     record=record if with_gt else None)
    _write_png(out_path, picture)
    return int((instances.scores >= score_thresh).sum())


def _out_name(file_name: str, used: set) -> str:
    stem = os.path.splitext(os.path.basename(file_name))[0]
    name, k = f"{stem}.png", 1
    while name in used:  # a.jpg and a.png in one folder must not overwrite each other
        name, k = f"{stem}_{k}.png", k + 1
    used.add(name)
    return name


def _run(cfg, model, records, out_dir, *, class_names, score_thresh, with_gt) -> Dict[str, List[str]]:
    os.makedirs(out_dir, exist_ok=True)
    mapper = DatasetMapper.from_config(cfg, is_train=False)
    written, failed, used = [], [], set()
    for k, record in enumerate(records, 1):
        out_path = os.path.join(out_dir, _out_name(record["file_name"], used))
        start = time.perf_counter()
        try:
            n = _draw_one(model, mapper, record, out_path, class_names=class_names,
                          score_thresh=score_thresh, with_gt=with_gt)
        except ImageReadError as e:
            print(f"[{k}/{len(records)}] error: {e}", file=sys.stderr, flush=True)
            failed.append(str(e))
            continue
        written.append(out_path)
        print(f"[{k}/{len(records)}] {record['file_name']} -> {out_path}: {n} detection(s) with score >= "
              f"{score_thresh:.2f} ({time.perf_counter() - start:.2f} s)", flush=True)
    return {"written": written, "failed": failed}


# ---------------------------------------------------------------------------- #
# Many images
# ---------------------------------------------------------------------------- #
def list_images(path: str) -> List[str]:
    """``path`` itself (a file) or the image files directly inside it (a folder), sorted."""
    if os.path.isfile(path):
        return [path]
    if os.path.isdir(path):
        files = sorted(os.path.join(path, f) for f in os.listdir(path) if f.lower().endswith(IMAGE_EXTENSIONS))
        if not files:
            raise FileNotFoundError(f"--input {path}: the folder holds no image files ({', '.join(IMAGE_EXTENSIONS)})")
        return files
    raise FileNotFoundError(f"--input {path}: no such file or folder")


def visualize_files(cfg, model: nn.Module, paths: Sequence[str], out_dir: str, score_thresh: float = 0.5,
                    *, class_names: Optional[Sequence[str]] = None) -> Dict[str, List[str]]:
    """Draw ``model``'s detections on image files; one ``<stem>.png`` each in ``out_dir``.

    Unreadable images are reported (naming the file) and skipped.

    Returns:
        ``{"written": [png paths], "failed": [error messages]}``.
    """
    records = [{"file_name": os.path.abspath(p), "image_id": None} for p in paths]
    return _run(cfg, model, records, out_dir, class_names=class_names, score_thresh=score_thresh, with_gt=False)


def visualize_dataset(cfg, model: nn.Module, dataset_name: str, out_dir: str, num: int = 10,
                      score_thresh: float = 0.5) -> List[str]:
    """Draw the first ``num`` images of a registered dataset: predictions beside ground truth.

    Args:
        cfg: the model's config (test-time input sizes and format, DATASETS.ON_BAD_ANNOTATION).
        model: the detector (switched to eval mode for the calls, then restored).
        dataset_name: a name registered in ``DatasetCatalog`` (e.g. ``synthetic_val``).
        out_dir: where ``<image stem>.png`` files go (created).
        num: how many images, in dataset order (<= 0: all).
        score_thresh: detections scoring lower are not drawn.
    Returns:
        the PNG paths written. Unreadable images are reported as they come; at the end
        :class:`ImageReadError` names them all (a dataset's files are expected to be
        sound; ``tools/validate_dataset.py`` checks them).
    """
    from detgn.data import get_detection_dataset_dicts

    records = get_detection_dataset_dicts(dataset_name, filter_empty=False, on_bad=cfg.DATASETS.ON_BAD_ANNOTATION)
    if num > 0:
        records = records[:num]
    result = _run(cfg, model, records, out_dir, class_names=class_names_for(cfg, dataset_name),
                  score_thresh=score_thresh, with_gt=True)
    if result["failed"]:
        raise ImageReadError(f"{len(result['failed'])} image(s) of '{dataset_name}' could not be read: "
                             + "; ".join(result["failed"]))
    return result["written"]


# ---------------------------------------------------------------------------- #
# Command line
# ---------------------------------------------------------------------------- #
def argument_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Draw a detgn model's detections on images (PNG files).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=(
            "KEY VALUE config overrides may appear anywhere, e.g.\n"
            "  python tools/visualize.py --config synthetic/demo_gn_scratch.yaml MODEL.WEIGHTS "
            "output/demo/model_final.pth --input img.jpg --output vis/\n"
            "  python tools/visualize.py --config synthetic/demo_gn_scratch.yaml MODEL.WEIGHTS "
            "output/demo/model_final.pth --dataset synthetic_val --num 8 --output vis/"
        ),
    )
    p.add_argument("--config", required=True, metavar="NAME_OR_PATH", help="a config file or a name under configs/")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--input", metavar="IMAGE_OR_DIR", help="an image file or a folder of images")
    src.add_argument("--dataset", metavar="NAME", help="a registered dataset; ground truth is drawn beside")
    p.add_argument("--num", type=int, default=10, help="with --dataset: the first N images (<= 0: all; default 10)")
    p.add_argument("--output", required=True, metavar="DIR", help="folder for the PNG files (created)")
    p.add_argument("--score-thresh", type=float, default=0.5, help="lowest score drawn (default 0.5)")
    return p


def parse_args(argv: Optional[Sequence[str]] = None):
    """Options plus the ``KEY VALUE`` overrides (``args.opts``), wherever they stand."""
    parser = argument_parser()
    args, rest = parser.parse_known_args(argv)
    unknown = [r for r in rest if r.startswith("--")]
    if unknown:
        parser.error(f"unrecognized option(s): {' '.join(unknown)} (config overrides are KEY VALUE pairs)")
    args.opts = rest
    return args


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    from detgn.checkpoint import CheckpointError
    from detgn.utils.logger import setup_logger

    setup_logger()
    try:
        cfg = load_config(args.config, args.opts)
    except ConfigError as e:
        print(f"Config error: {e}", file=sys.stderr)
        return 2
    if args.dataset and args.dataset not in DatasetCatalog:
        try:
            DatasetCatalog.get(args.dataset)
        except KeyError as e:  # its message lists the registered names
            print(f"error: {e.args[0]}", file=sys.stderr)
            return 1
    try:
        # Fail on a missing input before spending time on the model.
        paths = list_images(args.input) if args.input else None
        model = load_model(cfg)
        if args.dataset:
            written = visualize_dataset(cfg, model, args.dataset, args.output, args.num, args.score_thresh)
            failed: List[str] = []
        else:
            result = visualize_files(cfg, model, paths, args.output, args.score_thresh,
                                     class_names=class_names_for(cfg))
            written, failed = result["written"], result["failed"]
    except (FileNotFoundError, ImageReadError, CheckpointError, CocoFormatError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"Wrote {len(written)} PNG file(s) to {args.output}", flush=True)
    if failed:
        print(f"{len(failed)} image(s) could not be read (listed above)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
