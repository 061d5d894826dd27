"""Samplers: rank shards, epoch coverage, cheap resume, inference coverage, grouping."""
import itertools

import numpy as np
import pytest

from detgn.data import InferenceSampler, TrainingSampler
from detgn.data.samplers import TrainBatchSampler, epoch_permutation, sample_rng


def _take(it, n):
    return list(itertools.islice(iter(it), n))


@pytest.mark.parametrize("size", [7, 10])
def test_two_ranks_disjoint_and_cover_each_epoch(size):
    epochs = 3
    per_rank = size * epochs // 2 + 1
    streams = [_take(TrainingSampler(size, seed=5, rank=r, world_size=2), per_rank) for r in range(2)]
    by_pos = {}
    for r, stream in enumerate(streams):
        positions = [p for _, p in stream]
        assert positions == list(range(r, r + 2 * per_rank, 2))  # rank r takes r, r+W, ...
        by_pos.update({p: i for i, p in stream})
    # Ranks are disjoint by position; together each epoch is exactly its permutation.
    for e in range(epochs):
        got = [by_pos[p] for p in range(e * size, (e + 1) * size)]
        assert got == epoch_permutation(size, 5, e).tolist()
        assert sorted(got) == list(range(size))
    assert epoch_permutation(size, 5, 0).tolist() != epoch_permutation(size, 5, 1).tolist()


def test_seed_changes_order_and_shuffle_off():
    a = [i for i, _ in _take(TrainingSampler(50, seed=1), 50)]
    b = [i for i, _ in _take(TrainingSampler(50, seed=2), 50)]
    assert a != b and sorted(a) == sorted(b) == list(range(50))
    c = [i for i, _ in _take(TrainingSampler(5, shuffle=False, seed=0), 12)]
    assert c == [0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 0, 1]


@pytest.mark.parametrize("world_size,rank", [(1, 0), (2, 1), (3, 2)])
def test_start_equals_advancing(world_size, rank):
    full = _take(TrainingSampler(9, seed=3, rank=rank, world_size=world_size), 60)
    for start in (0, 1, 4, 9, 25, 37):
        resumed = _take(TrainingSampler(9, seed=3, rank=rank, world_size=world_size, start=start), 60 - start)
        assert resumed == full[start:]


def test_start_is_cheap():
    # 10^9 samples into a 1000-image set: computes one permutation, not 10^9 steps.
    it = iter(TrainingSampler(1000, seed=0, rank=1, world_size=8, start=10**9))
    index, position = next(it)
    assert position == 1 + 8 * 10**9
    assert index == epoch_permutation(1000, 0, position // 1000)[position % 1000]


def test_size_smaller_than_world():
    streams = [_take(TrainingSampler(1, seed=0, rank=r, world_size=3), 4) for r in range(3)]
    assert all(i == 0 for s in streams for i, _ in s)
    assert sorted(p for s in streams for _, p in s) == list(range(12))


@pytest.mark.parametrize("size", [0, 1, 2, 7, 8, 11])
@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_inference_sampler_every_index_once(size, world_size):
    shards = [list(InferenceSampler(size, rank=r, world_size=world_size)) for r in range(world_size)]
    assert [i for s in shards for i in s] == list(range(size))  # contiguous, in order
    lengths = [len(s) for s in shards]
    assert max(lengths) - min(lengths) <= 1
    assert lengths == [len(InferenceSampler(size, rank=r, world_size=world_size)) for r in range(world_size)]


def test_bad_arguments():
    with pytest.raises(ValueError, match="non-empty"):
        TrainingSampler(0, seed=0)
    with pytest.raises(ValueError, match="rank 2"):
        TrainingSampler(5, seed=0, rank=2, world_size=2)
    with pytest.raises(ValueError, match="seed"):
        TrainingSampler(5, seed=-1)


def test_sample_rng_depends_on_position_only():
    a = sample_rng(7, 123).random(3)
    assert np.array_equal(a, sample_rng(7, 123).random(3))
    assert not np.array_equal(a, sample_rng(7, 124).random(3))
    assert not np.array_equal(a, sample_rng(8, 123).random(3))


def test_batches_without_grouping_resume():
    full = _take(TrainBatchSampler(10, batch_size=3, seed=0, rank=1, world_size=2), 20)
    assert all(len(b) == 3 for b in full)
    flat = [x for b in full for x in b]
    assert flat == _take(TrainingSampler(10, seed=0, rank=1, world_size=2), 60)
    assert _take(TrainBatchSampler(10, batch_size=3, seed=0, rank=1, world_size=2, start_batch=7), 13) == full[7:]


def test_aspect_ratio_grouping_homogeneous_and_resumable():
    groups = [0, 1, 1, 0, 0, 1, 0, 1, 1, 0, 0]  # 0 landscape, 1 portrait
    sampler = TrainBatchSampler(len(groups), batch_size=2, seed=4, group_ids=groups, rank=0, world_size=2)
    full = _take(sampler, 40)
    for batch in full:
        assert len(batch) == 2 and len({groups[i] for i, _ in batch}) == 1
    positions = [p for b in full for _, p in b]
    assert len(set(positions)) == len(positions) and all(p % 2 == 0 for p in positions)
    # Both groups appear, and nothing is lost: positions are a prefix of the rank's stream
    # except for what is still waiting in a bucket.
    assert {groups[b[0][0]] for b in full} == {0, 1}
    assert max(positions) - len(positions) * 2 < 2 * 2 * 2
    for k in (1, 5, 17):
        resumed = TrainBatchSampler(
            len(groups), batch_size=2, seed=4, group_ids=groups, rank=0, world_size=2, start_batch=k
        )
        assert _take(resumed, 40 - k) == full[k:]
