"""Assign each prediction (anchor or proposal) to a ground-truth box by IoU."""
from __future__ import annotations

from typing import List, Sequence, Tuple

import torch


class Matcher:
    """Match predictions to ground truth with IoU thresholds.

    For each prediction, its best ground-truth box (highest IoU) is its match; its
    label is chosen by which interval of ``thresholds`` that IoU falls into. With
    ``thresholds=[0.3, 0.7]`` and ``labels=[0, -1, 1]`` (the RPN): IoU < 0.3 is
    negative (0), 0.3 <= IoU < 0.7 ignored (-1), IoU >= 0.7 positive (1).

    ``allow_low_quality_matches`` (RPN) also marks positive, for every ground-truth
    box, the prediction(s) with the highest IoU with it (ties included), so a box
    that no anchor covers at 0.7 still gets an anchor. Such a prediction keeps its
    own best match as its matched box. Ground-truth boxes that overlap nothing
    (best IoU 0) add no low-quality match, otherwise every anchor would tie at 0.

    Args:
        thresholds: increasing IoU thresholds, e.g. [0.3, 0.7] or [0.5].
        labels: one label per interval (len(thresholds) + 1), each in {-1, 0, 1}.
        allow_low_quality_matches: see above.
    """

    def __init__(self, thresholds: Sequence[float], labels: Sequence[int], allow_low_quality_matches: bool = False):
        thresholds = [float(t) for t in thresholds]
        if any(a > b for a, b in zip(thresholds[:-1], thresholds[1:])):
            raise ValueError(f"Matcher thresholds must be increasing, got {thresholds}")
        if len(labels) != len(thresholds) + 1:
            raise ValueError(
                f"Matcher needs len(thresholds) + 1 labels, got thresholds={thresholds} labels={list(labels)}"
            )
        if any(lab not in (-1, 0, 1) for lab in labels):
            raise ValueError(f"Matcher labels must be -1, 0 or 1, got {list(labels)}")
        # Sentinels make every IoU fall in exactly one [low, high) interval.
        self.thresholds: List[float] = [-float("inf")] + thresholds + [float("inf")]
        self.labels = [int(lab) for lab in labels]
        self.allow_low_quality_matches = allow_low_quality_matches

    def __repr__(self) -> str:
        return (
            f"Matcher(thresholds={self.thresholds[1:-1]}, labels={self.labels}, "
            f"allow_low_quality_matches={self.allow_low_quality_matches})"
        )

    def __call__(self, match_quality_matrix: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Match the columns (predictions) of an IoU matrix to its rows (ground truth).

        Args:
            match_quality_matrix: (M, N) IoU of M ground-truth boxes with N predictions.
        Returns:
            matches: (N,) int64 index of the matched ground-truth box (0 when M == 0).
            match_labels: (N,) int8 label in {-1, 0, 1}.
        """
        assert match_quality_matrix.dim() == 2
        m, n = match_quality_matrix.shape
        device = match_quality_matrix.device
        if m == 0:
            # No ground truth: everything gets the label of the lowest interval.
            matches = torch.zeros(n, dtype=torch.int64, device=device)
            match_labels = torch.full((n,), self.labels[0], dtype=torch.int8, device=device)
            return matches, match_labels
        matched_vals, matches = match_quality_matrix.max(dim=0)
        match_labels = torch.empty(n, dtype=torch.int8, device=device)
        for label, low, high in zip(self.labels, self.thresholds[:-1], self.thresholds[1:]):
            in_interval = (matched_vals >= low) & (matched_vals < high)
            match_labels.masked_fill_(in_interval, label)  # not match_labels[mask] = ...: no host sync on CUDA
        if self.allow_low_quality_matches:
            self._set_low_quality_matches_(match_labels, match_quality_matrix)
        return matches, match_labels

    @staticmethod
    def _set_low_quality_matches_(match_labels: torch.Tensor, match_quality_matrix: torch.Tensor) -> None:
        best_per_gt, _ = match_quality_matrix.max(dim=1)
        is_best = (match_quality_matrix == best_per_gt[:, None]) & (best_per_gt[:, None] > 0)
        match_labels.masked_fill_(is_best.any(dim=0), 1)
