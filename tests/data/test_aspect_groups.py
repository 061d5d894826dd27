"""Aspect-ratio groups of the training loader (DATALOADER.ASPECT_RATIO_BOUNDS)."""
import itertools

import pytest

from detgn.config import get_cfg
from detgn.data.build import aspect_ratio_groups, make_train_loader


def _records(sizes):
    return [{"file_name": f"im{i}.jpg", "image_id": i, "width": w, "height": h} for i, (w, h) in enumerate(sizes)]


def test_default_bounds_split_landscape_and_portrait_as_before():
    recs = _records([(640, 480), (480, 640), (500, 500), (499, 500), (1000, 300)])
    groups = aspect_ratio_groups(recs, get_cfg().DATALOADER.ASPECT_RATIO_BOUNDS)
    old = [0 if r["width"] >= r["height"] else 1 for r in recs]  # landscape (square included) vs portrait
    assert [g == groups[0] for g in groups] == [o == old[0] for o in old]


def test_finer_bounds_keep_each_batch_in_one_group():
    sizes = [(200 + 37 * (i % 17), 200 + 23 * (i % 13)) for i in range(120)]
    recs = _records(sizes)
    bounds = (0.6, 0.8, 1.0, 1.25, 1.6)
    groups = aspect_ratio_groups(recs, bounds)
    assert len(set(groups)) >= 4
    loader = make_train_loader(recs, mapper=lambda r: dict(r), batch_size=3, seed=3, rank=0, world_size=1,
                               aspect_ratio_bounds=bounds)
    seen = set()
    for batch in itertools.islice(iter(loader), 60):
        assert len({groups[d["image_id"]] for d in batch}) == 1
        seen.update(d["image_id"] for d in batch)
    assert len(seen) > 100  # every group is drawn from


@pytest.mark.parametrize("bounds", [(1.0, 0.8), (0.0, 1.0), (1.0, 1.0)])
def test_bad_bounds_are_refused(bounds):
    with pytest.raises(ValueError, match="ASPECT_RATIO_BOUNDS"):
        aspect_ratio_groups(_records([(10, 10)]), bounds)
