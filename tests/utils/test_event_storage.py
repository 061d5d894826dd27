"""EventStorage as the current storage of a run: recorded tensors are read lazily, NaN means no sample."""
import math

import pytest
import torch

from detgn.utils.events import EventStorage, get_event_storage


def test_current_storage_only_inside_with():
    assert get_event_storage() is None
    outer = EventStorage(0)
    with outer:
        assert get_event_storage() is outer
        with EventStorage(5) as inner:
            assert get_event_storage() is inner
        assert get_event_storage() is outer
    assert get_event_storage() is None


def test_tensors_are_kept_until_read():
    s = EventStorage(0)
    t = torch.tensor(3.0)
    s.put_scalar("x", t)
    assert isinstance(s._history["x"][0][1], torch.Tensor)  # not read yet: no sync
    s.iter = 1
    s.put_scalar("x", torch.tensor(5, dtype=torch.int64) / 2)
    s.put_scalar("y", 1, smooth=False)
    assert s.history("x") == [(0, 3.0), (1, 2.5)]
    assert all(isinstance(v, float) for _, v in s._history["x"])
    assert s.latest() == {"x": (2.5, 1), "y": (1.0, 1)}


def test_nan_is_no_sample_in_a_smoothed_window():
    s = EventStorage(0)
    for i, v in enumerate([0.5, float("nan"), 0.7, 0.9]):
        s.iter = i
        s.put_scalar("acc", torch.tensor(v))
        s.put_scalar("empty", torch.tensor(float("nan")))
    s.put_scalar("ap", float("nan"), smooth=False)  # an unsmoothed NaN (AP of an absent class) stays
    summary = s.summary_since(-1)
    assert summary["acc"] == pytest.approx(0.7) and "empty" not in summary and math.isnan(summary["ap"])
