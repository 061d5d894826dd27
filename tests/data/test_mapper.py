"""DatasetMapper: shapes, dtypes, the geometry of boxes/masks/pixels, formats, errors."""
import random

import cv2
import numpy as np
import pytest
import torch

from detgn.config import get_cfg
from detgn.data import DatasetMapper, ImageReadError, load_coco_json
from detgn.data.mapper import ImageSizeMismatchError
from detgn.data.transforms import resized_shape
from detgn.structures import BitMasks, Boxes, PolygonMasks


OBJECT_BGR = (30, 140, 230)  # the colours tests/conftest.py paints (checked below)
BACKGROUND_BGR = (90, 60, 20)


@pytest.fixture
def records(tiny_coco):
    assert (tiny_coco.OBJECT_BGR, tiny_coco.BACKGROUND_BGR) == (OBJECT_BGR, BACKGROUND_BGR)
    return {r["image_id"]: r for r in load_coco_json(tiny_coco.json_file, tiny_coco.image_root)}


def _mapper(**kw):
    args = dict(is_train=True, min_size_train=(128,), max_size_train=1000, min_size_test=96, max_size_test=1000,
                random_flip=0.0, image_format="BGR", mask_format="polygon")
    args.update(kw)
    return DatasetMapper(**args)


def test_output_shapes_and_dtypes(records):
    out = _mapper()(records[101], rng=np.random.default_rng(0))
    assert set(out) == {"image", "height", "width", "image_id", "file_name", "instances"}
    img = out["image"]
    assert img.dtype == torch.uint8 and tuple(img.shape) == (3, 128, 192)
    assert (out["height"], out["width"], out["image_id"]) == (64, 96, 101)
    inst = out["instances"]
    assert inst.image_size == (128, 192) and len(inst) == 2
    assert isinstance(inst.gt_boxes, Boxes) and inst.gt_boxes.tensor.dtype == torch.float32
    assert inst.gt_classes.dtype == torch.int64 and inst.gt_classes.tolist() == [0, 1]
    assert isinstance(inst.gt_masks, PolygonMasks) and len(inst.gt_masks) == 2


def test_resize_caps_longer_side():
    assert resized_shape(64, 128, 128, 200) == (100, 200)
    assert resized_shape(480, 640, 800, 1333) == (800, 1067)
    assert resized_shape(100, 1000, 800, 1333) == (133, 1333)


def test_known_box_scaled_and_flipped(records):
    plain = _mapper(random_flip=0.0)(records[101], rng=np.random.default_rng(0))
    assert plain["instances"].gt_boxes.tensor[0].tolist() == pytest.approx([20, 24, 80, 64])
    flipped = _mapper(random_flip=1.0)(records[101], rng=np.random.default_rng(0))
    assert flipped["instances"].gt_boxes.tensor[0].tolist() == pytest.approx([192 - 80, 24, 192 - 20, 64])
    assert torch.equal(flipped["image"], plain["image"].flip(-1))


@pytest.mark.parametrize("flip", [0.0, 1.0])
@pytest.mark.parametrize("image_id", [101, 102, 103, 105, 106])
def test_masks_and_pixels_agree_with_boxes(records, flip, image_id):
    mapper = _mapper(random_flip=flip, mask_format="polygon")
    out = mapper(records[image_id], rng=np.random.default_rng(1))
    inst = out["instances"]
    h, w = inst.image_size
    bitmasks = inst.gt_masks if isinstance(inst.gt_masks, BitMasks) else inst.gt_masks.to_bitmasks(h, w)
    assert bitmasks.tensor.shape == (len(inst), h, w)
    # The mask's extent is the box (up to a pixel of rasterization).
    mask_boxes = bitmasks.get_bounding_boxes()
    assert torch.allclose(mask_boxes, inst.gt_boxes.tensor, atol=2.01), (mask_boxes, inst.gt_boxes.tensor)
    # The masked pixels of the resized image show the object's colour.
    img = out["image"].permute(1, 2, 0).numpy().astype(int)
    for m in bitmasks.tensor.numpy():
        # Away from the edges: the tiny set was painted at the original size, and
        # bilinear upscaling blends a source pixel (2 output pixels) at every edge.
        core = cv2.erode(m.astype(np.uint8), np.ones((7, 7), np.uint8)).astype(bool)
        assert core.sum() > 20
        assert np.abs(img[core] - OBJECT_BGR).max() <= 2


def test_rgb_is_bgr_reversed(records):
    bgr = _mapper(image_format="BGR")(records[101], rng=np.random.default_rng(0))["image"]
    rgb = _mapper(image_format="RGB")(records[101], rng=np.random.default_rng(0))["image"]
    assert torch.equal(rgb, bgr.flip(0))
    assert bgr[:, 0, 0].tolist() == list(BACKGROUND_BGR)
    assert rgb[:, 0, 0].tolist() == list(BACKGROUND_BGR)[::-1]


def test_crowd_excluded_and_rle_gives_bitmasks(records):
    out = _mapper()(records[102], rng=np.random.default_rng(0))
    assert len(out["instances"]) == 1 and out["instances"].gt_classes.tolist() == [2]
    out = _mapper()(records[103], rng=np.random.default_rng(0))
    assert isinstance(out["instances"].gt_masks, BitMasks)
    assert out["instances"].gt_masks.tensor.shape == (1, 128, 128)


