"""Balanced sampling of positive and negative training examples (anchors or RoIs)."""
from __future__ import annotations

from typing import Optional, Tuple

import torch


def subsample_labels(
    labels: torch.Tensor,
    num_samples: int,
    positive_fraction: float,
    bg_label: int,
    generator: Optional[torch.Generator] = None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Pick at most ``num_samples`` examples, at most ``positive_fraction`` of them positive.

    Negatives fill whatever the positives leave, so an image with few positives
    still gets ``num_samples`` examples when it has enough negatives. The choice
    within each group is uniformly random (``torch.randperm``; pass ``generator``
    to control it, else the global torch RNG is used).

    Args:
        labels: (N,) int labels: -1 ignore, ``bg_label`` negative, anything else positive.
        num_samples: total examples to return.
        positive_fraction: the largest share of positives, in [0, 1].
        bg_label: the label value that marks a negative (0 for the RPN, K for RoIs).
    Returns:
        pos_idx, neg_idx: 1-D int64 indices into ``labels``.
    """
    if not 0.0 <= positive_fraction <= 1.0:
        raise ValueError(f"positive_fraction must be in [0, 1], got {positive_fraction}")
    positive = ((labels != -1) & (labels != bg_label)).nonzero().squeeze(1)
    negative = (labels == bg_label).nonzero().squeeze(1)

    num_pos = min(positive.numel(), int(num_samples * positive_fraction))
    num_neg = min(negative.numel(), num_samples - num_pos)

    perm_pos = torch.randperm(positive.numel(), generator=generator)[:num_pos].to(labels.device)
    perm_neg = torch.randperm(negative.numel(), generator=generator)[:num_neg].to(labels.device)
    return positive[perm_pos], negative[perm_neg]
