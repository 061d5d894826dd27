"""ImageFolder datasets: listing and labels, val labels from the training classes, clear
errors, registration (built-ins under DETGN_DATASETS), the classification mapper
(shapes, channel order, crops, determinism) and its loaders (batches, exact resume,
unreadable files skipped and counted)."""
import itertools
import uuid
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from detgn.config import get_cfg
from detgn.data import (
    ClassificationMapper,
    DatasetCatalog,
    MetadataCatalog,
    build_classification_test_loader,
    build_classification_train_loader,
    get_classification_dataset_dicts,
    load_image_folder,
    register_image_folder,
)
from detgn.data.catalog import DatasetNotFoundError
from detgn.data.classification import random_resized_crop_box
from detgn.data.mapper import ImageReadError

BGR = (20, 120, 220)  # distinct channels: the order of the output is visible
SIZES = {"bird": [(40, 60), (50, 30)], "cat": [(36, 36), (30, 70), (64, 48)], "dog": [(45, 45)]}


def _image(h: int, w: int, seed: int) -> np.ndarray:
    """A BGR image whose left half is ``BGR`` and right half noise: flips and crops show."""
    img = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    img[:, : w // 2] = BGR
    return img


def make_folder(root: Path, sizes=SIZES) -> Path:
    for k, (cls, shapes) in enumerate(sizes.items()):
        (root / cls).mkdir(parents=True)
        for i, (h, w) in enumerate(shapes):
            cv2.imwrite(str(root / cls / f"img{i}.png"), _image(h, w, 10 * k + i))
    return root


@pytest.fixture
def folders(tmp_path):
    """Registered train (3 classes, 6 images) and val (cat and dog only) sets; yields their names and roots."""
    train = make_folder(tmp_path / "train")
    (train / "cat" / "notes.txt").write_text("not an image: not listed")
    val = make_folder(tmp_path / "val", {"cat": [(40, 40)], "dog": [(30, 50), (50, 30)]})
    names = (f"cls_train_{uuid.uuid4().hex[:8]}", f"cls_val_{uuid.uuid4().hex[:8]}")
    register_image_folder(names[0], str(train))
    register_image_folder(names[1], str(val), classes_of=names[0])
    yield names, train, val
    for n in names:
        DatasetCatalog.remove(n)
        MetadataCatalog.remove(n)


def _cfg(train_name, *, ims=2, workers=0, max_bad=10):
    cfg = get_cfg()
    cfg.DATASETS.TRAIN = (train_name,)
    cfg.INPUT.CLASSIFY.TRAIN_CROP = 16
    cfg.INPUT.CLASSIFY.MIN_AREA = 0.25
    cfg.INPUT.CLASSIFY.TEST_RESIZE = 24
    cfg.INPUT.CLASSIFY.TEST_CROP = 20
    cfg.SOLVER.IMS_PER_GPU = ims
    cfg.DATALOADER.NUM_WORKERS = workers
    cfg.DATALOADER.MAX_BAD_IMAGES = max_bad
    cfg.SEED = 7
    return cfg


def _take(loader, n):
    return list(itertools.islice(iter(loader), n))


def _summary(batches):
    return [[(d["file_name"], d["label"], d["image"].numpy().tobytes()) for d in batch] for batch in batches]


# ------------------------------------------------------------------------------ listing
def test_listing_and_labels(folders):
    _, train, _ = folders
    records, classes = load_image_folder(str(train))
    assert classes == ["bird", "cat", "dog"]
    assert [r["image_id"] for r in records] == list(range(6))
    assert [r["label"] for r in records] == [0, 0, 1, 1, 1, 2]
    assert [Path(r["file_name"]).relative_to(train).as_posix() for r in records] == [
        "bird/img0.png", "bird/img1.png", "cat/img0.png", "cat/img1.png", "cat/img2.png", "dog/img0.png"]
    assert set(records[0]) == {"file_name", "image_id", "label"}


def test_val_labels_follow_the_training_classes(folders):
    (train_name, val_name), train, val = folders
    records, classes = load_image_folder(str(val), classes=["bird", "cat", "dog"])
    assert classes == ["bird", "cat", "dog"] and [r["label"] for r in records] == [1, 2, 2]
    alone, own = load_image_folder(str(val))  # without the training classes: cat 0, dog 1 (wrong)
    assert own == ["cat", "dog"] and [r["label"] for r in alone] == [0, 1, 1]
    assert [r["label"] for r in DatasetCatalog.get(val_name)] == [1, 2, 2]
    meta = MetadataCatalog.get(val_name)
    assert meta.classes == ["bird", "cat", "dog"] and meta.evaluator_type == "classification"
    assert meta.image_root == str(val) and meta.classes_of == train_name


def test_unknown_val_class_is_an_error_naming_it(folders):
    (_, val_name), _, val = folders
    make_folder(val, {"zebra": [(20, 20)]})
    with pytest.raises(ValueError, match="'zebra'.*not classes of the training set"):
        DatasetCatalog.get(val_name)


def test_missing_or_empty_root_says_where_and_what(tmp_path, monkeypatch):
    monkeypatch.setenv("DETGN_DATASETS", str(tmp_path))
    with pytest.raises(DatasetNotFoundError) as e:
        load_image_folder(str(tmp_path / "nowhere"))
    msg = str(e.value)
    assert str(tmp_path / "nowhere") in msg and "root/<class name>/<image>" in msg and "DETGN_DATASETS" in msg
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetNotFoundError, match="No class folders"):
        load_image_folder(str(tmp_path / "empty"))
    (tmp_path / "empty" / "cat").mkdir()
    with pytest.raises(DatasetNotFoundError, match="without images"):
        load_image_folder(str(tmp_path / "empty"))
    with pytest.raises(DatasetNotFoundError, match="Dataset 'synthetic_cls_train'.*prepare_synthetic_cls.py"):
        DatasetCatalog.get("synthetic_cls_train")


