"""match_detections: the equality the export is held to, as a pure function."""
import numpy as np
import torch

from detgn.export.compare import DecisionRules, match_detections


def _dets():
    boxes = torch.tensor([[10.0, 10.0, 50.0, 40.0], [12.0, 11.0, 52.0, 41.0], [60.0, 5.0, 90.0, 35.0]])
    return boxes, torch.tensor([0.9, 0.9 - 1e-7, 0.4]), torch.tensor([1, 1, 2])


def test_near_tied_scores_may_swap_order():
    b, s, c = _dets()
    m = match_detections(b, s, c, b[[1, 0, 2]], s[[1, 0, 2]], c[[1, 0, 2]])
    assert m.ok and m.max_box_err == 0


def test_limits():
    b, s, c = _dets()
    assert match_detections(b, s, c, b + 0.009, s + 1.5e-5, c).ok
    assert not match_detections(b, s, c, b + 0.02, s, c).ok  # a box 0.02 px off
    assert not match_detections(b, s, c, b, s + 4e-5, c).ok  # a score 4e-5 off
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


RULES = DecisionRules(score_thresh=0.05, nms_thresh=0.5, topk=3)


def test_box_tolerance_grows_with_the_box():
    """A float32 network's box error is relative: a 1000 px box may move 0.02 px, a 40 px one not."""
    big = torch.tensor([[0.0, 0.0, 1000.0, 800.0]])
    s, c = torch.tensor([0.9]), torch.tensor([1])
    assert match_detections(big, s, c, big + 0.025, s, c).ok
    assert not match_detections(big, s, c, big + 0.05, s, c).ok
    b, s3, c3 = _dets()
    assert not match_detections(b, s3, c3, b + 0.015, s3, c3).ok


def test_nms_near_tie_may_keep_either_box():
    """Two overlapping boxes of one class whose scores tie within precision: each backend may keep the
    other one. The swap is explained; the same swap with a clear score gap is not."""
    boxes = torch.tensor([[10.0, 10.0, 50.0, 40.0], [60.0, 5.0, 90.0, 35.0]])
    swapped = torch.tensor([[12.0, 11.0, 52.0, 41.0], [60.0, 5.0, 90.0, 35.0]])  # IoU 0.83 with box 0
    c = torch.tensor([1, 2])
    m = match_detections(boxes, torch.tensor([0.9, 0.4]), c, swapped, torch.tensor([0.9 - 1e-5, 0.4]), c, rules=RULES)
    assert m.ok and m.explained == {"NMS": 2}, m.summary()
    m = match_detections(boxes, torch.tensor([0.9, 0.4]), c, swapped, torch.tensor([0.8, 0.4]), c, rules=RULES)
    assert not m.ok
    # Without the model's rules nothing is explained.
    assert not match_detections(boxes, torch.tensor([0.9, 0.4]), c, swapped, torch.tensor([0.9, 0.4]), c).ok


def test_suppression_chain_follows_a_near_tie():
    """After a near-tie swap, the kept box suppresses a third, lower box that the other side keeps."""
    a = [10.0, 10.0, 50.0, 40.0]
    b = [14.0, 10.0, 54.0, 40.0]  # IoU(a, b) 0.82: a near-tie swap
    z = [26.0, 10.0, 66.0, 40.0]  # IoU(a, z) 0.43, IoU(b, z) 0.54: suppressed by b only
    ref = torch.tensor([a, z]), torch.tensor([0.9, 0.6]), torch.tensor([1, 1])
    other = torch.tensor([b]), torch.tensor([0.9 + 1e-5]), torch.tensor([1])
    m = match_detections(*ref, *other, rules=RULES)
    assert m.ok and m.explained == {"NMS": 3}, m.summary()
    lone = torch.tensor([a, [200.0, 200.0, 240.0, 230.0]]), torch.tensor([0.9, 0.6]), torch.tensor([1, 1])
    assert not match_detections(*lone, *other, rules=RULES).ok  # a far box lost: no reason


def test_score_threshold_and_top_k_cut():
    b, s, c = _dets()
    low = torch.tensor([0.9, 0.9 - 1e-7, 0.05 + 1e-5])  # the third at the threshold, within precision
    assert match_detections(b, low, c, b[:2], low[:2], c[:2], rules=RULES).ok
    assert not match_detections(b, s, c, b[:2], s[:2], c[:2], rules=RULES).ok  # 0.4 is far above 0.05
    # At the cap of 3 detections, the third may be cut for a fourth within precision of its score.
    other = torch.cat([b[:2], torch.tensor([[100.0, 100.0, 120.0, 130.0]])])
    m = match_detections(b, s, c, other, torch.tensor([0.9, 0.9 - 1e-7, 0.4 + 1e-5]), torch.tensor([1, 1, 3]),
                         rules=RULES)
    assert m.ok and m.explained == {"top-k cut": 2}, m.summary()


def test_small_masks_may_differ_by_a_few_cells_of_their_grid():
    """A 28 x 28 probability within precision of 0.5 flips the pixels its interpolation reaches:
    up to 4 cells (here a 40 x 30 box: 1.5 px a cell). More is an error, however small the mask."""
    b, s, c = _dets()
    masks = torch.zeros(3, 30, 30, dtype=torch.bool)
    masks[:, 10:16, 10:16] = True  # 36 pixels: one flipped pixel is IoU 0.97
    other = masks.clone()
    other[0, 10, 12] = False  # a boundary pixel
    other[0, 12, 12] = False  # a lone interior pixel
    other[0, 25, 25] = True  # a lone pixel outside
    m = match_detections(b, s, c, b, s, c, masks, other)
    assert m.ok and m.min_mask_iou < 0.99
    hole = masks.clone()
    hole[0, 11:14, 11:14] = False  # 9 pixels: 6 cells
    assert not match_detections(b, s, c, b, s, c, masks, hole).ok
    shifted = masks.clone()
    shifted[0] = torch.roll(masks[0], 1, dims=1)  # a whole pixel off: 12 pixels
    assert not match_detections(b, s, c, b, s, c, masks, shifted).ok
    coarse = DecisionRules(mask_size=7)  # a coarser grid: a cell is 24 px, the shift is within one
    assert match_detections(b, s, c, b, s, c, masks, shifted, rules=coarse).ok


def test_an_integer_paste_window_may_fall_either_way():
    """Detectron's paste truncates the widened box to integers: boxes 0.002 px apart across an
    integer give masks a pixel apart, explained only for that paste and only across the integer."""
    s, c = torch.tensor([0.9]), torch.tensor([1])
    box, moved = torch.tensor([[10.0, 10.0, 38.0, 38.0]]), torch.tensor([[9.999, 10.0, 37.999, 38.0]])
    masks = torch.zeros(1, 50, 50, dtype=torch.bool)
    masks[0, 12:36, 12:36] = True
    shifted = torch.roll(masks, -1, dims=2)  # the window one pixel to the left: 48 pixels differ
    detectron = DecisionRules(mask_paste="detectron")
    m = match_detections(box, s, c, moved, s, c, masks, shifted, rules=detectron)
    assert m.ok and m.explained == {"paste window": 1}, m.summary()
    assert not match_detections(box, s, c, moved, s, c, masks, shifted, rules=DecisionRules()).ok
    same_window = torch.tensor([[10.001, 10.0, 38.001, 38.0]])
    assert not match_detections(box, s, c, same_window, s, c, masks, shifted, rules=detectron).ok