def test_bitmask_format(records):
    out = _mapper(mask_format="bitmask")(records[106], rng=np.random.default_rng(0))
    masks = out["instances"].gt_masks
    assert isinstance(masks, BitMasks) and masks.tensor.dtype == torch.bool
    assert masks.tensor.shape == (2, 128, 256)


def test_image_without_annotations(records):
    inst = _mapper()(records[104], rng=np.random.default_rng(0))["instances"]
    assert len(inst) == 0 and inst.gt_boxes.tensor.shape == (0, 4) and inst.gt_classes.dtype == torch.int64
    assert len(inst.gt_masks) == 0


def test_test_mode_fixed_size_no_flip_no_instances(records):
    mapper = _mapper(is_train=False, random_flip=1.0)
    out = mapper(records[101])
    assert "instances" not in out and tuple(out["image"].shape) == (3, 96, 144)
    ref = _mapper(is_train=True, min_size_train=(96,), random_flip=0.0)(records[101], rng=np.random.default_rng(0))
    assert torch.equal(out["image"], ref["image"])


def test_random_sizes_and_flips_come_from_rng(records):
    mapper = _mapper(min_size_train=(64, 96, 128), random_flip=0.5)
    outs = [mapper(records[101], rng=np.random.default_rng(s)) for s in range(12)]
    assert {o["image"].shape[1] for o in outs} == {64, 96, 128}
    firsts = {round(o["instances"].gt_boxes.tensor[0, 0].item() / o["image"].shape[2], 4) for o in outs}
    assert len(firsts) == 2  # flipped and not flipped
    again = mapper(records[101], rng=np.random.default_rng(5))
    assert torch.equal(again["image"], outs[5]["image"])
    assert torch.equal(again["instances"].gt_boxes.tensor, outs[5]["instances"].gt_boxes.tensor)


def test_global_rngs_untouched(records):
    torch.manual_seed(3); np.random.seed(3); random.seed(3)
    states = (torch.random.get_rng_state(), np.random.get_state()[1].copy(), random.getstate())
    mapper = _mapper(min_size_train=(64, 128), random_flip=0.5)
    mapper(records[101], rng=np.random.default_rng(0))
    mapper(records[102])  # no rng: fresh OS entropy, still no global RNG
    assert torch.equal(torch.random.get_rng_state(), states[0])
    assert np.array_equal(np.random.get_state()[1], states[1]) and random.getstate() == states[2]


def test_missing_image_raises_naming_file_and_id(records, tiny_coco):
    rec = dict(records[101], file_name=str(tiny_coco.root / "images" / "gone.png"))
    with pytest.raises(ImageReadError) as e:
        _mapper()(rec, rng=np.random.default_rng(0))
    assert "gone.png" in str(e.value) and "image id 101" in str(e.value) and "not found" in str(e.value)
    assert e.value.file_name.endswith("gone.png") and e.value.image_id == 101


def test_corrupt_image_raises(records, tiny_coco):
    bad = tiny_coco.root / "images" / "corrupt.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 20)
    rec = dict(records[102], file_name=str(bad))
    with pytest.raises(ImageReadError) as e:
        _mapper()(rec, rng=np.random.default_rng(0))
    assert "corrupt.png" in str(e.value) and "image id 102" in str(e.value) and "not a decodable image" in str(e.value)


def test_size_mismatch_raises_naming_both(records):
    rec = dict(records[101], height=65)
    with pytest.raises(ImageSizeMismatchError) as e:
        _mapper()(rec, rng=np.random.default_rng(0))
    msg = str(e.value)
    assert "96x64" in msg and "96x65" in msg and "image id 101" in msg
    assert isinstance(e.value, ImageReadError)


def test_from_config_and_argument_checks():
    cfg = get_cfg()
    cfg.INPUT.FORMAT = "RGB"
    m = DatasetMapper.from_config(cfg, is_train=True)
    assert m.min_size_train == (800,) and m.max_size_train == 1333 and m.image_format == "RGB"
    assert m.random_flip == 0.5 and m.mask_format == "polygon"
    with pytest.raises(ValueError, match="INPUT.FORMAT"):
        _mapper(image_format="YUV")
    with pytest.raises(ValueError, match="INPUT.MASK_FORMAT"):
        _mapper(mask_format="rle")


def test_box_only_annotations_and_mask_off(records):
    """A box-only annotation keeps its box and gets an empty mask flagged gt_has_mask False
    (left out of the mask loss), alone or beside annotations with masks, polygon or bitmask."""
    rec = dict(records[106], annotations=[{k: v for k, v in a.items() if k != "segmentation"}
                                          for a in records[106]["annotations"]])
    inst = _mapper()(rec, rng=np.random.default_rng(0))["instances"]
    assert len(inst) == 2 and inst.has("gt_masks") and inst.gt_has_mask.tolist() == [False, False]
    inst = _mapper(mask_on=False)(records[106], rng=np.random.default_rng(0))["instances"]
    assert len(inst) == 2 and not inst.has("gt_masks") and not inst.has("gt_has_mask")
    rec["annotations"][0]["segmentation"] = records[106]["annotations"][0]["segmentation"]
    for fmt in ("polygon", "bitmask"):
        inst = _mapper(mask_format=fmt)(rec, rng=np.random.default_rng(0))["instances"]
        assert inst.gt_has_mask.tolist() == [True, False]
        boxes = inst.gt_boxes.tensor
        targets = inst.gt_masks.crop_and_resize(boxes, 14)
        assert targets[0].sum() > 0 and targets[1].sum() == 0
