"""A synthetic image-classification set of textured shapes, in the ImageNet folder layout.

Made for the normalization study (BN vs GN vs LN vs IN at batch 2..32) and for testing
backbone pre-training on a CPU. Each image shows ONE shape of the detection set's eight
(:data:`detgn.data.datasets.synthetic.CATEGORIES`); the class is the shape. Colour, texture,
size, rotation and position of the shape and the background are random, so only the
geometry tells the classes apart. On top, every image gets its own photometric change
(brightness offset, contrast factor, per-channel colour cast, sensor noise), so the
mean and contrast of whole images vary strongly from one image to the next: that is
what makes batch statistics computed over a few images noisy, i.e. BN's small-batch
problem visible, while per-sample normalizers (GN, LN, IN) are unaffected.

Classes are the first ``num_classes`` shape names in SORTED order, as
``torchvision.datasets.folder.find_classes`` sorts class folders, so the label of
:func:`render_cls_sample` is the label an ImageFolder loader gives the written file.

Everything is a function of ``(seed, split, index, style)``: each image has its own
``numpy`` generator, so output is byte-identical for a seed whatever the number of
worker processes. Written layout::

    out_dir/{train,val}/<class name>/<index:06d>.png    (label = index % num_classes)
    out_dir/info.json                                    style, seed, counts, classes
"""
from __future__ import annotations

import dataclasses
import json
import multiprocessing
import os
import time
import zlib
from dataclasses import dataclass
from functools import partial
from typing import Callable, Dict, List, Optional, Tuple

import cv2
import numpy as np

from detgn.utils.file_io import atomic_write_bytes, atomic_write_text

from .synthetic_render import CATEGORIES, clutter_background, Canvas, fill_parts, unit_shape

__all__ = ["ClsStyle", "class_names", "render_cls_sample", "generate_synthetic_cls", "INFO_FILE"]

INFO_FILE = "info.json"
SPLITS = ("train", "val")
_PNG_END = b"IEND\xaeB`\x82"  # the last 8 bytes of every complete PNG
_PNG_COMPRESSION = 3  # measured: level 3 is ~as fast as 1 here and a few % smaller


@dataclass(frozen=True)
class ClsStyle:
    """What the rendered images look like (all ranges are sampled uniformly per image).

    Args:
        size: side of the square images, 32..128 px.
        num_classes: 2..8 shapes (the first ones of ``detgn.data.datasets.synthetic.CATEGORIES``).
        object_scale: (min, max) longer extent of the shape's bounding box, as a fraction
            of the image side.
        max_rotation: shapes are rotated by up to +-this many degrees (180: any angle).
        position_jitter: the shape's centre moves by up to +-this fraction of the side in
            x and y (then is pulled back so the whole shape stays inside the image).
        background: probabilities of the (clutter, gradient, plain) backgrounds; clutter
            is the detection set's (mottled gradient, blobs, strokes).
        brightness: per-image offset added to every pixel, +-this many gray levels.
        contrast: (min, max) per-image factor scaling deviations from the image mean,
            drawn log-uniformly.
        colour_cast: per-image, per-channel gain 1 +- this.
        noise_std: standard deviation of per-pixel Gaussian noise, in gray levels.
    """

    size: int = 64
    num_classes: int = 8
    object_scale: Tuple[float, float] = (0.35, 0.8)
    max_rotation: float = 180.0
    position_jitter: float = 0.2
    background: Tuple[float, float, float] = (0.5, 0.25, 0.25)
    brightness: float = 60.0
    contrast: Tuple[float, float] = (0.35, 1.8)
    colour_cast: float = 0.25
    noise_std: float = 6.0

    def __post_init__(self) -> None:
        # Lists (e.g. from info.json) become tuples, so styles compare and hash by value.
        for key in ("object_scale", "background", "contrast"):
            object.__setattr__(self, key, tuple(float(v) for v in getattr(self, key)))
        lo, hi = self.object_scale
        c_lo, c_hi = self.contrast
        problems = [
            (not 32 <= self.size <= 128, f"size must be in 32..128, got {self.size}"),
            (not 2 <= self.num_classes <= len(CATEGORIES),
             f"num_classes must be in 2..{len(CATEGORIES)} (one per shape), got {self.num_classes}"),
            (not 0.1 <= lo <= hi <= 1.0, f"object_scale must satisfy 0.1 <= min <= max <= 1, got {self.object_scale}"),
            (not 0 <= self.max_rotation <= 180, f"max_rotation must be in [0, 180] degrees, got {self.max_rotation}"),
            (not 0 <= self.position_jitter <= 0.5, f"position_jitter must be in [0, 0.5], got {self.position_jitter}"),
            (len(self.background) != 3 or min(self.background) < 0 or sum(self.background) <= 0,
             f"background must be 3 non-negative weights (clutter, gradient, plain), got {self.background}"),
            (not 0 <= self.brightness <= 255, f"brightness must be in [0, 255], got {self.brightness}"),
            (not 0 < c_lo <= c_hi, f"contrast must satisfy 0 < min <= max, got {self.contrast}"),
            (not 0 <= self.colour_cast < 1, f"colour_cast must be in [0, 1), got {self.colour_cast}"),
            (not self.noise_std >= 0, f"noise_std must be >= 0, got {self.noise_std}"),
        ]
        bad = [msg for failed, msg in problems if failed]
        if bad:
            raise ValueError("ClsStyle: " + "; ".join(bad))


