"""Which record each rank loads, in which order: seeded, sharded, resumable.

Training: one infinite GLOBAL stream of dataset indices, the concatenation of
seeded permutations (epoch ``e`` uses the permutation drawn from ``(seed, e)``).
Global position ``p`` is the p-th element of that stream; rank ``r`` of ``W`` takes
positions ``r, r + W, r + 2W, ...``, so in every epoch the ranks' shares are disjoint
and together cover the permutation. Samplers yield ``(index, position)``: the
augmentation of a sample is seeded from ``(seed, position)`` (:func:`sample_rng`),
which is what makes a resumed run see exactly the images and augmentations the
uninterrupted run would have seen, whatever the number of loader workers.

Inference: contiguous shards, every index exactly once over all ranks.
"""
from __future__ import annotations

from typing import Iterator, List, Optional, Sequence, Tuple

import numpy as np

__all__ = [
    "TrainingSampler",
    "InferenceSampler",
    "TrainBatchSampler",
    "epoch_permutation",
    "sample_rng",
]

# Separate SeedSequence streams for the permutations and for per-sample augmentation.
_PERMUTATION_STREAM = 0
_AUGMENTATION_STREAM = 1


def _check_seed(seed: int) -> int:
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    return int(seed)


def epoch_permutation(size: int, seed: int, epoch: int, shuffle: bool = True) -> np.ndarray:
    """The order of the dataset's ``size`` indices in ``epoch`` (int64 array)."""
    if not shuffle:
        return np.arange(size, dtype=np.int64)
    return np.random.default_rng([_check_seed(seed), _PERMUTATION_STREAM, epoch]).permutation(size)


def sample_rng(seed: int, position: int) -> np.random.Generator:
    """The augmentation generator of the sample at global stream ``position``."""
    return np.random.default_rng([_check_seed(seed), _AUGMENTATION_STREAM, int(position)])


class TrainingSampler:
    """Infinite ``(index, global position)`` stream of one rank.

    Args:
        size: number of records.
        shuffle: permute each epoch (False: 0..size-1 repeated).
        seed: seed of the permutations (same on every rank).
        rank, world_size: this rank takes global positions ``rank + i * world_size``.
        start: skip this rank's first ``start`` samples. Costs one permutation per
            epoch touched from there on, not O(start).
    """

    def __init__(
        self, size: int, *, shuffle: bool = True, seed: int, rank: int = 0, world_size: int = 1, start: int = 0
    ):
        if size <= 0:
            raise ValueError(f"TrainingSampler needs a non-empty dataset, got size {size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, world_size={world_size})")
        if start < 0:
            raise ValueError(f"start must be >= 0, got {start}")
        self.size, self.shuffle, self.seed = size, shuffle, _check_seed(seed)
        self.rank, self.world_size, self.start = rank, world_size, start

    def __iter__(self) -> Iterator[Tuple[int, int]]:
        size, step = self.size, self.world_size
        pos = self.rank + self.start * step
        epoch = pos // size
        while True:
            perm = epoch_permutation(size, self.seed, epoch, self.shuffle)
            end = (epoch + 1) * size
            positions = np.arange(pos, end, step, dtype=np.int64)
            for p, idx in zip(positions.tolist(), perm[positions - epoch * size].tolist()):
                yield idx, p
            if len(positions):
                pos = int(positions[-1]) + step
            epoch += 1


class InferenceSampler:
    """This rank's contiguous shard of ``range(size)``; shard sizes differ by at most 1."""

    def __init__(self, size: int, *, rank: int = 0, world_size: int = 1):
        if size < 0:
            raise ValueError(f"size must be >= 0, got {size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, world_size={world_size})")
        base, extra = divmod(size, world_size)
        self.begin = rank * base + min(rank, extra)
        self.end = self.begin + base + (1 if rank < extra else 0)

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.begin, self.end))

    def __len__(self) -> int:
        return self.end - self.begin


class TrainBatchSampler:
    """Infinite batches (lists of ``(index, position)``) for one rank, resumable by batch.

    Args:
        size, shuffle, seed, rank, world_size: as for :class:`TrainingSampler`.
        batch_size: samples per batch (images per GPU).
        group_ids: optional per-index group (e.g. 0 landscape, 1 portrait); a batch then
            holds ``batch_size`` samples of one group, taken in stream order.
        start_batch: skip this many batches (the trainer's start iteration). Without
            groups that is a jump of ``start_batch * batch_size`` samples; with groups the
            index stream is replayed (no image is read, about 1 us per sample) because
            each batch depends on what is left in the other group's bucket.
    """

    def __init__(
        self,
        size: int,
        *,
        batch_size: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        shuffle: bool = True,
        group_ids: Optional[Sequence[int]] = None,
        start_batch: int = 0,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if group_ids is not None and len(group_ids) != size:
            raise ValueError(f"group_ids has {len(group_ids)} entries for {size} records")
        self.size, self.batch_size, self.seed = size, batch_size, seed
        self.rank, self.world_size, self.shuffle = rank, world_size, shuffle
        self.group_ids = None if group_ids is None else [int(g) for g in group_ids]
        self.start_batch = start_batch
        TrainingSampler(size, shuffle=shuffle, seed=seed, rank=rank, world_size=world_size)  # checks args

    def _sampler(self, start: int) -> TrainingSampler:
        return TrainingSampler(
            self.size, shuffle=self.shuffle, seed=self.seed, rank=self.rank, world_size=self.world_size, start=start
        )

    def __iter__(self) -> Iterator[List[Tuple[int, int]]]:
        if self.group_ids is None or self.batch_size == 1:
            it = iter(self._sampler(self.start_batch * self.batch_size))
            while True:
                yield [next(it) for _ in range(self.batch_size)]
        batches = self._grouped(iter(self._sampler(0)))
        for _ in range(self.start_batch):
            next(batches)
        yield from batches

    def _grouped(self, it: Iterator[Tuple[int, int]]) -> Iterator[List[Tuple[int, int]]]:
        buckets = {}
        for item in it:
            bucket = buckets.setdefault(self.group_ids[item[0]], [])
            bucket.append(item)
            if len(bucket) == self.batch_size:
                yield list(bucket)
                bucket.clear()
