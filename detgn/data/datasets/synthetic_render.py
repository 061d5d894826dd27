"""Rendering one image of the synthetic set: shapes, textures, clutter, occlusion, annotations.

Eight categories differ by SHAPE only (colour and texture are random per instance),
so a detector has to learn geometry, not colour look-ups. Images have cluttered
backgrounds (gradients, low-frequency and pixel noise, unlabeled strokes and blobs),
objects of COCO's small/medium/large sizes, occlusion, a few ``iscrowd=1`` clusters
(compressed RLE) and a few images with nothing.

An instance is annotated by its VISIBLE part: the pixels no later shape covers,
traced into polygons (external contours, lightly simplified), so ``pycocotools``
rasterizes them back onto what was painted. Placements that would leave an earlier
instance with a hole (COCO polygons cannot express one) or barely visible are redrawn
elsewhere, so few painted shapes go unlabeled.

:func:`render_synthetic_image` is a pure function of ``(seed, split, index)``: each
image has its own ``numpy`` generator. :mod:`detgn.data.datasets.synthetic` writes the set;
the classification set (:mod:`detgn.data.datasets.synthetic_cls`) draws with the same shapes
(:func:`unit_shape`, :func:`fill_parts`), backgrounds and :class:`Canvas`.
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from typing import List, Optional

import cv2
import numpy as np
import pycocotools.mask as mask_util

__all__ = [
    "CATEGORIES",
    "ASPECT_RATIOS",
    "Canvas",
    "SyntheticImage",
    "clutter_background",
    "fill_parts",
    "mask_to_polygons",
    "render_synthetic_image",
    "unit_shape",
]

# Ids deliberately neither 0-based nor contiguous, as in COCO.
CATEGORIES = [
    {"id": 1, "name": "ellipse", "supercategory": "shape"},
    {"id": 2, "name": "triangle", "supercategory": "shape"},
    {"id": 3, "name": "rectangle", "supercategory": "shape"},
    {"id": 5, "name": "star", "supercategory": "shape"},
    {"id": 7, "name": "hexagon", "supercategory": "shape"},
    {"id": 11, "name": "cross", "supercategory": "shape"},
    {"id": 13, "name": "crescent", "supercategory": "shape"},
    {"id": 17, "name": "dumbbell", "supercategory": "shape"},
]
ASPECT_RATIOS = (4 / 3, 3 / 4, 16 / 9, 1.0, 2.0, 0.5)  # width / height
CROWD_PROB, EMPTY_PROB = 0.04, 0.02
MIN_VISIBLE_FRACTION = 0.25  # annotated only when at least this much of the shape shows
KEEP_VISIBLE_FRACTION = 0.35  # placements pushing an earlier shape below this are redrawn
MIN_PIXELS = 20
CONTOUR_UPSAMPLE = 4  # contours traced at 4x so vertices sit ~1/8 px from pixel edges
# approxPolyDP tolerance in pixels: sqrt(mask area) * SIMPLIFY_EPS, clipped to SIMPLIFY_EPS_RANGE, so
# large shapes shed the staircase of their rasterized edges while small ones keep their detail.
SIMPLIFY_EPS, SIMPLIFY_EPS_RANGE = 0.01, (0.6, 1.2)
_CROWD_OWNER = 30000  # owner-map id of the crowd cluster (regular instances are 0..N-1)


@dataclass
class SyntheticImage:
    """One rendered image: ``image`` (H, W, 3) uint8 BGR; ``annotations`` COCO
    dicts without ``id``/``image_id``; ``visible_masks`` (H, W) bool per annotation."""

    image: np.ndarray
    annotations: List[dict] = field(default_factory=list)
    visible_masks: List[np.ndarray] = field(default_factory=list)


# ----------------------------------------------------------------------------- shapes
def _circle(cx: float, cy: float, r: float, n: int = 48) -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    return np.stack([cx + r * np.cos(t), cy + r * np.sin(t)], 1)


def unit_shape(name: str, rng: np.random.Generator) -> List[tuple]:
    """Parts of a shape of radius ~1 as ``(points (K, 2), additive)``; subtractive
    parts are carved out after all additive ones are filled."""
    if name == "ellipse":
        a = rng.uniform(1.0, 1.6)
        return [(_circle(0, 0, 1) * [np.sqrt(a), 1 / np.sqrt(a)], True)]
    if name == "triangle":
        ang = np.deg2rad(np.array([90.0, 210.0, 330.0]) + rng.uniform(-15, 15, 3))
        r = rng.uniform(0.85, 1.0, 3)
        return [(np.stack([r * np.cos(ang), r * np.sin(ang)], 1), True)]
    if name == "rectangle":
        a = np.sqrt(rng.uniform(1.0, 2.0))
        return [(np.array([[-a, -1 / a], [a, -1 / a], [a, 1 / a], [-a, 1 / a]]), True)]
    if name == "star":
        inner = rng.uniform(0.38, 0.52)
        t = np.arange(10) * np.pi / 5
        r = np.where(np.arange(10) % 2 == 0, 1.0, inner)
        return [(np.stack([r * np.cos(t), r * np.sin(t)], 1), True)]
    if name == "hexagon":
        t = np.arange(6) * np.pi / 3
        return [(np.stack([np.cos(t) * rng.uniform(1.0, 1.15), np.sin(t)], 1), True)]
    if name == "cross":
        w = rng.uniform(0.2, 0.32)
        q = [(1, w), (w, w), (w, 1), (-w, 1), (-w, w), (-1, w), (-1, -w), (-w, -w), (-w, -1), (w, -1), (w, -w), (1, -w)]
        return [(np.array(q, dtype=np.float64), True)]
    if name == "crescent":
        d, r2 = rng.uniform(0.35, 0.6), rng.uniform(0.75, 0.95)
        return [(_circle(0, 0, 1), True), (_circle(d, 0, r2), False)]
    if name == "dumbbell":  # two disjoint discs: a two-part instance
        r = 0.55
        c = r + rng.uniform(0.1, 0.3) * r
        return [(_circle(-c, 0, r), True), (_circle(c, 0, r), True)]
    raise ValueError(f"unknown synthetic shape {name!r}; known: {[c['name'] for c in CATEGORIES]}")


def fill_parts(parts: List[tuple], scale: float, angle: float) -> np.ndarray:
    """Rasterize rotated, scaled parts into a tight uint8 {0,1} canvas (1 px margin)."""
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    pts = [(p @ rot.T * scale, add) for p, add in parts]
    allp = np.concatenate([p for p, _ in pts])
    lo = np.floor(allp.min(0)) - 1
    w, h = (np.ceil(allp.max(0)) + 2 - lo).astype(int)
    canvas = np.zeros((h, w), np.uint8)
    for want in (True, False):  # additive parts first, then carve
        for p, add in pts:
            if add == want:
                fixed = np.round((p - lo) * 16).astype(np.int32)  # 4 fractional bits
                cv2.fillPoly(canvas, [fixed], 1 if add else 0, lineType=cv2.LINE_8, shift=4)
    return canvas


def _shape_mask(name: str, side: float, rng: np.random.Generator) -> np.ndarray:
    """Mask of a randomly rotated shape whose area is about ``side ** 2``."""
    parts = unit_shape(name, rng)
    angle = rng.uniform(0, 2 * np.pi)
    unit_area = fill_parts(parts, 20.0, angle).sum() / 400.0  # measured: carving makes it shape-dependent
    return fill_parts(parts, side / np.sqrt(max(unit_area, 1e-3)), angle)


# ------------------------------------------------------------------ textures, background
def _pick_colour(rng: np.random.Generator, against: np.ndarray, min_dist: float = 80.0) -> np.ndarray:
    """A random colour, redrawn a few times to stand out from ``against`` (3,)."""
    best, best_d = None, -1.0
    for _ in range(8):
        c = rng.integers(0, 256, 3).astype(np.float32)
        d = float(np.linalg.norm(c - against))
        if d > best_d:
            best, best_d = c, d
        if d >= min_dist:
            break
    return best


def _texture(rng: np.random.Generator, h: int, w: int, colour: np.ndarray, side: float) -> np.ndarray:
    """(h, w, 3) float32 fill: solid (shaded), stripes, checker or noise."""
    kind = rng.choice(4, p=[0.4, 0.2, 0.2, 0.2]) if side >= 20 else rng.choice([0, 3])
    y, x = np.arange(h, dtype=np.float32), np.arange(w, dtype=np.float32)
    if kind in (1, 2):
        other = _pick_colour(rng, colour, 60.0)
        period = rng.uniform(3.0, max(4.0, side / 3))
        t = rng.uniform(0, np.pi)
        sel = np.floor(np.add.outer(y * np.sin(t), x * np.cos(t)) / period).astype(np.int32)
        if kind == 2:
            sel += np.floor(np.add.outer(y * np.cos(t), -x * np.sin(t)) / period).astype(np.int32)
        out = np.empty((h, w, 3), np.float32)
        out[:] = other
        out[sel % 2 == 0] = colour
        return out
    if kind == 3:
        return colour + rng.standard_normal((h, w, 3), dtype=np.float32) * np.float32(rng.uniform(12, 30))
    g = rng.uniform(-40, 40, 2) / max(side, 1.0)  # gentle shading, like lighting
    return np.add.outer(y * np.float32(g[1]), x * np.float32(g[0]))[..., None] + colour


def _smooth_curve(pts: np.ndarray, rounds: int = 3) -> np.ndarray:
    """Chaikin corner cutting of an open polyline (K, 2)."""
    for _ in range(rounds):
        q = 0.75 * pts[:-1] + 0.25 * pts[1:]
        r = 0.25 * pts[:-1] + 0.75 * pts[1:]
        pts = np.concatenate([pts[:1], np.stack([q, r], 1).reshape(-1, 2), pts[-1:]])
    return pts


def clutter_background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """(h, w, 3) float32 clutter: gradient, smooth and mottled noise, blobs, strokes."""
    # Built at 1/4 resolution and upsampled: a linear ramp survives bilinear
    # upsampling unchanged, the noise becomes a soft mottled texture, and it is 16x cheaper.
    lh, lw = max(h // 4, 2), max(w // 4, 2)
    c1, c2 = rng.integers(0, 256, (2, 3)).astype(np.float32)
    t = rng.uniform(0, 2 * np.pi)
    ramp = np.add.outer(np.arange(lh) * np.sin(t), np.arange(lw) * np.cos(t)).astype(np.float32)
    ramp = (ramp - ramp.min()) / max(float(ramp.max() - ramp.min()), 1.0)
    low = c1 + (c2 - c1) * ramp[..., None]
    grid = rng.normal(0, rng.uniform(8, 35), (int(rng.integers(2, 9)), int(rng.integers(2, 9)), 3))
    low += cv2.resize(grid.astype(np.float32), (lw, lh), interpolation=cv2.INTER_CUBIC)
    low += rng.standard_normal((lh, lw, 3), dtype=np.float32) * np.float32(rng.uniform(0, 14))
    img = np.clip(cv2.resize(low, (w, h), interpolation=cv2.INTER_LINEAR), 0, 255).astype(np.uint8)
    short = min(h, w)
    for _ in range(int(rng.integers(0, 5))):  # irregular low-frequency blobs (no star-like lobes)
        r0 = rng.uniform(8, 0.25 * short)
        tt = np.linspace(0, 2 * np.pi, 40, endpoint=False)
        rad = r0 * (1 + sum(rng.uniform(0, 0.4 / k) * np.sin(k * tt + rng.uniform(0, 6.3)) for k in (2, 3, 4)))
        pts = np.stack([rng.uniform(0, w) + rad * np.cos(tt), rng.uniform(0, h) + rad * np.sin(tt)], 1)
        x0, y0 = np.maximum(np.floor(pts.min(0)).astype(int) - 1, 0)
        x1, y1 = np.minimum(np.ceil(pts.max(0)).astype(int) + 2, [w, h])
        if x0 >= x1 or y0 >= y1:
            continue
        alpha = np.zeros((y1 - y0, x1 - x0), np.uint8)
        cv2.fillPoly(alpha, [np.round((pts - [x0, y0]) * 16).astype(np.int32)], 255, lineType=cv2.LINE_AA, shift=4)
        a = alpha[..., None].astype(np.float32) * np.float32(rng.uniform(0.4, 0.9) / 255)
        region = img[y0:y1, x0:x1]
        region[:] = region * (1 - a) + rng.integers(0, 256, 3).astype(np.float32) * a
    for _ in range(int(rng.integers(1, 7))):  # open strokes: smoothed random walks
        n = int(rng.integers(3, 7))
        steps = rng.normal(0, 0.15 * short, (n, 2)).cumsum(0) + [rng.uniform(0, w), rng.uniform(0, h)]
        pts = np.round(_smooth_curve(steps) * 16).astype(np.int32)
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        cv2.polylines(img, [pts], False, colour, int(rng.integers(1, 5)), lineType=cv2.LINE_AA, shift=4)
    return img.astype(np.float32)


# --------------------------------------------------------------------- annotation
def mask_to_polygons(mask: np.ndarray, offset=(0, 0)) -> List[List[float]]:
    """Polygons (flat ``[x0, y0, x1, y1, ...]`` in pixel-edge coordinates, as COCO)
    of the external contours of a bool mask, one per connected part.

    The mask is bilinearly upsampled and thresholded before tracing, so contours
    run between inside and outside pixel centres and ``pycocotools`` rasterizes
    them back onto the same pixels; ``approxPolyDP`` then drops staircase vertices.
    """
    f = CONTOUR_UPSAMPLE
    padded = np.pad(mask.astype(np.uint8) * 255, 1)
    up = cv2.resize(padded, None, fx=f, fy=f, interpolation=cv2.INTER_LINEAR) > 127
    contours, _ = cv2.findContours(up.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    eps = float(np.clip(SIMPLIFY_EPS * np.sqrt(mask.sum()), *SIMPLIFY_EPS_RANGE))
    polys = []
    for c in contours:
        c = cv2.approxPolyDP(c, eps * f, True).reshape(-1, 2)
        if len(c) < 3 or cv2.contourArea(c.astype(np.float32)) < f * f:  # < 1 px^2: a sliver
            continue
        pts = (c + 0.5) / f - 1 + np.asarray(offset, dtype=np.float64)  # multiples of 1/8: exact in JSON
        polys.append([float(v) for v in pts.reshape(-1)])
    return polys


def _polygon_annotation(vis: np.ndarray, offset, height: int, width: int, category_id: int) -> Optional[dict]:
    polys = mask_to_polygons(vis, offset)
    if not polys:
        return None
    area = float(mask_util.area(mask_util.merge(mask_util.frPyObjects(polys, height, width))))
    if area < MIN_PIXELS:
        return None
    xy = np.concatenate([np.reshape(p, (-1, 2)) for p in polys])
    x0, y0 = xy.min(0)
    x1, y1 = xy.max(0)
    return {"category_id": category_id, "segmentation": polys, "area": area,
            "bbox": [float(x0), float(y0), float(x1 - x0), float(y1 - y0)], "iscrowd": 0}


def _hole_pixels(vis: np.ndarray) -> int:
    """Pixels inside the external contours of ``vis`` that ``vis`` does not cover."""
    contours, _ = cv2.findContours(vis.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    filled = np.zeros(vis.shape, np.uint8)
    cv2.drawContours(filled, contours, -1, 1, thickness=-1)
    return int(filled.sum()) - int(vis.sum())


# ------------------------------------------------------------------------ painting
class Canvas:
    """Image, per-pixel owner map (who is visible where) and placed instances."""

    def __init__(self, img: np.ndarray):
        self.img = img
        self.h, self.w = img.shape[:2]
        self.owner = np.full((self.h, self.w), -1, np.int16)
        self.shapes: List[dict] = []  # {"cat", "box" (x0, y0, x1, y1) in image, "area" full}

    def locate(self, mask: np.ndarray, cx: float, cy: float):
        """Box (x0, y0, x1, y1) and bool sub-mask of ``mask`` centred at (cx, cy),
        cut to the image; None if it falls outside."""
        mh, mw = mask.shape
        x0, y0 = int(round(cx - mw / 2)), int(round(cy - mh / 2))
        ix0, iy0, ix1, iy1 = max(x0, 0), max(y0, 0), min(x0 + mw, self.w), min(y0 + mh, self.h)
        if ix0 >= ix1 or iy0 >= iy1:
            return None
        sub = mask[iy0 - y0: iy1 - y0, ix0 - x0: ix1 - x0].astype(bool)
        return (ix0, iy0, ix1, iy1), sub

    def acceptable(self, box, sub) -> bool:
        """False if covering ``sub`` would hole or nearly hide an earlier instance."""
        x0, y0, x1, y1 = box
        hit = np.unique(self.owner[y0:y1, x0:x1][sub])
        if not hit.size or hit.max() < 0:
            return True
        cover = np.zeros((self.h, self.w), bool)
        cover[y0:y1, x0:x1] = sub
        for i in hit[(hit >= 0) & (hit < _CROWD_OWNER)]:
            bx0, by0, bx1, by1 = self.shapes[i]["box"]
            vis = (self.owner[by0:by1, bx0:bx1] == i) & ~cover[by0:by1, bx0:bx1]
            n = int(vis.sum())
            if n == 0:
                continue  # wholly covered: as if never drawn
            if n < KEEP_VISIBLE_FRACTION * self.shapes[i]["area"] or _hole_pixels(vis) > max(2, 0.01 * n):
                return False
        return True

    def paint(self, rng, box, sub, side: float, owner_id: int) -> None:
        x0, y0, x1, y1 = box
        region = self.img[y0:y1, x0:x1]
        colour = _pick_colour(rng, np.array(cv2.mean(region, mask=sub.view(np.uint8))[:3], np.float32))
        np.copyto(region, _texture(rng, y1 - y0, x1 - x0, colour, side), where=sub[..., None])
        self.owner[y0:y1, x0:x1][sub] = owner_id


def _sample_side(rng: np.random.Generator, short: int) -> float:
    """sqrt(area) of a shape: COCO small / medium / large in proportion 35/40/25."""
    lo, hi = [(12, 32), (32, 96), (96, max(100.0, 0.75 * short))][rng.choice(3, p=[0.35, 0.4, 0.25])]
    return float(np.exp(rng.uniform(np.log(lo), np.log(hi))))


def _place_crowd(canvas: Canvas, rng: np.random.Generator) -> int:
    """A tight cluster of many small same-category shapes; returns its category index."""
    cat = int(rng.integers(len(CATEGORIES)))
    short = min(canvas.h, canvas.w)
    spread = rng.uniform(0.05, 0.12) * short
    cx, cy = rng.uniform(0.25, 0.75) * canvas.w, rng.uniform(0.25, 0.75) * canvas.h
    for _ in range(int(rng.integers(12, 31))):
        side = rng.uniform(6, 12)
        placed = canvas.locate(_shape_mask(CATEGORIES[cat]["name"], side, rng),
                              cx + rng.normal(0, spread), cy + rng.normal(0, spread))
        if placed is not None:
            canvas.paint(rng, *placed, side, _CROWD_OWNER)
    return cat


def render_synthetic_image(seed: int, split: str, index: int, *, min_side: int = 320,
                           max_side: int = 512) -> SyntheticImage:
    """Render image ``index`` of ``split``; a pure function of its arguments.

    The longer side is drawn from [min_side, max_side], the aspect ratio from
    ``ASPECT_RATIOS``. Annotations come in painting order (a crowd region first).
    """
    rng = np.random.default_rng([seed, zlib.crc32(split.encode()), index])
    longer = int(rng.integers(min_side, max_side + 1))
    ratio = ASPECT_RATIOS[int(rng.integers(len(ASPECT_RATIOS)))]
    w, h = (longer, round(longer / ratio)) if ratio >= 1 else (round(longer * ratio), longer)
    canvas = Canvas(clutter_background(rng, h, w))
    kind = rng.random()
    crowd_cat = _place_crowd(canvas, rng) if EMPTY_PROB <= kind < EMPTY_PROB + CROWD_PROB else None
    n_objects = 0 if kind < EMPTY_PROB else 1 + min(int(rng.poisson(5.0)), 14)
    for _ in range(n_objects):
        cat = int(rng.integers(len(CATEGORIES)))
        side = _sample_side(rng, min(h, w))
        mask = _shape_mask(CATEGORIES[cat]["name"], side, rng)
        mh, mw = mask.shape
        for _try in range(10):  # keep >= ~70% of the shape's box inside the image
            cx = rng.uniform(min(0.35 * mw, w / 2), max(w - 0.35 * mw, w / 2))
            cy = rng.uniform(min(0.35 * mh, h / 2), max(h - 0.35 * mh, h / 2))
            placed = canvas.locate(mask, cx, cy)
            if placed is not None and canvas.acceptable(*placed):
                canvas.shapes.append({"cat": cat, "box": placed[0], "area": int(mask.sum())})
                canvas.paint(rng, *placed, side, len(canvas.shapes) - 1)
                break

    out = SyntheticImage(image=None)
    if crowd_cat is not None:
        vis = canvas.owner == _CROWD_OWNER
        if vis.sum() >= 4 * MIN_PIXELS:
            rle = mask_util.encode(np.asfortranarray(vis.astype(np.uint8)))
            out.annotations.append({
                "category_id": CATEGORIES[crowd_cat]["id"], "iscrowd": 1,
                "segmentation": {"size": [h, w], "counts": rle["counts"].decode("ascii")},
                "area": float(mask_util.area(rle)), "bbox": [float(v) for v in mask_util.toBbox(rle)]})
            out.visible_masks.append(vis)
    for i, s in enumerate(canvas.shapes):
        x0, y0, x1, y1 = s["box"]
        vis = canvas.owner[y0:y1, x0:x1] == i
        n = int(vis.sum())
        if n < MIN_PIXELS or n < MIN_VISIBLE_FRACTION * s["area"]:
            continue
        ann = _polygon_annotation(vis, (x0, y0), h, w, CATEGORIES[s["cat"]]["id"])
        if ann is not None:
            full = np.zeros((h, w), bool)
            full[y0:y1, x0:x1] = vis
            out.annotations.append(ann)
            out.visible_masks.append(full)
    # Sensor grain over everything, after the shapes, as a camera would add it.
    amp = np.float32(rng.uniform(2, 8))  # uniform grain: much cheaper than gaussian, looks the same
    grain = np.frombuffer(rng.bytes(h * w * 3), np.uint8).reshape(h, w, 3).astype(np.float32)
    out.image = np.clip(canvas.img + (grain * (amp / 255) - amp / 2), 0, 255).astype(np.uint8)
    return out
