"""The classification task's data path: :class:`ClassificationMapper` (random resized crop and
flip in training, resize and central crop in test) and the train/test loaders over ImageFolder
records (:mod:`detgn.data.datasets.image_folder`), with the detection loaders' machinery
(:func:`detgn.data.build.make_train_loader`: exact resume, per-sample augmentation generators,
unreadable training files skipped and counted).
"""
from __future__ import annotations

import logging
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

import cv2
import numpy as np
import torch

from .bad_images import BadImageTracker
from .build import TrainLoader, make_test_loader, train_loader_from_config
from .catalog import MetadataCatalog
from .datasets.image_folder import get_classification_dataset_dicts
from .mapper import read_image

logger = logging.getLogger(__name__)

__all__ = [
    "ClassificationMapper",
    "TEST_BATCH_SIZE",
    "build_classification_test_loader",
    "build_classification_train_loader",
    "random_resized_crop_box",
]


# -------------------------------------------------------------------------------- mapper
def random_resized_crop_box(height: int, width: int, *, min_area: float, rng: np.random.Generator,
                            ratio: Tuple[float, float] = (3 / 4, 4 / 3), tries: int = 10) -> Tuple[int, int, int, int]:
    """A random crop ``(top, left, h, w)`` of ``min_area..1`` of the image, aspect (w/h) in ``ratio``.

    Up to ``tries`` draws; when none fits, the largest central crop with an aspect in
    ``ratio`` (the whole image if its own aspect is in range).
    """
    area = height * width
    log_lo, log_hi = np.log(ratio[0]), np.log(ratio[1])
    for _ in range(tries):
        target = area * rng.uniform(min_area, 1.0)
        aspect = np.exp(rng.uniform(log_lo, log_hi))
        w = int(round(np.sqrt(target * aspect)))
        h = int(round(np.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return top, left, h, w
    aspect = width / height
    if aspect < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif aspect > ratio[1]:
        w, h = int(round(height * ratio[1])), height
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def _resize(image: np.ndarray, width: int, height: int) -> np.ndarray:
    if (image.shape[1], image.shape[0]) == (width, height):
        return image
    # INTER_AREA averages all source pixels when shrinking a lot; LINEAR would alias.
    shrink = image.shape[0] > 2 * height and image.shape[1] > 2 * width
    return cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


# Images per evaluation batch. Evaluation outputs do not depend on the batch (BN uses its running
# statistics or EvalNorm's per-sample ones, GN/LN/IN are per sample), so batching only saves time.
TEST_BATCH_SIZE = 64


class ClassificationMapper:
    """Map a classification record to the model's input dict.

    Args:
        is_train: training mapping (random resized crop, random flip) or test mapping
            (shorter side to ``test_resize``, central crop).
        train_crop: side of the square training crop.
        min_area: smallest fraction of the image area a training crop covers.
        test_resize: shorter side after the test resize.
        test_crop: side of the central square test crop (<= ``test_resize``).
        random_flip: probability of a horizontal flip in training.
        image_format: "BGR" or "RGB", the channel order of the output.
    Returns (from ``__call__(record, rng=None)``):
        ``{"image": (3, S, S) uint8 tensor (S = train_crop or test_crop), "label": int,
        "image_id", "file_name"}``. Training draws come from ``rng`` (the loader passes a
        per-sample ``numpy.random.Generator``); an unreadable file raises ``ImageReadError``.
    """

    # The training loader passes each sample's own generator (exact resume; see detgn.data.build).
    takes_rng = True

    def __init__(self, *, is_train: bool, train_crop: int = 224, min_area: float = 0.08, test_resize: int = 256,
                 test_crop: int = 224, random_flip: float = 0.5, image_format: str = "BGR"):
        if image_format not in ("BGR", "RGB"):
            raise ValueError(f"image_format must be 'BGR' or 'RGB' (INPUT.FORMAT), got {image_format!r}")
        if not 0.0 <= random_flip <= 1.0:
            raise ValueError(f"random_flip is a probability in [0, 1] (INPUT.RANDOM_FLIP), got {random_flip}")
        if not 0.0 < min_area <= 1.0:
            raise ValueError(f"min_area must be in (0, 1] (INPUT.CLASSIFY.MIN_AREA), got {min_area}")
        if min(train_crop, test_resize, test_crop) <= 0:
            raise ValueError(f"crop and resize sizes must be positive, got train_crop={train_crop}, "
                             f"test_resize={test_resize}, test_crop={test_crop} (INPUT.CLASSIFY.*)")
        if test_crop > test_resize:
            raise ValueError(f"test_crop ({test_crop}) must not exceed test_resize ({test_resize}): the central crop "
                             "is cut from the resized image (INPUT.CLASSIFY.TEST_CROP / TEST_RESIZE)")
        self.is_train = is_train
        self.train_crop, self.min_area = int(train_crop), float(min_area)
        self.test_resize, self.test_crop = int(test_resize), int(test_crop)
        self.random_flip = float(random_flip)
        self.image_format = image_format

    @classmethod
    def from_config(cls, cfg, is_train: bool) -> "ClassificationMapper":
        c = cfg.INPUT.CLASSIFY
        return cls(is_train=is_train, train_crop=c.TRAIN_CROP, min_area=c.MIN_AREA, test_resize=c.TEST_RESIZE,
                   test_crop=c.TEST_CROP, random_flip=cfg.INPUT.RANDOM_FLIP, image_format=cfg.INPUT.FORMAT)

    def train_image(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """(H, W, 3) -> random resized crop, maybe flipped, (train_crop, train_crop, 3)."""
        top, left, h, w = random_resized_crop_box(image.shape[0], image.shape[1], min_area=self.min_area, rng=rng)
        out = _resize(image[top:top + h, left:left + w], self.train_crop, self.train_crop)
        return out[:, ::-1] if rng.random() < self.random_flip else out

    def test_image(self, image: np.ndarray) -> np.ndarray:
        """(H, W, 3) -> shorter side to test_resize, central (test_crop, test_crop, 3)."""
        h, w = image.shape[:2]
        scale = self.test_resize / min(h, w)
        new_h, new_w = max(self.test_resize, int(round(h * scale))), max(self.test_resize, int(round(w * scale)))
        image = _resize(image, new_w, new_h)
        top, left = int(round((new_h - self.test_crop) / 2)), int(round((new_w - self.test_crop) / 2))
        return image[top:top + self.test_crop, left:left + self.test_crop]

    def __call__(self, record: Dict[str, Any], rng: Optional[np.random.Generator] = None) -> Dict[str, Any]:
        file_name, image_id = record["file_name"], record.get("image_id")
        image = read_image(file_name, image_format=self.image_format, image_id=image_id)
        if self.is_train:
            # Without a generator, fresh OS entropy (never a global RNG); loaders always pass one.
            image = self.train_image(image, rng if rng is not None else np.random.default_rng())
        else:
            image = self.test_image(image)
        return {
            "image": torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))),
            "label": int(record["label"]),
            "image_id": image_id,
            "file_name": file_name,
        }


