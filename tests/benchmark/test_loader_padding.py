"""The loader benchmark's padding figure (pixels computed on / the images' pixels)."""
import torch

from detgn.benchmark.loader import batch_pixels


def test_batch_pixels_pads_to_the_largest_image_rounded_up():
    batch = [{"image": torch.zeros(3, 300, 400)}, {"image": torch.zeros(3, 250, 410)}]
    padded, pixels = batch_pixels(batch, 32)
    assert padded == 2 * 320 * 416
    assert pixels == 300 * 400 + 250 * 410
    assert batch_pixels(batch[:1], 1) == (300 * 400, 300 * 400)
