"""Train/test loaders: batches, workers, resume, RNG isolation, bad-image policy, sharding."""
import itertools
import logging
import random
import uuid

import numpy as np
import pytest
import torch

from detgn.config import get_cfg
from detgn.data import (
    DatasetCatalog,
    ImageReadError,
    MetadataCatalog,
    build_detection_test_loader,
    build_detection_train_loader,
    get_detection_dataset_dicts,
    register_coco_instances,
)
from detgn.data.build import TooManyBadImagesError, make_test_loader
from detgn.utils import comm


@pytest.fixture
def tiny_name(tiny_coco):
    name = f"tiny_{uuid.uuid4().hex[:8]}"
    register_coco_instances(name, tiny_coco.json_file, tiny_coco.image_root)
    yield name
    DatasetCatalog.remove(name)
    MetadataCatalog.remove(name)


def _cfg(name, *, ims=1, workers=0, max_bad=10, grouping=True):
    cfg = get_cfg()
    cfg.DATASETS.TRAIN = (name,)
    cfg.DATASETS.TEST = (name,)
    cfg.INPUT.MIN_SIZE_TRAIN = (48, 64)
    cfg.INPUT.MAX_SIZE_TRAIN = 128
    cfg.INPUT.MIN_SIZE_TEST = 64
    cfg.INPUT.MAX_SIZE_TEST = 128
    cfg.SOLVER.IMS_PER_GPU = ims
    cfg.DATALOADER.NUM_WORKERS = workers
    cfg.DATALOADER.MAX_BAD_IMAGES = max_bad
    cfg.DATALOADER.ASPECT_RATIO_GROUPING = grouping
    cfg.SEED = 11
    return cfg


def _take(loader, n):
    return list(itertools.islice(iter(loader), n))


def _summary(batches):
    """Comparable content of batches: ids, image bytes and boxes."""
    out = []
    for batch in batches:
        out.append([(d["image_id"], d["image"].shape, d["image"].sum().item(),
                     d["instances"].gt_boxes.tensor.flatten().tolist()) for d in batch])
    return out


def test_batches_and_empty_filter(tiny_name, caplog):
    with caplog.at_level(logging.INFO, logger="detgn.data.build"):
        loader = build_detection_train_loader(_cfg(tiny_name, ims=2))
    assert any("Removed 1 of 6 images" in r.getMessage() for r in caplog.records)
    batches = _take(loader, 10)
    ids = set()
    for batch in batches:
        assert isinstance(batch, list) and len(batch) == 2
        for d in batch:
            assert d["image"].dtype == torch.uint8 and min(d["image"].shape[1:]) in (48, 64)
            assert len(d["instances"]) >= 1
            ids.add(d["image_id"])
        # Aspect-ratio grouping: all landscape (w >= h) or all portrait.
        assert len({d["width"] >= d["height"] for d in batch}) == 1
    assert 104 not in ids and ids == {101, 102, 103, 105, 106}


def test_zero_and_two_workers_yield_the_same_stream(tiny_name):
    a = _summary(_take(build_detection_train_loader(_cfg(tiny_name, ims=2, workers=0)), 6))
    b = _summary(_take(build_detection_train_loader(_cfg(tiny_name, ims=2, workers=2)), 6))
    assert a == b


@pytest.mark.parametrize("ims,grouping", [(1, True), (2, True), (2, False)])
def test_resume_yields_the_batches_of_iteration_k(tiny_name, ims, grouping):
    cfg = _cfg(tiny_name, ims=ims, grouping=grouping)
    full = _summary(_take(build_detection_train_loader(cfg), 12))
    for k in (1, 7):
        resumed = _summary(_take(build_detection_train_loader(cfg, start_batch=k), 12 - k))
        assert resumed == full[k:]
    cfg.SEED = 12
    assert _summary(_take(build_detection_train_loader(cfg), 12)) != full


@pytest.mark.parametrize("workers", [0, 2])
def test_loader_never_consumes_global_rngs(tiny_name, workers):
    torch.manual_seed(0); np.random.seed(0); random.seed(0)
    states = (torch.random.get_rng_state(), np.random.get_state()[1].copy(), random.getstate())
    _take(build_detection_train_loader(_cfg(tiny_name, ims=2, workers=workers)), 3)
    _take(build_detection_test_loader(_cfg(tiny_name, workers=workers), tiny_name), 2)
    assert torch.equal(torch.random.get_rng_state(), states[0])
    assert np.array_equal(np.random.get_state()[1], states[1]) and random.getstate() == states[2]


def _corrupt(tiny_coco, image_id):
    path = tiny_coco.root / "images" / f"{image_id:06d}.png"
    path.write_bytes(b"this is not a png")
    return str(path)


@pytest.mark.parametrize("workers", [0, 2])
def test_corrupt_image_is_skipped_and_counted_once(tiny_coco, tiny_name, caplog, workers):
    bad = _corrupt(tiny_coco, 103)
    loader = build_detection_train_loader(_cfg(tiny_name, ims=1, workers=workers, max_bad=10))
    with caplog.at_level(logging.WARNING, logger="detgn.data"):
        batches = _take(loader, 12)  # > 2 epochs of the 5 usable images
    ids = [d["image_id"] for b in batches for d in b]
    assert 103 not in ids and set(ids) == {101, 102, 105, 106}
    # One distinct file, counted and warned about once however many epochs pass.
    assert loader.num_bad_images == 1 and loader.bad_files == [bad]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert bad in warnings[0] and "1 of at most 10 distinct files; it is skipped from now on" in warnings[0]