def class_names(style: ClsStyle = ClsStyle()) -> List[str]:
    """The class (= folder) names, sorted as ImageFolder sorts them; label i is ``class_names()[i]``."""
    return sorted(c["name"] for c in CATEGORIES[: style.num_classes])


# ----------------------------------------------------------------------------- rendering
def _plain_or_gradient(rng: np.random.Generator, size: int, gradient: bool) -> np.ndarray:
    c1 = rng.integers(0, 256, 3).astype(np.float32)
    if not gradient:
        return np.broadcast_to(c1, (size, size, 3)).copy()
    c2 = rng.integers(0, 256, 3).astype(np.float32)
    t = rng.uniform(0, 2 * np.pi)
    ramp = np.add.outer(np.arange(size) * np.sin(t), np.arange(size) * np.cos(t)).astype(np.float32)
    ramp = (ramp - ramp.min()) / max(float(ramp.max() - ramp.min()), 1.0)
    return c1 + (c2 - c1) * ramp[..., None]


def _shape_of_extent(rng: np.random.Generator, name: str, extent: float, max_rotation: float) -> np.ndarray:
    """uint8 {0,1} mask of a randomly rotated ``name`` whose bounding box's longer side is ~``extent`` px."""
    parts = unit_shape(name, rng)
    angle = np.deg2rad(rng.uniform(-max_rotation, max_rotation))
    # Extents differ by shape and angle (a rotated rectangle, a dumbbell): measure one at a
    # known scale, then scale so every class has the same size distribution.
    probe_scale = 16.0
    ys, xs = np.nonzero(fill_parts(parts, probe_scale, angle))
    probe_extent = max(int(np.ptp(ys)), int(np.ptp(xs))) + 1
    return fill_parts(parts, probe_scale * extent / probe_extent, angle)


def render_cls_sample(seed: int, split: str, index: int, style: ClsStyle = ClsStyle()) -> Tuple[np.ndarray, int]:
    """Render image ``index`` of ``split``; a pure function of its arguments.

    Returns:
        ``(image, label)``: (size, size, 3) uint8 BGR, and ``index % num_classes``, an
        index into :func:`class_names`.
    """
    rng = np.random.default_rng([seed, zlib.crc32(f"cls/{split}".encode()), index])
    s = style.size
    label = index % style.num_classes
    kind = rng.choice(3, p=np.asarray(style.background) / sum(style.background))
    background = clutter_background(rng, s, s) if kind == 0 else _plain_or_gradient(rng, s, gradient=kind == 1)
    canvas = Canvas(background)

    lo, hi = style.object_scale
    mask = _shape_of_extent(rng, class_names(style)[label], rng.uniform(lo, hi) * s, style.max_rotation)
    mh, mw = mask.shape
    cx, cy = s / 2 + rng.uniform(-1, 1, 2) * style.position_jitter * s
    # Pull the centre back so the whole shape shows: a cut-off star may look like a cross.
    cx = float(np.clip(cx, min(mw / 2, s / 2), max(s - mw / 2, s / 2)))
    cy = float(np.clip(cy, min(mh / 2, s / 2), max(s - mh / 2, s / 2)))
    box, sub = canvas.locate(mask, cx, cy)
    canvas.paint(rng, box, sub, float(np.sqrt(mask.sum())), 0)

    # Whole-image photometrics: what differs between images, not between classes.
    img = canvas.img
    c_lo, c_hi = style.contrast
    contrast = np.float32(np.exp(rng.uniform(np.log(c_lo), np.log(c_hi))))
    offset = np.float32(rng.uniform(-style.brightness, style.brightness))
    gains = (1 + rng.uniform(-style.colour_cast, style.colour_cast, 3)).astype(np.float32)
    mean = np.float32(img.mean())
    img = ((img - mean) * contrast + (mean + offset)) * gains
    if style.noise_std > 0:
        img += rng.standard_normal(img.shape, dtype=np.float32) * np.float32(style.noise_std)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8), label