def test_builtins_resolve_under_DETGN_DATASETS(tmp_path, monkeypatch):
    from detgn.data.datasets.synthetic_cls import ClsStyle, class_names, generate_synthetic_cls

    generate_synthetic_cls(str(tmp_path / "synthetic_cls"), num_train=8, num_val=4, seed=0,
                           style=ClsStyle(size=32, num_classes=4), log=None)
    monkeypatch.setenv("DETGN_DATASETS", str(tmp_path))  # after import: read at lookup time
    train = DatasetCatalog.get("synthetic_cls_train")
    assert len(train) == 8 and [r["label"] for r in train] == [0, 0, 1, 1, 2, 2, 3, 3]
    assert MetadataCatalog.get("synthetic_cls_val").classes == class_names(ClsStyle(num_classes=4))
    assert len(DatasetCatalog.get("synthetic_cls_val")) == 4
    assert MetadataCatalog.get("imagenet_val").classes_of == "imagenet_train"
    assert MetadataCatalog.get("imagenet_train").image_root == str(tmp_path / "imagenet" / "train")


def test_concatenation_needs_shared_classes(folders):
    (train_name, val_name), train, _ = folders
    other = f"cls_other_{uuid.uuid4().hex[:8]}"
    register_image_folder(other, str(train))
    try:
        records, classes = get_classification_dataset_dicts([train_name, other])
        assert len(records) == 12 and [r["image_id"] for r in records] == list(range(12))
        assert classes == ["bird", "cat", "dog"]
        with pytest.raises(ValueError, match="disagree on their classes"):
            get_classification_dataset_dicts([train_name, _own_classes(train)])
        # A val set labelled by the training classes shares them: it may be added.
        assert len(get_classification_dataset_dicts([train_name, val_name])[0]) == 9
    finally:
        DatasetCatalog.remove(other)
        MetadataCatalog.remove(other)


def _own_classes(train: Path) -> str:
    """A set with classes of its own (registered for the rest of the test run, under a unique name)."""
    name = f"cls_own_{uuid.uuid4().hex[:8]}"
    register_image_folder(name, str(make_folder(train.parent / name, {"cat": [(20, 20)]})))
    return name


# ------------------------------------------------------------------------------- mapper
def test_crop_box_stays_inside_and_falls_back_to_the_centre():
    rng = np.random.default_rng(0)
    for _ in range(200):
        top, left, h, w = random_resized_crop_box(50, 80, min_area=0.2, rng=rng)
        assert 0 <= top and top + h <= 50 and 0 <= left and left + w <= 80
        assert 0.2 * 4000 * 0.9 <= h * w <= 4000 and 3 / 4 * 0.9 <= w / h <= 4 / 3 * 1.1
    # A 10 x 1000 strip fits no 3/4..4/3 crop of its whole area: the central 13 x 10 crop.
    assert random_resized_crop_box(10, 1000, min_area=1.0, rng=rng) == (0, 493, 10, 13)
    assert random_resized_crop_box(30, 30, min_area=1.0, rng=rng) == (0, 0, 30, 30)


