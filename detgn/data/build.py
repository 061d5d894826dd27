"""Data loaders: records -> (sampler, mapper, workers) -> batches of ``list[dict]``.

Training (:func:`build_detection_train_loader`) is an infinite, deterministic stream:
batch ``k`` of the stream depends only on ``(SEED, k, rank, world size, config)``.
Resuming with ``start_batch=k`` therefore yields exactly what the uninterrupted run
would have yielded from its ``k``-th batch on, with any number of workers (the trainer
passes iteration x ``SOLVER.GRAD_ACCUM_STEPS``). The DataLoader gets its own
``torch.Generator`` and augmentation draws from per-sample generators, so building
and iterating a loader never touches the global torch / numpy / random RNGs.

Unreadable images in training are reported once per file and skipped from then on
(:mod:`detgn.data.bad_images`); a resumed loader continues from the stream position
its :class:`BadImageTracker` recorded, so exact resume holds with bad images too.
"""
from __future__ import annotations

import bisect
import logging
import os
from typing import Any, Callable, Iterator, List, Optional, Sequence, Union

import torch
from torch.utils.data import DataLoader, Dataset

from detgn.utils import comm
from detgn.utils.stop import ignore_stop_signals

from .bad_images import BadImage, BadImageTracker, TooManyBadImagesError, SkipKnownBad
from .catalog import DatasetCatalog, MetadataCatalog
from .mapper import DatasetMapper, ImageReadError
from .samplers import InferenceSampler, TrainBatchSampler, sample_rng

logger = logging.getLogger(__name__)

__all__ = [
    "get_detection_dataset_dicts",
    "build_detection_train_loader",
    "build_detection_test_loader",
    "make_train_loader",
    "make_test_loader",
    "train_loader_from_config",
    "TrainLoader",
    "BadImage",
    "BadImageTracker",
    "TooManyBadImagesError",
    "trivial_batch_collator",
]


def trivial_batch_collator(batch: List[Any]) -> List[Any]:
    """Identity collate: a batch is the list of mapped dicts (the model pads)."""
    return batch


def _has_usable_annotation(record: dict) -> bool:
    return any(not a.get("iscrowd", 0) for a in record.get("annotations", []))


def get_detection_dataset_dicts(
    names: Union[str, Sequence[str]], *, filter_empty: bool = True, on_bad: str = "drop_degenerate"
) -> List[dict]:
    """Records of one or more registered datasets, concatenated.

    Args:
        names: dataset name(s) registered in ``DatasetCatalog``.
        filter_empty: drop images without a non-crowd annotation (logs how many).
        on_bad: passed to datasets registered as accepting it (``DatasetCatalog.register(...,
            accepts=("on_bad",))``, as COCO-format sets are): ``DATASETS.ON_BAD_ANNOTATION``,
            "drop_degenerate", "error" or "skip" (see :mod:`detgn.data.datasets.coco`).
    """
    if isinstance(names, str):
        names = [names]
    if len(names) == 0:
        raise ValueError("No dataset names given (DATASETS.TRAIN / DATASETS.TEST is empty)")
    records: List[dict] = []
    classes = {}
    for name in names:
        kwargs = {"on_bad": on_bad} if DatasetCatalog.accepts(name, "on_bad") else {}
        dicts = DatasetCatalog.get(name, **kwargs)
        if not dicts:
            raise ValueError(f"Dataset '{name}' has no images")
        records.extend(dicts)
        thing_classes = MetadataCatalog.get(name).get("thing_classes")
        if thing_classes is not None:
            classes[name] = list(thing_classes)
    if len(set(map(tuple, classes.values()))) > 1:
        listing = "; ".join(f"{n}: {c}" for n, c in classes.items())
        raise ValueError(f"Datasets {list(names)} disagree on their classes ({listing}); train on sets that share them")
    if filter_empty:
        before = len(records)
        records = [r for r in records if _has_usable_annotation(r)]
        logger.info(
            "Removed %d of %d images with no usable (non-crowd) annotation (DATALOADER.FILTER_EMPTY_ANNOTATIONS)",
            before - len(records), before,
        )
        if not records:
            raise ValueError(f"Datasets {list(names)}: no image has a usable annotation; nothing to train on")
    return records