@pytest.mark.parametrize("workers", [0, 2])
def test_too_many_bad_images_raises(tiny_coco, tiny_name, workers):
    bad = _corrupt(tiny_coco, 105)
    loader = build_detection_train_loader(_cfg(tiny_name, workers=workers, max_bad=0))
    with pytest.raises(TooManyBadImagesError) as e:
        _take(loader, 12)
    assert bad in str(e.value) and "MAX_BAD_IMAGES=0" in str(e.value)
    _corrupt(tiny_coco, 101)
    loader = build_detection_train_loader(_cfg(tiny_name, workers=workers, max_bad=1))
    with pytest.raises(TooManyBadImagesError, match="2 of 5 distinct training image files"):
        _take(loader, 12)
    assert loader.num_bad_images == 2


def test_test_loader_every_image_once_over_two_ranks(tiny_name, monkeypatch):
    seen = []
    for rank in range(2):
        monkeypatch.setattr(comm, "get_rank", lambda r=rank: r)
        monkeypatch.setattr(comm, "get_world_size", lambda: 2)
        for batch in build_detection_test_loader(_cfg(tiny_name), tiny_name):
            assert len(batch) == 1 and "instances" not in batch[0]
            assert min(batch[0]["image"].shape[1:]) == 64
            seen.append(batch[0]["image_id"])
    assert sorted(seen) == [101, 102, 103, 104, 105, 106]  # the empty image too


def test_test_loader_with_workers_and_bad_image(tiny_coco, tiny_name):
    records = get_detection_dataset_dicts(tiny_name, filter_empty=False)
    loader = make_test_loader(records, mapper=lambda r: r["image_id"], num_workers=2, rank=0, world_size=1)
    assert [b[0] for b in loader] == [101, 102, 103, 104, 105, 106]
    _corrupt(tiny_coco, 102)
    with pytest.raises(ImageReadError, match="000102.png"):
        list(build_detection_test_loader(_cfg(tiny_name, workers=2), tiny_name))


def test_dataset_dicts_on_bad_and_concatenation(tiny_coco, tiny_name):
    data = tiny_coco.data
    data["annotations"][0]["bbox"] = [1, 1, 0, 0]
    name = f"tiny_bad_{uuid.uuid4().hex[:8]}"
    register_coco_instances(name, tiny_coco.write(data), tiny_coco.image_root)
    try:
        with pytest.raises(ValueError, match="degenerate|zero or negative"):
            get_detection_dataset_dicts(name, on_bad="error")
        for on_bad in ("drop_degenerate", "skip"):  # the default drops a box without area
            kept = get_detection_dataset_dicts(name, on_bad=on_bad, filter_empty=False)
            assert sum(len(r["annotations"]) for r in kept) == 7
        data["annotations"][0]["category_id"] = 99  # structural: stops the default, skip drops it
        register_coco_instances(name + "_cat", tiny_coco.write(data, "cat.json"), tiny_coco.image_root)
        with pytest.raises(ValueError, match="category_id 99"):
            get_detection_dataset_dicts(name + "_cat")
        assert sum(len(r["annotations"]) for r in get_detection_dataset_dicts(
            name + "_cat", on_bad="skip", filter_empty=False)) == 7
        both = get_detection_dataset_dicts([tiny_name, name], on_bad="skip")
        assert len(both) == 10
    finally:
        for n in (name, name + "_cat"):
            DatasetCatalog.remove(n)
            MetadataCatalog.remove(n)


def test_datasets_with_different_classes_are_refused(tiny_coco, tiny_name):
    data = tiny_coco.data
    data["categories"][0]["name"] = "renamed"
    name = f"tiny_other_{uuid.uuid4().hex[:8]}"
    register_coco_instances(name, tiny_coco.write(data, "other.json"), tiny_coco.image_root)
    try:
        with pytest.raises(ValueError, match="disagree on their classes"):
            get_detection_dataset_dicts([tiny_name, name])
    finally:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


def test_custom_mapper_without_rng(tiny_name):
    loader = build_detection_train_loader(_cfg(tiny_name), mapper=lambda r: {"image_id": r["image_id"]})
    assert {b[0]["image_id"] for b in _take(loader, 10)} == {101, 102, 103, 105, 106}


def test_benchmark_loader_reports_throughput(tiny_name):
    from detgn.benchmark.loader import benchmark_loader

    result = benchmark_loader(_cfg(tiny_name, ims=2), 8, warmup_images=2, window=4)
    assert result["num_images"] >= 8 and result["ims_per_gpu"] == 2 and result["num_workers"] == 0
    assert result["images_per_s"] > 0 and result["mean_images_per_s"] > 0 and len(result["window_images_per_s"]) == 2


def test_loader_workers_leave_sigterm_to_the_main_process(tiny_name):
    """A scheduler signals every process of a job: a DataLoader worker killed by SIGTERM would fail
    the training process before it could save (tests/engine/test_torchrun_resilience.py runs it)."""
    from detgn.utils.stop import ignore_stop_signals

    train = build_detection_train_loader(_cfg(tiny_name, ims=1, workers=1))
    assert train._data_loader().worker_init_fn is ignore_stop_signals
    test = build_detection_test_loader(_cfg(tiny_name, workers=1), tiny_name)
    assert test.worker_init_fn is ignore_stop_signals
