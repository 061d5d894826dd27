"""``DatasetMapper``: one dataset record -> the dict the model consumes.

The mapper reads the image with OpenCV (BGR; reversed to RGB when ``image_format``
is "RGB"), checks its decoded size against the record, resizes it by the shorter
side (one size drawn per image in training, the longer side capped), flips it
horizontally with probability ``random_flip`` in training, and builds the
``Instances`` the heads train on: ``gt_boxes`` (XYXY, scaled and flipped with the
image), ``gt_classes`` (contiguous ids) and ``gt_masks`` (``PolygonMasks``, or
``BitMasks`` when an annotation is RLE or ``mask_format`` is "bitmask"). Crowd
annotations are left out. All randomness comes from the ``rng`` argument (a
``numpy.random.Generator``) so an augmentation is reproducible from its seed.

Images that fail to read: the mapper raises :class:`ImageReadError` (missing,
unreadable or undecodable file) or its subclass :class:`ImageSizeMismatchError`
(decoded size differs from the record), naming the file and image id. What happens
next depends on the loader: in TRAINING the file is skipped and warned about once, then
left out of every later batch without being read again (also by other workers and
processes, and after ``--resume``); the run stops with an error once more DISTINCT
files have failed than the larger of ``DATALOADER.MAX_BAD_IMAGES`` and
``DATALOADER.MAX_BAD_IMAGES_FRACTION`` of the training set allow (both 0: the first
failure stops it). The bookkeeping happens in the main process (``BadImageTracker`` in
``detgn/data/build.py``), so it also works with worker processes. At
TEST time any failure stops evaluation, since metrics over a partial set mislead.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence

import cv2
import numpy as np
import torch

from detgn.structures import BitMasks, Boxes, Instances, PolygonMasks, polygons_to_bitmask, rle_to_bitmask
from detgn.utils.errors import UserError

from .transforms import ResizeFlip, resized_shape, sample_resize_flip

__all__ = ["DatasetMapper", "ImageReadError", "ImageSizeMismatchError", "check_image_size", "read_image"]


class ImageReadError(UserError, RuntimeError):
    """An image file that is missing, unreadable or not a decodable image."""

    def __init__(self, message: str, *, file_name: Optional[str] = None, image_id: Any = None):
        # One positional argument: DataLoader workers re-raise exceptions as type(msg).
        super().__init__(message)
        self.file_name = file_name
        self.image_id = image_id


class ImageSizeMismatchError(ImageReadError):
    """An image whose decoded size differs from the height/width of its record."""


def read_image(file_name: str, *, image_format: str = "BGR", image_id: Any = None) -> np.ndarray:
    """Read an image file as (H, W, 3) uint8 in ``image_format`` ("BGR" or "RGB") order.

    Raises:
        ImageReadError: naming the file and image id, when the file is missing,
            unreadable, or not a decodable image.
    """
    who = f"image id {image_id}" if image_id is not None else "image"
    try:
        buf = np.fromfile(file_name, dtype=np.uint8)
    except FileNotFoundError:
        raise ImageReadError(
            f"{file_name} ({who}): file not found; check the dataset's image folder",
            file_name=file_name, image_id=image_id,
        ) from None
    except OSError as e:
        raise ImageReadError(
            f"{file_name} ({who}): cannot read file: {e}", file_name=file_name, image_id=image_id
        ) from None
    # IGNORE_ORIENTATION: annotations (and the JSON's height/width) refer to the stored
    # pixels; applying EXIF rotation would misplace every box of a rotated photo.
    image = cv2.imdecode(buf, cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION) if buf.size else None
    if image is None:
        raise ImageReadError(
            f"{file_name} ({who}): not a decodable image (empty, corrupt or unsupported format, {buf.size} bytes); "
            "replace the file or remove the image from the annotations",
            file_name=file_name,
            image_id=image_id,
        )
    if image_format == "RGB":
        image = np.ascontiguousarray(image[:, :, ::-1])
    elif image_format != "BGR":
        raise ValueError(f"image_format must be 'BGR' or 'RGB', got {image_format!r}")
    return image


def check_image_size(image: np.ndarray, record: Dict[str, Any]) -> None:
    """Raise :class:`ImageSizeMismatchError` when ``image`` is not the record's height x width."""
    height, width = int(record["height"]), int(record["width"])
    if image.shape[:2] != (height, width):
        file_name, image_id = record.get("file_name"), record.get("image_id")
        raise ImageSizeMismatchError(
            f"{file_name} (image id {image_id}): decoded image is {image.shape[1]}x{image.shape[0]} "
            f"(width x height) but its record says {width}x{height}; fix the JSON's width/height or "
            "replace the file",
            file_name=file_name,
            image_id=image_id,
        )


