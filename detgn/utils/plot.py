"""The end-of-training picture: losses and AP over iterations (``training_curves.png``).

Drawn from ``metrics.json`` (so a resumed run shows its whole history) with
matplotlib's Agg canvas used directly: no pyplot, no global backend switch, no
display needed.
"""
from __future__ import annotations

import os
from collections import defaultdict
from typing import Dict, List, Sequence, Tuple

from .events import read_metrics
from .file_io import atomic_write

__all__ = ["plot_training_curves", "curve_series"]

Series = Dict[str, List[Tuple[int, float]]]


def curve_series(records: Sequence[dict]) -> Tuple[Series, Series]:
    """Split metrics records into loss series and AP series.

    Losses are keys starting with ``loss`` plus ``total_loss``; AP series are keys whose
    last ``/`` part is ``AP`` (``bbox/AP``, ``segm/AP``, ``coco_2017_val/bbox/AP``). A later
    record for the same iteration replaces an earlier one.

    Returns:
        ``(losses, aps)``, each ``{name: [(iteration, value), ...]}`` sorted by iteration.
    """
    by_iter: Dict[str, Dict[int, float]] = defaultdict(dict)
    for r in records:
        it = r.get("iteration")
        if it is None:
            continue
        for k, v in r.items():
            if isinstance(v, (int, float)) and k != "iteration":
                by_iter[k][int(it)] = float(v)
    losses, aps = {}, {}
    for k, d in by_iter.items():
        pts = sorted(d.items())
        if k.startswith("loss") or k == "total_loss":
            losses[k] = pts
        elif k.split("/")[-1] == "AP":
            aps[k] = pts
    return losses, aps


def plot_training_curves(metrics_path: str, out_path: str, *, title: str = "") -> str:
    """Draw losses (left, log scale) and AP (right) over iterations into ``out_path`` (PNG).

    Args:
        metrics_path: a ``metrics.json`` written by :class:`detgn.utils.events.JSONWriter`.
        out_path: the PNG to write (replaced atomically).
        title: figure title (e.g. the config name).

    Returns:
        ``out_path``.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    records = read_metrics(metrics_path) if os.path.exists(metrics_path) else []
    losses, aps = curve_series(records)
    fig = Figure(figsize=(12, 4.5), dpi=100)
    FigureCanvasAgg(fig)
    ax_loss, ax_ap = fig.subplots(1, 2)
    for name in sorted(losses, key=lambda n: (n == "total_loss", n)):
        its, vals = zip(*losses[name])
        ax_loss.plot(its, vals, label=name, linewidth=2.0 if name == "total_loss" else 1.0)
    ax_loss.set_xlabel("iteration")
    ax_loss.set_ylabel("loss")
    ax_loss.set_title("training losses")
    if losses and all(v > 0 for pts in losses.values() for _, v in pts):
        ax_loss.set_yscale("log")
    if losses:
        ax_loss.legend(fontsize=8)
    else:
        ax_loss.text(0.5, 0.5, "no losses recorded", ha="center", va="center", transform=ax_loss.transAxes)
    for name in sorted(aps):
        its, vals = zip(*aps[name])
        ax_ap.plot(its, vals, marker="o", label=name)
    ax_ap.set_xlabel("iteration")
    ax_ap.set_ylabel("AP (%)")
    ax_ap.set_title("evaluation")
    if aps:
        ax_ap.legend(fontsize=8)
    else:
        ax_ap.text(0.5, 0.5, "no evaluation yet", ha="center", va="center", transform=ax_ap.transAxes)
    for ax in (ax_loss, ax_ap):
        ax.grid(True, alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    atomic_write(out_path, lambda f: fig.savefig(f, format="png"))
    return out_path
