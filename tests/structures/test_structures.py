"""Boxes, Instances, ImageList, masks: the contracts the rest of the code relies on."""
import pickle

import numpy as np
import pytest
import torch

from detgn.structures import BitMasks, Boxes, ImageList, Instances, PolygonMasks, pairwise_iou


def test_boxes_area_clip_nonempty():
    b = Boxes([[0, 0, 10, 10], [5, 5, 5, 8], [-5, -5, 30, 40]])
    assert b.area().tolist() == [100.0, 0.0, 35.0 * 45.0]  # no +1 widths
    assert b.nonempty().tolist() == [True, False, True]
    b.clip((20, 25))
    assert b.tensor[2].tolist() == [0, 0, 25, 20]
    assert len(Boxes(torch.zeros(0))) == 0


def test_pairwise_iou():
    a = Boxes([[0, 0, 10, 10]])
    b = Boxes([[0, 0, 10, 10], [5, 0, 15, 10], [20, 20, 30, 30]])
    assert torch.allclose(pairwise_iou(a, b), torch.tensor([[1.0, 50 / 150, 0.0]]))
    assert pairwise_iou(a, Boxes(torch.zeros(0, 4))).shape == (1, 0)


def test_instances_length_checked_and_indexing():
    inst = Instances((10, 20), gt_boxes=Boxes(torch.rand(3, 4)), gt_classes=torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="length"):
        inst.scores = torch.rand(2)
    assert inst[1].gt_classes.tolist() == [1]
    assert inst[-1].gt_classes.tolist() == [2]
    assert len(inst[inst.gt_classes > 0]) == 2
    with pytest.raises(AttributeError, match="no field 'pred_boxes'"):
        inst.pred_boxes
    both = Instances.cat([inst, inst[:1]])
    assert len(both) == 4 and both.image_size == (10, 20)


def test_instances_pickle_round_trip():
    # DataLoader workers send Instances between processes.
    inst = Instances((4, 5), gt_boxes=Boxes(torch.rand(2, 4)), gt_classes=torch.tensor([3, 4]))
    back = pickle.loads(pickle.dumps(inst))
    assert back.image_size == (4, 5) and back.gt_classes.tolist() == [3, 4]


def test_image_list_pads_to_divisibility():
    il = ImageList.from_tensors([torch.ones(3, 30, 40), torch.ones(3, 50, 20)], size_divisibility=32, pad_value=0)
    assert il.tensor.shape == (2, 3, 64, 64)
    assert il.image_sizes == [(30, 40), (50, 20)]
    assert il.tensor[0, :, 30:].abs().sum() == 0 and il[1].shape == (3, 50, 20)


def test_polygon_masks_crop_and_resize_and_flip():
    square = [[2.0, 2.0, 12.0, 2.0, 12.0, 12.0, 2.0, 12.0]]
    m = PolygonMasks([square])
    full = m.crop_and_resize(torch.tensor([[2.0, 2.0, 12.0, 12.0]]), 8)
    assert full.shape == (1, 8, 8) and full.mean() > 0.95
    half = m.crop_and_resize(torch.tensor([[7.0, 2.0, 17.0, 12.0]]), 8)
    assert abs(half.mean().item() - 0.5) < 0.1
    m.flip_(20)
    assert m.get_bounding_boxes().tolist() == [[8.0, 2.0, 18.0, 12.0]]
    with pytest.raises(ValueError, match=">= 3"):
        PolygonMasks([[[0, 0, 1, 1]]])


def test_bitmasks_match_polygons():
    poly = PolygonMasks([[[4.0, 4.0, 28.0, 4.0, 28.0, 20.0, 4.0, 20.0]]])
    bits = poly.to_bitmasks(32, 32)
    assert isinstance(bits, BitMasks) and bits.tensor.shape == (1, 32, 32)
    box = torch.tensor([[4.0, 4.0, 28.0, 20.0]])
    a, b = poly.crop_and_resize(box, 14), bits.crop_and_resize(box, 14)
    assert (a == b).float().mean() > 0.95
    assert np.allclose(bits.get_bounding_boxes().numpy(), [[4, 4, 28, 20]], atol=1)
