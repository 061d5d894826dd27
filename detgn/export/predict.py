"""Predict on images, folders, globs or a video with any backend; draw, and write COCO results.

What ``tools/predict.py`` runs. A *predictor* is anything called as ``predictor(bgr_image) ->
Instances`` at the image's size: the eager :class:`~detgn.engine.Predictor` (backend ``torch``)
or an :class:`~detgn.export.ExportedPredictor` (``onnxruntime``, ``openvino``, or ``torch`` on a
``.pt2`` export). Inputs:

- an image file, a folder of images (sorted), or a glob pattern (``"frames/*.jpg"``);
- a video file (any container OpenCV reads): every frame is an image, ``image_id`` = frame index;
- a registered dataset's records (``--dataset``), so that ``image_id`` and ``category_id`` are the
  dataset's and ``tools/evaluate_results.py`` scores the results file against its JSON.

An unreadable image or frame is named on stderr and skipped; the rest go on. Progress lines give
images/s and the ETA.
"""
from __future__ import annotations

import glob
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import cv2
import numpy as np

from detgn.data.mapper import ImageReadError, read_image
from detgn.utils.file_io import atomic_write_json
from detgn.visualization.draw import draw_predictions, write_png

__all__ = ["VIDEO_EXTENSIONS", "PredictSummary", "iter_inputs", "run_predict", "is_video"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg")


@dataclass
class Item:
    """One input: its name, its image id, and how to get its pixels (raises ImageReadError)."""

    name: str
    image_id: int
    load: Callable[[], np.ndarray]


@dataclass
class PredictSummary:
    images: int = 0
    detections: int = 0
    failed: List[str] = field(default_factory=list)
    written: List[str] = field(default_factory=list)
    results_json: Optional[str] = None
    seconds: float = 0.0

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0


def is_video(path: str) -> bool:
    return os.path.isfile(path) and path.lower().endswith(VIDEO_EXTENSIONS)


def _image_files(spec: str) -> List[str]:
    if os.path.isdir(spec):
        files = sorted(os.path.join(spec, f) for f in os.listdir(spec) if f.lower().endswith(IMAGE_EXTENSIONS))
        if not files:
            raise FileNotFoundError(f"--input {spec}: the folder holds no image files ({', '.join(IMAGE_EXTENSIONS)})")
        return files
    if os.path.isfile(spec):
        return [spec]
    if glob.has_magic(spec):
        files = sorted(f for f in glob.glob(spec) if os.path.isfile(f))
        if not files:
            raise FileNotFoundError(f"--input {spec}: the pattern matches no file")
        return files
    raise FileNotFoundError(f"--input {spec}: no such file, folder or pattern")


def video_frames(path: str) -> Tuple[Iterator[Item], int, float, Tuple[int, int]]:
    """Frames of a video as Items, the frame count (0 if unknown), fps and (width, height)."""
    capture = cv2.VideoCapture(path)
    if not capture.isOpened():
        raise FileNotFoundError(f"--input {path}: OpenCV cannot open this video (missing codec or not a video)")
    count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
    fps = float(capture.get(cv2.CAP_PROP_FPS) or 0.0) or 25.0
    size = (int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)), int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT)))

    def frames() -> Iterator[Item]:
        index, misses = 0, 0
        try:
            while True:
                ok, frame = capture.read()
                if not ok or frame is None:
                    # A frame that does not decode before the announced end is skipped, not the rest.
                    if count and index < count and misses < 25:
                        misses += 1
                        name = f"{path}#frame{index}"

                        def fail(name=name):
                            raise ImageReadError(f"{name}: the frame could not be decoded; skipped")
                        yield Item(name, index, fail)
                        index += 1
                        continue
                    return
                misses = 0
                yield Item(f"{path}#frame{index}", index, lambda frame=frame: frame)
                index += 1
        finally:
            capture.release()

    return frames(), count, fps, size


def iter_inputs(spec: str) -> Tuple[Iterator[Item], Optional[int]]:
    """Items of an image / folder / glob (count known) or a video (count from its header)."""
    if is_video(spec):
        frames, count, _, _ = video_frames(spec)
        return frames, count or None
    files = _image_files(spec)
    items = (Item(f, k, lambda f=f: read_image(f, image_format="BGR")) for k, f in enumerate(files))
    return items, len(files)


def dataset_inputs(records: Sequence[dict]) -> Tuple[Iterator[Item], int]:
    """Items of a registered dataset's records (their file names and image ids)."""
    items = (Item(r["file_name"], int(r["image_id"]),
                  lambda r=r: read_image(r["file_name"], image_format="BGR", image_id=r["image_id"]))
             for r in records)
    return items, len(records)