def test_mapper_shapes_and_channel_order(folders):
    _, train, _ = folders
    record = load_image_folder(str(train))[0][3]  # cat/img1.png: 30 x 70
    for fmt, first in (("BGR", BGR[0]), ("RGB", BGR[2])):
        for is_train in (True, False):
            m = ClassificationMapper(is_train=is_train, train_crop=16, test_resize=24, test_crop=20,
                                     random_flip=0.0, min_area=1.0, image_format=fmt)
            out = m(record, rng=np.random.default_rng(0))
            size = 16 if is_train else 20
            assert out["image"].shape == (3, size, size) and out["image"].dtype == torch.uint8
            assert out["label"] == 1 and out["image_id"] == 3 and out["file_name"] == record["file_name"]
            assert out["image"][0, size // 2, 0] == first  # the uniform left half


def test_test_crop_is_central_and_deterministic(folders):
    _, train, _ = folders
    record = load_image_folder(str(train))[0][3]  # 30 x 70 -> 24 x 56 -> central 20 x 20
    m = ClassificationMapper(is_train=False, test_resize=24, test_crop=20)
    a, b = m(record)["image"], m(record, rng=np.random.default_rng(1))["image"]
    assert np.array_equal(a.numpy(), b.numpy())
    resized = cv2.resize(cv2.imread(record["file_name"]), (56, 24), interpolation=cv2.INTER_LINEAR)
    assert np.array_equal(a.numpy().transpose(1, 2, 0), resized[2:22, 18:38])


def test_train_crop_is_a_function_of_the_rng(folders):
    _, train, _ = folders
    record = load_image_folder(str(train))[0][4]  # cat/img2.png: 64 x 48
    m = ClassificationMapper(is_train=True, train_crop=16, min_area=0.08, random_flip=0.5)
    same = [m(record, rng=np.random.default_rng(3))["image"].numpy() for _ in range(2)]
    assert np.array_equal(*same)
    outs = {m(record, rng=np.random.default_rng(s))["image"].numpy().tobytes() for s in range(8)}
    assert len(outs) == 8
    # The flip draw comes after the crop draws: flip prob 1 vs 0 is the same crop, mirrored.
    kw = dict(is_train=True, train_crop=16, min_area=0.3)
    never = ClassificationMapper(random_flip=0.0, **kw)(record, rng=np.random.default_rng(5))["image"].numpy()
    always = ClassificationMapper(random_flip=1.0, **kw)(record, rng=np.random.default_rng(5))["image"].numpy()
    assert np.array_equal(always, never[:, :, ::-1])


def test_mapper_from_config_and_checks():
    cfg = get_cfg()
    cfg.INPUT.FORMAT = "RGB"
    m = ClassificationMapper.from_config(cfg, True)
    assert (m.train_crop, m.min_area, m.test_resize, m.test_crop) == (224, 0.08, 256, 224)
    assert m.image_format == "RGB" and m.random_flip == cfg.INPUT.RANDOM_FLIP and m.is_train
    with pytest.raises(ValueError, match="test_crop"):
        ClassificationMapper(is_train=False, test_resize=100, test_crop=128)
    with pytest.raises(ValueError, match="min_area"):
        ClassificationMapper(is_train=True, min_area=0.0)


# ------------------------------------------------------------------------------ loaders
def test_train_loader_batches_and_exact_resume(folders):
    (train_name, _), _, _ = folders
    cfg = _cfg(train_name, ims=3)
    full = _take(build_classification_train_loader(cfg), 8)
    for batch in full:
        assert len(batch) == 3
        for d in batch:
            assert d["image"].shape == (3, 16, 16) and isinstance(d["label"], int)
    assert len({d["file_name"] for d in full[0] + full[1]}) == 6  # one epoch = every image once
    full = _summary(full)
    for k in (1, 5):
        assert _summary(_take(build_classification_train_loader(cfg, start_batch=k), 8 - k)) == full[k:]
    cfg.SEED = 8
    assert _summary(_take(build_classification_train_loader(cfg), 8)) != full


@pytest.mark.parametrize("workers", [0, 2])
def test_unreadable_training_image_is_skipped_and_counted(folders, caplog, workers):
    (train_name, _), train, _ = folders
    bad = train / "cat" / "img1.png"
    bad.write_bytes(b"not a png")
    loader = build_classification_train_loader(_cfg(train_name, ims=2, workers=workers))
    batches = _take(loader, 10)  # > 3 epochs of the 5 good images
    assert loader.num_bad_images == 1 and loader.bad_files == [str(bad)]
    assert all(str(bad) != d["file_name"] for b in batches for d in b)
    assert sum(str(bad) in r.getMessage() for r in caplog.records if r.levelname == "WARNING") == 1


def test_test_loader_every_image_once(folders):
    (_, val_name), _, _ = folders
    batches = list(build_classification_test_loader(_cfg("x"), val_name))
    seen = [(d["label"], tuple(d["image"].shape)) for b in batches for d in b]
    assert sorted(seen) == [(1, (3, 20, 20)), (2, (3, 20, 20)), (2, (3, 20, 20))]
    assert len({d["file_name"] for b in batches for d in b}) == 3  # every image once


def test_test_loader_stops_on_an_unreadable_image(folders):
    (_, val_name), _, val = folders
    (val / "dog" / "img0.png").write_bytes(b"")
    with pytest.raises(ImageReadError, match="img0.png"):
        list(build_classification_test_loader(_cfg("x"), val_name))
