"""Detectron's and torchvision's mask paste (MODEL.ROI_MASK_HEAD.PASTE_METHOD), each against a
reference computed independently: Detectron's algorithm written out here with numpy and
cv2.resize (its core/test.py segm_results), and torchvision's own paste_masks_in_image."""
import cv2
import numpy as np
import pytest
import torch
from torchvision.models.detection.roi_heads import paste_masks_in_image as tv_paste

from detgn.layers.mask_ops import paste_masks_in_image

M = 28


def _cases(seed=0, n=40, h=120, w=160):
    g = torch.Generator().manual_seed(seed)
    # Smooth masks (upsampled noise) so that many pixels are far from the threshold and the
    # shapes are blob-like, as trained masks are.
    masks = torch.sigmoid(4 * torch.nn.functional.interpolate(torch.randn(n, 1, 7, 7, generator=g), size=(M, M),
                                                              mode="bilinear", align_corners=False))[:, 0]
    xy = torch.rand(n, 2, generator=g) * torch.tensor([w + 20.0, h + 20.0]) - 20  # some cross the border
    wh = 0.5 + torch.rand(n, 2, generator=g) ** 2 * torch.tensor([w * 0.8, h * 0.8])  # tiny to large
    boxes = torch.cat([xy, xy + wh], 1)
    return masks.double(), boxes.double(), (h, w)


def _detectron_reference(masks, boxes, image_shape, thresh=0.5):
    """Detectron's segm_results for one class-specific mask per box, in numpy + cv2."""
    h_img, w_img = image_shape
    scale = (M + 2.0) / M
    b = boxes.numpy()
    w_half, h_half = (b[:, 2] - b[:, 0]) * 0.5 * scale, (b[:, 3] - b[:, 1]) * 0.5 * scale
    x_c, y_c = (b[:, 2] + b[:, 0]) * 0.5, (b[:, 3] + b[:, 1]) * 0.5
    ref_boxes = np.stack([x_c - w_half, y_c - h_half, x_c + w_half, y_c + h_half], 1).astype(np.int32)
    out = np.zeros((len(b), h_img, w_img), dtype=bool)
    padded = np.zeros((M + 2, M + 2), dtype=np.float32)
    for i in range(len(b)):
        padded[1:-1, 1:-1] = masks[i].numpy()
        x0, y0, x1, y1 = ref_boxes[i]
        w, h = max(x1 - x0 + 1, 1), max(y1 - y0 + 1, 1)
        mask = cv2.resize(padded, (int(w), int(h))) > thresh
        ix0, ix1 = max(x0, 0), min(x1 + 1, w_img)
        iy0, iy1 = max(y0, 0), min(y1 + 1, h_img)
        if ix1 > ix0 and iy1 > iy0:
            out[i, iy0:iy1, ix0:ix1] = mask[iy0 - y0:iy1 - y0, ix0 - x0:ix1 - x0]
    return torch.from_numpy(out)


def _iou(a, b):
    inter = (a & b).flatten(1).sum(1).double()
    union = (a | b).flatten(1).sum(1).double()
    return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))


@pytest.mark.parametrize("seed", [0, 1])
def test_detectron_paste_matches_cv2_reference(seed):
    masks, boxes, shape = _cases(seed)
    ours = paste_masks_in_image(masks, boxes, shape, method="detectron")
    ref = _detectron_reference(masks, boxes, shape)
    # cv2.resize works in float32 with its own rounding: a pixel within ~1e-6 of 0.5 may flip.
    assert (ours != ref).sum() <= 2, int((ours != ref).sum())
    assert _iou(ours, ref).min() >= 0.99


@pytest.mark.parametrize("seed", [0, 1])
def test_torchvision_paste_matches_torchvision(seed):
    masks, boxes, shape = _cases(seed)
    # Detections are clipped to the image before the paste (torchvision's own paste fails on
    # boxes far outside it).
    boxes[:, 0::2] = boxes[:, 0::2].clamp(0, shape[1])
    boxes[:, 1::2] = boxes[:, 1::2].clamp(0, shape[0])
    ours = paste_masks_in_image(masks, boxes, shape, method="torchvision")
    ref = tv_paste(masks[:, None], boxes, shape)[:, 0] > 0.5
    assert torch.equal(ours, ref), int((ours != ref).sum())


def test_the_pastes_differ_from_grid_sample_as_documented():
    """The peers' paste covers about one pixel more around the box than the grid-sample one."""
    masks, boxes, shape = _cases(2)
    legacy = paste_masks_in_image(masks, boxes, shape, method="detectron").flatten(1).sum(1)
    grid = paste_masks_in_image(masks, boxes, shape, method="grid_sample").flatten(1).sum(1)
    assert (legacy >= grid).float().mean() > 0.7 and legacy.sum() > grid.sum()


def test_unknown_method_is_refused():
    masks, boxes, shape = _cases(0, n=2)
    with pytest.raises(ValueError, match="paste method"):
        paste_masks_in_image(masks, boxes, shape, method="caffe")
