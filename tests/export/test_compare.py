"""match_detections: the equality the export is held to, as a pure function."""
import numpy as np
import torch

from detgn.export.compare import match_detections


def _dets():
    boxes = torch.tensor([[10.0, 10.0, 50.0, 40.0], [12.0, 11.0, 52.0, 41.0], [60.0, 5.0, 90.0, 35.0]])
    return boxes, torch.tensor([0.9, 0.9 - 1e-7, 0.4]), torch.tensor([1, 1, 2])


def test_near_tied_scores_may_swap_order():
    b, s, c = _dets()
    m = match_detections(b, s, c, b[[1, 0, 2]], s[[1, 0, 2]], c[[1, 0, 2]])
    assert m.ok and m.max_box_err == 0


def test_limits():
    b, s, c = _dets()
    assert match_detections(b, s, c, b + 0.009, s + 9e-5, c).ok
    assert not match_detections(b, s, c, b + 0.02, s, c).ok  # a box 0.02 px off
    assert not match_detections(b, s, c, b, s + 2e-4, c).ok  # a score 2e-4 off
    assert not match_detections(b, s, c, b, s, torch.tensor([1, 2, 2])).ok  # a label
    assert not match_detections(b, s, c, b[:2], s[:2], c[:2]).ok  # the count


def test_masks():
    b, s, c = _dets()
    masks = torch.zeros(3, 100, 100, dtype=torch.bool)
    masks[:, 10:40, 10:50] = True
    other = masks.clone()
    other[0, 10, 10:16] = False  # 6 of 1200 pixels: IoU 0.995
    m = match_detections(b, s, c, b, s, c, masks, other)
    assert m.ok and 0.99 < m.min_mask_iou < 1.0
    other[0, 10:20] = False  # IoU 0.67
    assert not match_detections(b, s, c, b, s, c, masks, other).ok
    probs = torch.rand(3, 28, 28, generator=torch.Generator().manual_seed(0))
    assert match_detections(b, s, c, b, s, c, probs, probs + 5e-4).ok  # within 1e-3
    assert not match_detections(b, s, c, b, s, c, probs, np.clip(probs.numpy() + 0.2, 0, 1)).ok