def _chw_tensor(image: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 array -> (3, H, W) uint8 tensor."""
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))


class DatasetMapper:
    """Map a record (see ``detgn/data/datasets/coco.py``) to the model's input dict.

    Args:
        is_train: training mapping (random size and flip, ``instances``) or test mapping
            (fixed size, no flip, no annotations).
        min_size_train: shorter-side sizes, one drawn per image in training.
        max_size_train: cap on the longer side in training (<= 0: none).
        min_size_test, max_size_test: shorter side and longer-side cap at test time.
        random_flip: probability of a horizontal flip in training.
        image_format: "BGR" (OpenCV, Detectron weights) or "RGB".
        mask_format: "polygon" (PolygonMasks; RLE annotations still give BitMasks) or "bitmask".
        mask_on: build ``gt_masks`` (False skips them for box-only training).
        resize_test_in_model: at test time leave the image at its size: the model resizes it
            (INPUT.RESIZE_TEST "torchvision").
    Returns (from ``__call__``):
        ``{"image": (3, H', W') uint8 tensor, "height": H, "width": W, "image_id",
        "file_name", "instances": Instances(image_size=(H', W'))}`` (instances in training only).
    """

    def __init__(
        self,
        *,
        is_train: bool,
        min_size_train: Sequence[int] = (800,),
        max_size_train: int = 1333,
        min_size_test: int = 800,
        max_size_test: int = 1333,
        random_flip: float = 0.5,
        image_format: str = "BGR",
        mask_format: str = "polygon",
        mask_on: bool = True,
        resize_test_in_model: bool = False,
    ):
        if image_format not in ("BGR", "RGB"):
            raise ValueError(f"image_format must be 'BGR' or 'RGB' (INPUT.FORMAT), got {image_format!r}")
        if mask_format not in ("polygon", "bitmask"):
            raise ValueError(f"mask_format must be 'polygon' or 'bitmask' (INPUT.MASK_FORMAT), got {mask_format!r}")
        if not 0.0 <= random_flip <= 1.0:
            raise ValueError(f"random_flip is a probability in [0, 1] (INPUT.RANDOM_FLIP), got {random_flip}")
        if isinstance(min_size_train, int):
            min_size_train = (min_size_train,)
        if len(min_size_train) == 0 or min(min_size_train) <= 0 or min_size_test <= 0:
            raise ValueError(f"sizes must be positive: min_size_train={min_size_train}, min_size_test={min_size_test}")
        self.is_train = is_train
        self.min_size_train = tuple(int(s) for s in min_size_train)
        self.max_size_train = int(max_size_train)
        self.min_size_test = int(min_size_test)
        self.max_size_test = int(max_size_test)
        self.random_flip = float(random_flip)
        self.image_format = image_format
        self.mask_format = mask_format
        self.mask_on = mask_on
        self.resize_test_in_model = bool(resize_test_in_model)

    @classmethod
    def from_config(cls, cfg, is_train: bool) -> "DatasetMapper":
        return cls(
            is_train=is_train,
            min_size_train=tuple(cfg.INPUT.MIN_SIZE_TRAIN),
            max_size_train=cfg.INPUT.MAX_SIZE_TRAIN,
            min_size_test=cfg.INPUT.MIN_SIZE_TEST,
            max_size_test=cfg.INPUT.MAX_SIZE_TEST,
            random_flip=cfg.INPUT.RANDOM_FLIP,
            image_format=cfg.INPUT.FORMAT,
            mask_format=cfg.INPUT.MASK_FORMAT,
            mask_on=cfg.MODEL.MASK_ON,
            resize_test_in_model=cfg.INPUT.RESIZE_TEST == "torchvision",
        )

    def transform_for(self, height: int, width: int, rng: Optional[np.random.Generator] = None) -> ResizeFlip:
        """The resize (and, in training, flip) applied to an image of this size."""
        if not self.is_train:
            if self.resize_test_in_model:
                return ResizeFlip(height, width, height, width, False)
            new_h, new_w = resized_shape(height, width, self.min_size_test, self.max_size_test)
            return ResizeFlip(height, width, new_h, new_w, False)
        # Without a generator, fresh OS entropy (never a global RNG); loaders always pass one.
        rng = rng if rng is not None else np.random.default_rng()
        return sample_resize_flip(
            height, width, short_sizes=self.min_size_train, max_size=self.max_size_train,
            flip_prob=self.random_flip, rng=rng,
        )

    # The training loader passes each sample's own generator (see detgn.data.build).
    takes_rng = True

    def __call__(self, record: Dict[str, Any], rng: Optional[np.random.Generator] = None) -> Dict[str, Any]:
        file_name, image_id = record["file_name"], record.get("image_id")
        height, width = int(record["height"]), int(record["width"])
        image = read_image(file_name, image_format=self.image_format, image_id=image_id)
        check_image_size(image, record)
        tf = self.transform_for(height, width, rng)
        out = {
            "image": _chw_tensor(tf.apply_image(image)),
            "height": height,
            "width": width,
            "image_id": image_id,
            "file_name": file_name,
        }
        if self.is_train:
            out["instances"] = self.annotations_to_instances(record.get("annotations", []), tf, record)
        return out

    def map_image(self, image: np.ndarray, rng: Optional[np.random.Generator] = None) -> Dict[str, Any]:
        """An image already in memory -> ``{"image", "height", "width"}`` (no annotations).

        Args:
            image: (H, W, 3) uint8 in ``image_format`` order.
        Returns:
            the model input of :meth:`__call__` without ``image_id``, ``file_name`` and
            ``instances``: resized exactly as a file of that image would be.
        """
        height, width = image.shape[:2]
        tf = self.transform_for(height, width, rng)
        return {"image": _chw_tensor(tf.apply_image(image)), "height": height, "width": width}

    def annotations_to_instances(self, annotations: List[dict], tf: ResizeFlip, record: Dict[str, Any]) -> Instances:
        """Non-crowd annotations -> ``Instances`` in the transformed image's coordinates."""
        anns = [a for a in annotations if not a.get("iscrowd", 0)]
        size = (tf.new_height, tf.new_width)
        xywh = np.asarray([a["bbox"] for a in anns], dtype=np.float64).reshape(-1, 4)
        xyxy = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1)
        boxes = Boxes(torch.from_numpy(tf.apply_boxes(xyxy)).float())
        boxes.clip(size)
        classes = torch.tensor([a["category_id"] for a in anns], dtype=torch.int64)
        inst = Instances(size, gt_boxes=boxes, gt_classes=classes)
        if self.mask_on and anns:
            # A box-only annotation ("segmentation": [] in the file) gets an empty mask and
            # gt_has_mask False: it takes part in the RPN and box losses, not in the mask loss.
            inst.gt_masks = self._masks(anns, tf)
            inst.gt_has_mask = torch.tensor([("segmentation" in a) for a in anns], dtype=torch.bool)
        elif self.mask_on:
            empty = BitMasks(torch.zeros(0, *size, dtype=torch.bool))
            inst.gt_masks = PolygonMasks([]) if self.mask_format == "polygon" else empty
            inst.gt_has_mask = torch.zeros(0, dtype=torch.bool)
        # Resizing can shrink a thin box to nothing; such a box gives no training signal.
        return inst[boxes.nonempty()]

    def _masks(self, anns: List[dict], tf: ResizeFlip):
        segms = [a.get("segmentation", []) for a in anns]  # [] (no polygon): an empty mask
        if self.mask_format == "polygon" and not any(isinstance(s, dict) for s in segms):
            return PolygonMasks([tf.apply_polygons(s) for s in segms])
        masks = np.zeros((len(segms), tf.new_height, tf.new_width), dtype=bool)
        for i, s in enumerate(segms):
            if isinstance(s, dict):
                # RLE lives on the original pixel grid: decode there, then resize/flip.
                m = rle_to_bitmask(s, tf.height, tf.width)
                masks[i] = tf.apply_bitmasks(m[None])[0]
            else:
                # Rasterizing the transformed polygons is sharper than resizing a bitmap.
                masks[i] = polygons_to_bitmask(tf.apply_polygons(s), tf.new_height, tf.new_width)
        return BitMasks(torch.from_numpy(masks))