class _TrainDataset(Dataset):
    """Maps ``(index, position, batch number)`` to ``(batch number, mapped dict or BadImage)``."""

    def __init__(self, records: List[dict], mapper: Callable, seed: int):
        self.records, self.mapper, self.seed = records, mapper, seed
        self.pass_rng = bool(getattr(mapper, "takes_rng", False))

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, key):
        index, position, number = key
        record = self.records[index]
        try:
            if self.pass_rng:
                return number, self.mapper(record, rng=sample_rng(self.seed, position))
            return number, self.mapper(record)
        except ImageReadError as e:
            # Raising here would kill the worker and the run; the main process decides.
            # Keyed by the record's file_name: that is what the sampler filter looks up.
            return number, BadImage(record.get("file_name") or e.file_name, record.get("image_id"), str(e))


class _TestDataset(Dataset):
    def __init__(self, records: List[dict], mapper: Callable):
        self.records, self.mapper = records, mapper

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int):
        return self.mapper(self.records[index])


def _seeded_generator(seed: int) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(seed)
    return g


def _train_collate(samples: List[Any]):
    """``[(number, item), ...]`` -> ``(number, [item, ...])`` (all samples of one sampler batch)."""
    return samples[0][0], [s[1] for s in samples]


class TrainLoader:
    """Infinite iterable of training batches (``list[dict]``), skipping unreadable files.

    ``bad_images`` is the :class:`BadImageTracker`; ``num_bad_images`` and ``bad_files``
    are its distinct unreadable files so far.
    """

    def __init__(
        self, dataset: _TrainDataset, batch_sampler: TrainBatchSampler, *, num_workers: int, seed: int,
        bad_images: BadImageTracker, start_batch: int = 0,
    ):
        self.dataset, self.batch_sampler = dataset, batch_sampler
        self.num_workers, self.seed = num_workers, seed
        self.bad_images = bad_images
        self.start_batch = start_batch  # the number of the first batch yielded (the sampler may start further on)

    @property
    def batch_size(self) -> int:
        return self.batch_sampler.batch_size

    @property
    def num_bad_images(self) -> int:
        return self.bad_images.num_bad_images

    @property
    def bad_files(self) -> List[str]:
        return self.bad_images.bad_files

    def _data_loader(self) -> DataLoader:
        # No worker_init_fn calling cv2.setNumThreads: in a forked worker it can deadlock
        # on the parent's OpenCV thread-pool state (observed); plain cv2 calls are safe.
        return DataLoader(
            self.dataset,
            batch_sampler=SkipKnownBad(self.batch_sampler, self.dataset.records, self.bad_images),
            num_workers=self.num_workers,
            collate_fn=_train_collate,
            generator=_seeded_generator(self.seed),
            worker_init_fn=ignore_stop_signals,  # SIGTERM is the main process's to handle
        )

    def __iter__(self) -> Iterator[List[dict]]:
        tracker, rank = self.bad_images, self.batch_sampler.rank
        world_size, batch_size = self.batch_sampler.world_size, self.batch_sampler.batch_size
        iteration = self.start_batch  # batches yielded so far: the tracker's "iteration"
        for number, items in self._data_loader():
            good = []
            for item in items:
                if isinstance(item, BadImage):
                    tracker.report(item, iteration, rank)
                else:
                    good.append(item)
            if good:
                iteration += 1
                # Before the yield: a checkpoint taken after this batch's step resumes here.
                tracker.note_position(iteration=iteration, position=number + 1, world_size=world_size,
                                      batch_size=batch_size)
                yield good


