"""Pictures of the normalization study (:mod:`detgn.study.norm_study`).

- :func:`plot_norm_study`: the GN paper's Figure 1 / 5: validation error (or AP) against
  images per process, one line per norm, medians over seeds with their min-max as a band;
- :func:`plot_activation_gaps`: EvalNorm's Figure 1 as numbers: for a BN model trained at a
  small batch, the per-layer distance between the training-mode normalisation and the
  evaluation one (running averages vs EvalNorm), and one channel's histograms.
"""
from __future__ import annotations

from typing import Dict

from detgn.utils.file_io import atomic_write

__all__ = ["plot_norm_study", "plot_activation_gaps"]

# One colour and marker per row, stable across figures.
_STYLE = {
    "BN": ("tab:blue", "o", "-"),
    "BN+EvalNorm": ("tab:cyan", "v", "--"),
    "BN+EvalNorm 1/B^2": ("tab:purple", "<", ":"),
    "BN+PreciseBN": ("tab:gray", "s", "-."),
    "GN": ("tab:red", "D", "-"),
    "LN": ("tab:green", "^", "-"),
    "IN": ("tab:orange", ">", "-"),
    "SyncBN": ("tab:brown", "x", "-"),
}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save_and_close(fig, path: str) -> str:
    import io

    try:
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=130, bbox_inches="tight")
        atomic_write(path, lambda f: f.write(buf.getvalue()))
        return path
    finally:
        _pyplot().close(fig)


def plot_norm_study(summary: Dict, path: str, *, title: str = "") -> str:
    """Error (or AP) vs images per process, one line per norm; returns ``path``."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 5.0))
    batches = summary["batches"]
    for variant, cells in summary["rows"].items():
        xs = [b for b in batches if b in cells]
        if not xs:
            continue
        colour, marker, line = _STYLE.get(variant, (None, "o", "-"))
        med = [cells[b]["median"] for b in xs]
        lo = [cells[b]["min"] for b in xs]
        hi = [cells[b]["max"] for b in xs]
        ax.plot(xs, med, line, marker=marker, color=colour, label=variant, linewidth=1.8)
        ax.fill_between(xs, lo, hi, color=colour, alpha=0.12, linewidth=0)
    ax.set_xscale("log", base=2)
    ax.set_xticks(batches)
    ax.set_xticklabels([str(b) for b in batches])
    ax.invert_xaxis()  # the paper's orientation: 32 on the left, 2 on the right
    ax.set_xlabel("images per process (batch of the normalization)")
    ylabel = "validation error (%)" if summary.get("metric") == "top1_err" else f"validation {summary.get('metric', '')}"
    ax.set_ylabel(ylabel + ", median over seeds (band: min-max)")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=9)  # outside: never over a line
    if title:
        ax.set_title(title, fontsize=10)
    return _save_and_close(fig, path)


def plot_activation_gaps(gaps: Dict, path: str, *, batch: int, title: str = "") -> str:
    """Per-layer train-vs-eval gap (bars) and one channel's histograms (train / EMA / EvalNorm)."""
    import numpy as np

    plt = _pyplot()
    fig, (ax, hx) = plt.subplots(1, 2, figsize=(13, 4.6), gridspec_kw={"width_ratios": [2.2, 1]})
    names = [n.replace("trunk.", "").replace(".norm", "") for n in gaps["layers"]]
    x = np.arange(len(names))
    ax.bar(x - 0.2, gaps["ema"], width=0.4, label="running averages (plain BN evaluation)", color="tab:blue")
    ax.bar(x + 0.2, gaps["evalnorm"], width=0.4, label="EvalNorm (alpha, beta fitted online)", color="tab:cyan")
    ax.set_xticks(x)
    ax.set_xticklabels(names, rotation=70, fontsize=7)
    ax.set_ylabel("mean |train-mode - eval-mode| normalised value")
    ax.set_title(f"BN trained at {batch} images per process: how far evaluation is from training, per layer",
                 fontsize=9)
    ax.legend(fontsize=8)
    ax.grid(True, axis="y", alpha=0.3)
    h = gaps.get("histogram") or {}
    bins = np.linspace(-4, 4, 61)
    for key, label, colour in (("train", "training (batch statistics)", "black"),
                               ("ema", "evaluation: running averages", "tab:blue"),
                               ("evalnorm", "evaluation: EvalNorm", "tab:cyan")):
        values = np.asarray(h.get(key) or [], dtype=float)
        if values.size:
            hx.hist(np.clip(values, -4, 4), bins=bins, histtype="step", density=True, label=label, color=colour,
                    linewidth=1.6)
    hx.set_title(f"{str(h.get('layer', '')).replace('trunk.', '')}, channel {h.get('channel', 0)}", fontsize=9)
    hx.set_xlabel("normalised value")
    hx.legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    return _save_and_close(fig, path)
