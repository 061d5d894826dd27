"""paste_masks_in_image: agrees with a full-image grid_sample, and never holds an
image-sized float tensor per detection."""
import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from detgn.layers.mask_ops import paste_masks_in_image


def _reference_paste(masks, boxes, h, w, threshold):
    """The straightforward way: sample every image pixel of every mask."""
    out = []
    ys, xs = torch.meshgrid(torch.arange(h) + 0.5, torch.arange(w) + 0.5, indexing="ij")
    for m, b in zip(masks, boxes):
        gx = (xs - b[0]) / (b[2] - b[0]) * 2 - 1
        gy = (ys - b[1]) / (b[3] - b[1]) * 2 - 1
        grid = torch.stack([gx, gy], dim=-1)[None]
        v = F.grid_sample(m[None, None], grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        out.append(v[0, 0] >= threshold)
    return torch.stack(out)


def _random_case(n, h, w, m, seed):
    g = torch.Generator().manual_seed(seed)
    masks = torch.rand(n, m, m, generator=g)
    masks = F.avg_pool2d(masks[:, None], 5, 1, 2)[:, 0]  # smooth blobs, like real masks
    masks = (masks - masks.amin((1, 2), keepdim=True)) / (masks.amax((1, 2), keepdim=True) - masks.amin((1, 2), keepdim=True))
    x1 = torch.rand(n, generator=g) * w * 1.1 - 0.1 * w  # some boxes cross the border
    y1 = torch.rand(n, generator=g) * h * 1.1 - 0.1 * h
    bw = torch.rand(n, generator=g) * w * 0.6 + 0.5
    bh = torch.rand(n, generator=g) * h * 0.6 + 0.5
    return masks, torch.stack([x1, y1, x1 + bw, y1 + bh], 1)


@pytest.mark.parametrize("threshold", [0.5, 0.3])
def test_paste_matches_full_image_reference(threshold):
    masks, boxes = _random_case(12, 70, 90, 28, seed=0)
    ours = paste_masks_in_image(masks, boxes, (70, 90), threshold=threshold)
    ref = _reference_paste(masks, boxes, 70, 90, threshold)
    assert ours.dtype == torch.bool and ours.shape == (12, 70, 90)
    inter = (ours & ref).sum().item()
    union = (ours | ref).sum().item()
    assert union > 0 and inter / union >= 0.98
    assert (ours != ref).sum().item() <= 2  # the same sampling: at most float rounding at 0.5


def test_paste_edge_cases():
    masks = torch.ones(3, 1, 14, 14)  # (N, 1, M, M) is accepted too
    boxes = torch.tensor([[2.0, 3.0, 7.0, 9.0], [50.0, 50.0, 60.0, 60.0], [4.0, 4.0, 4.0, 4.0]])
    out = paste_masks_in_image(masks, boxes, (20, 30))
    assert out[0].sum().item() == 5 * 6 and out[0, 3:9, 2:7].all()
    assert out[1].sum() == 0 and out[2].sum() == 0  # outside the image / degenerate box
    assert paste_masks_in_image(torch.zeros(0, 28, 28), torch.zeros(0, 4), (20, 30)).shape == (0, 20, 30)
    with pytest.raises(ValueError, match="threshold"):
        paste_masks_in_image(masks, boxes, (20, 30), threshold=0.0)


class _LargestTensor(TorchDispatchMode):
    """Records the storage size of every tensor any op produces."""

    def __init__(self):
        super().__init__()
        self.storages = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                s = t.untyped_storage()
                self.storages[s.data_ptr()] = max(self.storages.get(s.data_ptr(), 0), s.nbytes())
        return out


def test_paste_100_masks_4000px_memory():
    n, size = 100, 4000
    g = torch.Generator().manual_seed(0)
    masks = torch.rand(n, 28, 28, generator=g)
    xy = torch.rand(n, 2, generator=g) * 3000
    wh = torch.rand(n, 2, generator=g) * 900 + 100
    boxes = torch.cat([xy, xy + wh], 1)
    mode = _LargestTensor()
    with mode:
        out = paste_masks_in_image(masks, boxes, (size, size))
    out_bytes = out.untyped_storage().nbytes()
    assert out.shape == (n, size, size) and out.dtype == torch.bool
    assert out_bytes == n * size * size  # the result itself: 1 byte per pixel
    temporaries = [b for ptr, b in mode.storages.items() if ptr != out.untyped_storage().data_ptr()]
    largest = max(temporaries)
    naive = n * size * size * 4  # one float image per detection
    # Each temporary is about one box's window (<= ~1000 x 1000 floats x a few), never image-sized.
    assert largest < size * size * 4 / 2, largest
    assert out_bytes + largest < naive / 3
    print(f"\npaste 100 masks into 4000x4000: result {out_bytes / 2**20:.0f} MiB, largest temporary "
          f"{largest / 2**20:.1f} MiB, naive float per detection {naive / 2**20:.0f} MiB")
    # Spot check: each pasted mask lies inside its box (padded by half a mask cell).
    for i in range(0, n, 17):
        ys, xs = torch.nonzero(out[i], as_tuple=True)
        if len(xs):
            b = boxes[i]
            assert xs.min() >= b[0] - (b[2] - b[0]) / 28 - 1 and xs.max() <= b[2] + (b[2] - b[0]) / 28