def _eta(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600:d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def _out_name(name: str, used: set) -> str:
    stem = os.path.splitext(os.path.basename(name.replace("#", "_")))[0]
    out, k = f"{stem}.png", 1
    while out in used:
        out, k = f"{stem}_{k}.png", k + 1
    used.add(out)
    return out


def run_predict(
    predictor,
    items: Iterator[Item],
    total: Optional[int],
    *,
    output_dir: Optional[str],
    results_json: Optional[str],
    class_names: Optional[Sequence[str]] = None,
    category_ids: Optional[Sequence[int]] = None,
    score_thresh: float = 0.5,
    video: Optional[Tuple[str, float, Tuple[int, int]]] = None,
    log: Callable[[str], None] = lambda s: print(s, flush=True),
) -> PredictSummary:
    """Run ``predictor`` on every item; draw each result (PNG per image, or one video) and collect
    COCO result records.

    Args:
        predictor: ``predictor(bgr) -> Instances``.
        items, total: from :func:`iter_inputs` / :func:`dataset_inputs` (total None: unknown).
        output_dir: pictures go here (None: none drawn).
        results_json: the COCO results file to write (None: none).
        class_names: names drawn by class index.
        category_ids: dataset category id of each class index (None: the class index itself).
        score_thresh: lowest score drawn (every detection goes into the results file).
        video: (path of the output video, fps, (width, height)) to draw into one video instead of PNGs.
    """
    from detgn.evaluation.coco_evaluator import instances_to_coco_json

    lut = np.asarray(category_ids, dtype=np.int64) if category_ids is not None else None
    summary = PredictSummary()
    records: List[dict] = []
    used: set = set()
    writer = None
    if output_dir:
        os.makedirs(output_dir, exist_ok=True)
    if video is not None and output_dir:
        path, fps, size = video
        writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"mp4v"), fps, size)
        if not writer.isOpened():
            raise RuntimeError(f"OpenCV cannot write the video {path} (no mp4v encoder?)")
        summary.written.append(path)
    start = time.perf_counter()
    last_log = 0.0
    done = 0
    try:
        for k, item in enumerate(items, 1):
            try:
                image = item.load()
            except ImageReadError as e:
                print(f"[{k}/{total or '?'}] skipped: {e}", file=sys.stderr, flush=True)
                summary.failed.append(str(e))
                continue
            try:
                instances = predictor(image)
            except ValueError as e:  # e.g. an aspect ratio the exported graph does not take
                print(f"[{k}/{total or '?'}] skipped: {item.name}: {e}", file=sys.stderr, flush=True)
                summary.failed.append(f"{item.name}: {e}")
                continue
            done += 1
            summary.detections += len(instances)
            if results_json:
                recs = instances_to_coco_json(instances, item.image_id, dataset_id_lut=lut)
                for rec in recs:
                    rec["file_name"] = item.name
                records.extend(recs)
            if output_dir:
                picture = draw_predictions(image, instances, class_names=class_names, score_thresh=score_thresh)
                if writer is not None:
                    writer.write(picture)
                else:
                    out_path = os.path.join(output_dir, _out_name(item.name, used))
                    write_png(out_path, picture)
                    summary.written.append(out_path)
            now = time.perf_counter() - start
            if now - last_log >= 2.0 or (total is not None and k == total):
                last_log = now
                rate = done / now if now > 0 else 0.0
                eta = f", ETA {_eta((total - k) / rate)}" if total and rate > 0 else ""
                log(f"[{k}/{total or '?'}] {item.name}: {len(instances)} detection(s); {rate:.2f} images/s{eta}")
    finally:
        if writer is not None:
            writer.release()
    summary.images = done
    summary.seconds = time.perf_counter() - start
    if results_json:
        atomic_write_json(results_json, records)
        summary.results_json = results_json
    return summary


def predictor_for(backend: str, *, model_dir: Optional[str] = None, cfg=None, num_threads: int = 0):
    """(predictor, class_names, category_ids) for a backend: an export folder, or a config (eager torch)."""
    if model_dir:
        from .runtime import ExportedPredictor

        predictor = ExportedPredictor(model_dir, backend=None if backend == "auto" else backend,
                                      num_threads=num_threads)
        meta = predictor.metadata
        return predictor, meta.get("class_names"), meta.get("category_ids")
    if backend not in ("auto", "torch"):
        raise ValueError(f"--backend {backend} runs an exported model: give --model DIR (tools/export_model.py)")
    from detgn.engine.predictor import Predictor
    from detgn.visualization.predictions import category_ids_for, class_names_for

    return Predictor(cfg), class_names_for(cfg), category_ids_for(cfg)


def summary_dict(summary: PredictSummary) -> Dict:
    return {"images": summary.images, "detections": summary.detections, "skipped": len(summary.failed),
            "seconds": round(summary.seconds, 2), "images_per_s": round(summary.images_per_s, 3),
            "results_json": summary.results_json}