# ------------------------------------------------------------------------------- writing
def _is_complete_png(path: str) -> bool:
    """A file that a finished write left (PNG trailer present); cheap: reads 8 bytes."""
    try:
        with open(path, "rb") as f:
            f.seek(-len(_PNG_END), os.SEEK_END)
            return f.read() == _PNG_END
    except OSError:  # missing, or shorter than a trailer
        return False


def _sample_path(out_dir: str, split: str, index: int, classes: List[str]) -> str:
    return os.path.join(out_dir, split, classes[index % len(classes)], f"{index:06d}.png")


def _write_sample(index: int, *, out_dir: str, split: str, seed: int, style: ClsStyle,
                  classes: List[str]) -> Optional[Tuple[float, float]]:
    """Render and save one image unless a complete file is there; returns its (mean, std) or None if kept."""
    path = _sample_path(out_dir, split, index, classes)
    if _is_complete_png(path):
        return None
    image, _ = render_cls_sample(seed, split, index, style)
    ok, buf = cv2.imencode(".png", image, [cv2.IMWRITE_PNG_COMPRESSION, _PNG_COMPRESSION])
    if not ok:
        raise OSError(f"could not encode {path} as PNG")
    # Atomic: an interrupted run leaves complete files or ignorable .tmp ones, never a truncated PNG.
    atomic_write_bytes(path, buf.tobytes())
    gray = image.astype(np.float32).mean(axis=2)
    return float(gray.mean()), float(gray.std())


def _write_info(out_dir: str, info: dict) -> None:
    atomic_write_text(os.path.join(out_dir, INFO_FILE), json.dumps(info, indent=1, sort_keys=True) + "\n")


def _check_same_generator(out_dir: str, seed: int, style: ClsStyle) -> None:
    """Refuse to mix two different datasets in one folder (files are kept across reruns)."""
    path = os.path.join(out_dir, INFO_FILE)
    if not os.path.isfile(path):
        return
    with open(path) as f:
        old = json.load(f)
    try:
        same = old.get("seed") == seed and ClsStyle(**old.get("style", {})) == style
    except (TypeError, ValueError):
        same = False
    if not same:
        raise ValueError(
            f"generate_synthetic_cls: {out_dir} holds a set made with seed {old.get('seed')} and style "
            f"{old.get('style')}, not seed {seed} and style {dataclasses.asdict(style)}; its images would be "
            "mixed with the new ones. Use another --out folder or delete that one."
        )


def _tidy(out_dir: str, split: str, n: int, classes: List[str]) -> List[str]:
    """Remove temp files of killed writes; return the image files of ``split`` this run does
    not make (left by a larger earlier run), which are kept."""
    expected = {os.path.relpath(_sample_path(out_dir, split, i, classes), out_dir) for i in range(n)}
    found = []
    for c in classes:
        folder = os.path.join(out_dir, split, c)
        for f in os.listdir(folder):
            if f.endswith(".png"):
                found.append(os.path.join(split, c, f))
            elif f.startswith(".") and f.endswith(".tmp"):  # a write killed before its rename
                os.unlink(os.path.join(folder, f))
    return sorted(set(found) - expected)