def make_train_loader(
    dataset_dicts: List[dict],
    *,
    mapper: Callable,
    batch_size: int,
    seed: int,
    num_workers: int = 0,
    aspect_ratio_grouping: bool = True,
    aspect_ratio_bounds: Sequence[float] = (1.0,),
    max_bad_images: int = 0,
    max_bad_images_fraction: float = 0.0,
    bad_images: Optional[BadImageTracker] = None,
    start_batch: int = 0,
    rank: Optional[int] = None,
    world_size: Optional[int] = None,
    validate_hint: Optional[str] = None,
) -> TrainLoader:
    """The training loader over given records (config-free; see the module docstring).

    Args:
        mapper: record -> model input dict. A mapper that draws random augmentations
            declares ``takes_rng = True`` (as :class:`DatasetMapper` does) and is called
            ``mapper(record, rng=generator)`` with a generator seeded by ``(seed, position
            in the sample stream)``, which makes batches reproducible and resume exact;
            any other callable is called ``mapper(record)``.
        batch_size: images per batch on this rank.
        seed: seed of the sample order and of every augmentation.
        aspect_ratio_grouping: batches of images of one aspect-ratio group.
        aspect_ratio_bounds: the groups' width/height bounds, ascending: ``(1.0,)`` makes
            the groups portrait (w/h < 1) and landscape (w/h >= 1).
        max_bad_images, max_bad_images_fraction: limits of a tracker made here (see
            :class:`BadImageTracker`); not used when ``bad_images`` is given.
        bad_images: the run's :class:`BadImageTracker` (its files are skipped, its saved
            loader position is used); None: a new one.
        start_batch: index (in the stream of batches this loader yields) of the first batch to yield.
        rank, world_size: default to ``detgn.utils.comm``.
        validate_hint: the ``tools/validate_dataset.py`` command the error suggests.
    """
    rank = comm.get_rank() if rank is None else rank
    world_size = comm.get_world_size() if world_size is None else world_size
    if bad_images is None:
        bad_images = BadImageTracker(max_bad_images=max_bad_images, max_fraction=max_bad_images_fraction)
    bad_images.attach([r.get("file_name") for r in dataset_dicts], world_size=world_size, validate_hint=validate_hint)
    group_ids = None
    if aspect_ratio_grouping and batch_size > 1:
        group_ids = aspect_ratio_groups(dataset_dicts, aspect_ratio_bounds)
    sampler_batch = bad_images.resume_batch(start_batch, rank=rank, world_size=world_size, batch_size=batch_size)
    batch_sampler = TrainBatchSampler(
        len(dataset_dicts), batch_size=batch_size, seed=seed, rank=rank, world_size=world_size,
        group_ids=group_ids, start_batch=sampler_batch,
    )
    dataset = _TrainDataset(dataset_dicts, mapper, seed)
    return TrainLoader(dataset, batch_sampler, num_workers=num_workers, seed=seed, bad_images=bad_images,
                       start_batch=start_batch)


def aspect_ratio_groups(dataset_dicts: Sequence[dict], bounds: Sequence[float]) -> List[int]:
    """The aspect-ratio group of each record: the number of ``bounds`` at or below its width/height."""
    bounds = [float(b) for b in bounds]
    if any(b <= 0 for b in bounds) or bounds != sorted(set(bounds)):
        raise ValueError(f"DATALOADER.ASPECT_RATIO_BOUNDS must be positive and ascending, got {tuple(bounds)}")
    return [bisect.bisect_right(bounds, r["width"] / r["height"]) for r in dataset_dicts]


def _resolve_seed(seed: int) -> int:
    if seed >= 0:
        return seed
    # Every rank must shard the same permutation: rank 0's draw wins.
    drawn = comm.all_gather(int.from_bytes(os.urandom(4), "little"))[0]
    logger.info("SEED < 0: the data loader uses seed %d", drawn)
    return drawn