# ------------------------------------------------------------------------------- loaders
def _roots(names: Sequence[str]) -> str:
    return ", ".join(str(MetadataCatalog.get(n).get("image_root", n)) for n in names)


def build_classification_train_loader(cfg, *, mapper: Optional[Callable] = None, start_batch: int = 0,
                                      bad_images: Optional[BadImageTracker] = None) -> TrainLoader:
    """Infinite loader of ``SOLVER.IMS_PER_GPU``-image batches of ``DATASETS.TRAIN`` for this rank,
    from batch ``start_batch`` of the stream on.

    The classification twin of :func:`detgn.data.build_detection_train_loader`: the same
    deterministic, exactly resumable stream (seed ``SEED``, per-sample augmentation
    generators), unreadable files skipped and counted by ``bad_images`` (None: a new
    tracker with the ``DATALOADER.MAX_BAD_IMAGES*`` limits), no aspect-ratio grouping.
    """
    names = [cfg.DATASETS.TRAIN] if isinstance(cfg.DATASETS.TRAIN, str) else list(cfg.DATASETS.TRAIN)
    records, classes = get_classification_dataset_dicts(names)
    logger.info("Classification training set %s: %d images of %d classes", ", ".join(names), len(records),
                len(classes))
    return train_loader_from_config(
        cfg, records, mapper=mapper if mapper is not None else ClassificationMapper.from_config(cfg, True),
        start_batch=start_batch, bad_images=bad_images,
        aspect_ratio_grouping=False,  # every training image is cropped to the same square
        # tools/validate_dataset.py reads COCO-format sets only.
        validate_hint=f"a pass that decodes every image under {_roots(names)}",
    )


def build_classification_test_loader(cfg, dataset_name: str, *, mapper: Optional[Callable] = None):
    """Every image of ``dataset_name`` exactly once across ranks, in batches of
    :data:`TEST_BATCH_SIZE`, test mapping."""
    records, _ = get_classification_dataset_dicts(dataset_name)
    return make_test_loader(
        records,
        mapper=mapper if mapper is not None else ClassificationMapper.from_config(cfg, False),
        num_workers=cfg.DATALOADER.NUM_WORKERS,
        batch_size=TEST_BATCH_SIZE,
    )