def generate_synthetic_cls(out_dir: str, *, num_train: int, num_val: int, seed: int, style: ClsStyle = ClsStyle(),
                           workers: int = 1, log: Optional[Callable[[str], None]] = print) -> Dict[str, object]:
    """Write the classification set under ``out_dir`` (see the module docstring).

    A rerun into the same folder (same seed and style) keeps the complete files and
    writes only the missing ones, so an interrupted run is finished by running it again.

    Args:
        num_train, num_val: images per split (0 writes none for that split).
        seed: same seed and style -> byte-identical files; another seed differs.
        style: what the images look like (:class:`ClsStyle`).
        workers: processes rendering images; the output does not depend on it.
        log: progress printer (``None`` for silence).
    Returns:
        ``{"classes": [...], "seconds": s, "train"/"val": {"images", "written", "kept",
        "stray_files", "images_per_s", "mean_of_image_means", "std_of_image_means",
        "std_of_image_stds"}}``; the image statistics (gray levels) are over the images
        written by this call (None when none was).
    """
    for key, v in (("num_train", num_train), ("num_val", num_val), ("seed", seed)):
        if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 0:
            raise ValueError(f"generate_synthetic_cls: {key} must be an integer >= 0, got {v!r}")
    if workers < 1:
        raise ValueError(f"generate_synthetic_cls: workers must be >= 1, got {workers}")
    say = log or (lambda msg: None)
    classes = class_names(style)
    os.makedirs(out_dir, exist_ok=True)
    _check_same_generator(out_dir, seed, style)
    info = {"description": "detgn synthetic shapes (image classification, ImageNet folder layout)",
            "generator": "detgn.data.synthetic_cls", "version": 1, "seed": int(seed),
            "style": dataclasses.asdict(style), "classes": classes,
            "counts": {"train": int(num_train), "val": int(num_val)}, "complete": False}
    _write_info(out_dir, info)  # first: a rerun after an interruption checks it matches

    start_all = time.perf_counter()
    summary: Dict[str, object] = {"classes": classes}
    pool = multiprocessing.get_context("fork").Pool(workers) if workers > 1 else None
    try:
        for split, n in zip(SPLITS, (num_train, num_val)):
            for c in classes:
                os.makedirs(os.path.join(out_dir, split, c), exist_ok=True)
            job = partial(_write_sample, out_dir=out_dir, split=split, seed=seed, style=style, classes=classes)
            start, every = time.perf_counter(), max(1000, n // 10)
            # Images are small: big chunks keep the inter-process traffic negligible.
            results = pool.imap(job, range(n), chunksize=64) if pool else map(job, range(n))
            stats = []
            for k, r in enumerate(results, 1):
                if r is not None:
                    stats.append(r)
                if k % every == 0 or (k == n and n >= 1000):
                    rate = k / max(time.perf_counter() - start, 1e-9)
                    say(f"[synthetic_cls] {split}: {k}/{n} images ({len(stats)} written), {rate:.0f} img/s")
            seconds = time.perf_counter() - start
            strays = _tidy(out_dir, split, n, classes)
            if strays:
                say(f"[synthetic_cls] note: {len(strays)} image files under {os.path.join(out_dir, split)} are beyond "
                    f"this run's {n} images (left by a larger earlier run, e.g. {strays[0]}); an ImageFolder loader "
                    "will read them too: delete them if that is not wanted")
            arr = np.asarray(stats, dtype=np.float64).reshape(-1, 2)
            summary[split] = {
                "images": int(n), "written": len(stats), "kept": int(n) - len(stats), "stray_files": len(strays),
                "seconds": seconds, "images_per_s": n / max(seconds, 1e-9),
                "mean_of_image_means": float(arr[:, 0].mean()) if len(arr) else None,
                "std_of_image_means": float(arr[:, 0].std()) if len(arr) else None,
                "std_of_image_stds": float(arr[:, 1].std()) if len(arr) else None,
            }
    finally:
        if pool:
            pool.close()
            pool.join()
    _write_info(out_dir, {**info, "complete": True})
    summary["seconds"] = time.perf_counter() - start_all
    return summary