def train_loader_from_config(cfg, records: List[dict], *, mapper: Callable, start_batch: int,
                             bad_images: Optional[BadImageTracker], aspect_ratio_grouping: bool,
                             aspect_ratio_bounds: Sequence[float] = (1.0,),
                             validate_hint: Optional[str]) -> TrainLoader:
    """:func:`make_train_loader` of ``records`` with the config's batch (``SOLVER.IMS_PER_GPU``), seed,
    workers and (when ``bad_images`` is None) a new tracker with the ``DATALOADER.MAX_BAD_IMAGES*`` limits."""
    return make_train_loader(
        records,
        mapper=mapper,
        batch_size=cfg.SOLVER.IMS_PER_GPU,
        seed=_resolve_seed(cfg.SEED),
        num_workers=cfg.DATALOADER.NUM_WORKERS,
        aspect_ratio_grouping=aspect_ratio_grouping,
        aspect_ratio_bounds=aspect_ratio_bounds,
        bad_images=bad_images if bad_images is not None else BadImageTracker.from_config(cfg),
        start_batch=start_batch,
        validate_hint=validate_hint,
    )


def _validate_hint(names: Sequence[str]) -> Optional[str]:
    commands = []
    for name in names:
        meta = MetadataCatalog.get(name)
        json_file, image_root = meta.get("json_file"), meta.get("image_root")
        if json_file and image_root:
            commands.append(f"python tools/validate_dataset.py --json {json_file} --images {image_root}")
    return " and ".join(f"`{c}`" for c in commands) or None


def build_detection_train_loader(
    cfg, *, mapper: Optional[Callable] = None, start_batch: int = 0, bad_images: Optional[BadImageTracker] = None
) -> TrainLoader:
    """Infinite loader of ``SOLVER.IMS_PER_GPU``-image batches of ``DATASETS.TRAIN`` for this rank,
    from batch ``start_batch`` of the stream on.

    ``bad_images``: the run's :class:`BadImageTracker` (``tools/train_net.py`` makes one and
    checkpoints it); None: a new one with the ``DATALOADER.MAX_BAD_IMAGES*`` limits.
    """
    records = get_detection_dataset_dicts(
        cfg.DATASETS.TRAIN, filter_empty=cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS, on_bad=cfg.DATASETS.ON_BAD_ANNOTATION
    )
    names = [cfg.DATASETS.TRAIN] if isinstance(cfg.DATASETS.TRAIN, str) else list(cfg.DATASETS.TRAIN)
    return train_loader_from_config(
        cfg, records, mapper=mapper if mapper is not None else DatasetMapper.from_config(cfg, True),
        start_batch=start_batch, bad_images=bad_images, aspect_ratio_grouping=cfg.DATALOADER.ASPECT_RATIO_GROUPING,
        aspect_ratio_bounds=cfg.DATALOADER.ASPECT_RATIO_BOUNDS,
        validate_hint=_validate_hint(names),
    )


def make_test_loader(
    dataset_dicts: List[dict],
    *,
    mapper: Callable,
    num_workers: int = 0,
    rank: Optional[int] = None,
    world_size: Optional[int] = None,
    batch_size: int = 1,
) -> DataLoader:
    """Batches of ``batch_size`` mapped images (1: detection), this rank's contiguous shard, in dataset order."""
    rank = comm.get_rank() if rank is None else rank
    world_size = comm.get_world_size() if world_size is None else world_size
    return DataLoader(
        _TestDataset(dataset_dicts, mapper),
        batch_size=batch_size,
        sampler=InferenceSampler(len(dataset_dicts), rank=rank, world_size=world_size),
        num_workers=num_workers,
        collate_fn=trivial_batch_collator,
        # Its own generator: a DataLoader without one draws its worker seed from the global RNG.
        generator=_seeded_generator(0),
        worker_init_fn=ignore_stop_signals,  # SIGTERM is the main process's to handle
    )


def build_detection_test_loader(cfg, dataset_name: str, *, mapper: Optional[Callable] = None) -> DataLoader:
    """Every image of ``dataset_name`` exactly once across ranks, batch of 1, test mapping."""
    records = get_detection_dataset_dicts(dataset_name, filter_empty=False, on_bad=cfg.DATASETS.ON_BAD_ANNOTATION)
    return make_test_loader(
        records,
        mapper=mapper if mapper is not None else DatasetMapper.from_config(cfg, False),
        num_workers=cfg.DATALOADER.NUM_WORKERS,
    )
