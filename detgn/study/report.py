"""The normalization study's results: finished cells to medians, the table and the findings.

:func:`load_results` reads every ``<cell>/cell_result.json`` a study wrote,
:func:`summarize` turns them into medians over seeds with their spread (and the BN cells'
per-layer activation gaps), :func:`markdown_table` writes the GN paper's Table 1 layout and
:func:`findings` checks the paper's qualitative claims on the numbers, each with the seed
noise it allows. A summary read back from ``norm_study.json`` (batch sizes as strings) goes
through :func:`summary_from_json` first. Running the cells is :mod:`detgn.study.norm_study`.
"""
from __future__ import annotations

import json
import os
import statistics
from typing import Dict, List, Sequence, Tuple

__all__ = ["RESULT_FILE", "VARIANTS", "findings", "load_results", "markdown_table", "summarize", "summary_from_json"]

RESULT_FILE = "cell_result.json"
# The rows of the study's table, in this order (SyncBN only where a preset runs it).
VARIANTS = ("BN", "BN+EvalNorm", "BN+EvalNorm 1/B^2", "BN+PreciseBN", "GN", "LN", "IN", "SyncBN")


def load_results(runs_dir: str) -> List[Dict]:
    """Every finished cell under ``runs_dir`` (``<cell>/cell_result.json``)."""
    out = []
    if not os.path.isdir(runs_dir):
        return out
    for name in sorted(os.listdir(runs_dir)):
        path = os.path.join(runs_dir, name, RESULT_FILE)
        if os.path.isfile(path):
            with open(path) as f:
                out.append(json.load(f))
    return out


def summarize(results: Sequence[Dict]) -> Dict:
    """Medians over seeds, with min and max, per variant and batch size; the gaps of BN
    cells by batch (median over seeds, per layer).

    Returns:
        ``{"metric", "batches": [...], "rows": {variant: {batch: {"median", "min", "max", "n",
        "values"}}}, "gaps": {batch: {"layers", "ema", "evalnorm", "histogram"}}}``
    """
    rows: Dict[str, Dict[int, List[float]]] = {}
    gaps: Dict[int, List[Dict]] = {}
    metric = results[0]["metric"] if results else ""
    for r in results:
        b = int(r["cell"]["batch"])
        for variant, value in r["scores"].items():
            rows.setdefault(variant, {}).setdefault(b, []).append(float(value))
        if r.get("gaps"):
            gaps.setdefault(b, []).append(r["gaps"])
    batches = sorted({b for v in rows.values() for b in v}, reverse=True)
    table = {}
    for variant in [v for v in VARIANTS if v in rows] + sorted(set(rows) - set(VARIANTS)):
        table[variant] = {b: {"median": statistics.median(vals), "min": min(vals), "max": max(vals), "n": len(vals),
                              "values": vals} for b, vals in sorted(rows[variant].items(), reverse=True)}
    gap_summary = {}
    for b, items in gaps.items():
        gap_summary[b] = {
            "layers": items[0]["layers"],
            "ema": [statistics.median(g["ema"][i] for g in items) for i in range(len(items[0]["layers"]))],
            "evalnorm": [statistics.median(g["evalnorm"][i] for g in items) for i in range(len(items[0]["layers"]))],
            "histogram": items[0]["histogram"],
        }
    return {"metric": metric, "batches": batches, "rows": table, "gaps": gap_summary}


def markdown_table(summary: Dict, *, about: str = "") -> str:
    """The paper's Table 1 layout: one row per norm, one column per batch size, median (min-max)."""
    summary = summary_from_json(summary)
    batches = summary["batches"]
    metric = summary["metric"]
    lines = []
    if about:
        lines += [about, ""]
    lines.append(f"{metric} (median over seeds, min-max in brackets), images per process:")
    lines.append("")
    lines.append("| norm | " + " | ".join(str(b) for b in batches) + " |")
    lines.append("|---|" + "---|" * len(batches))
    for variant, cells in summary["rows"].items():
        row = []
        for b in batches:
            c = cells.get(b)
            row.append("" if c is None else f"{c['median']:.1f} ({c['min']:.1f}-{c['max']:.1f})")
        lines.append(f"| {variant} | " + " | ".join(row) + " |")
    gn = summary["rows"].get("GN")
    bn = summary["rows"].get("BN")
    if gn and bn and metric == "top1_err":
        lines.append("")
        lines.append("BN - GN (error points, medians): " + ", ".join(
            f"{b}: {bn[b]['median'] - gn[b]['median']:+.1f}" for b in batches if b in bn and b in gn))
        checks = findings(summary)
        if checks:
            lines += ["", "The GN paper's findings, checked on these numbers (noise: the min-max spread over "
                      "seeds of the cells compared):", ""]
            lines += [f"- {'yes' if ok else 'NO'}: {text}" for ok, text in checks]
    return "\n".join(lines) + "\n"


STABLE_SPREAD = 3.0  # points of error: a cell's seed spread beyond this makes its median a coin toss


def _spread(cell: Dict) -> float:
    return float(cell["max"] - cell["min"])


def findings(summary: Dict) -> List[Tuple[bool, str]]:
    """The paper's qualitative findings (GN paper Figure 1 / Table 1, EvalNorm's claim),
    each with whether these numbers show it and the numbers. Only for error metrics."""
    summary = summary_from_json(summary)
    rows, batches = summary["rows"], summary["batches"]
    if summary.get("metric") != "top1_err" or not batches:
        return []
    big, small = max(batches), min(batches)
    med = {v: {b: c["median"] for b, c in cells.items()} for v, cells in rows.items()}
    out: List[Tuple[bool, str]] = []
    gn = rows.get("GN")
    if gn and len(gn) > 1:
        span = max(med["GN"].values()) - min(med["GN"].values())
        noise = max(_spread(c) for c in gn.values())
        out.append((span <= noise, f"GN's error varies across batch sizes by no more than seed noise "
                                   f"(medians span {span:.1f} points, largest seed spread {noise:.1f})"))
    bn = rows.get("BN")
    if bn and 8 in bn and small in bn and small < 8:
        drop = med["BN"][small] - med["BN"][8]
        noise = max(_spread(bn[8]), _spread(bn[small]))
        out.append((drop > noise, f"BN degrades sharply below 8 images (+{drop:.1f} points from 8 to {small}, "
                                  f"seed spread {noise:.1f})"))
    if bn and gn and small in bn and small in gn:
        gap = med["BN"][small] - med["GN"][small]
        out.append((bn[small]["min"] > gn[small]["max"], f"BN is clearly worse than GN at {small} "
                    f"({med['BN'][small]:.1f} vs {med['GN'][small]:.1f}, {gap:+.1f} points; seed ranges "
                    f"{bn[small]['min']:.1f}-{bn[small]['max']:.1f} and {gn[small]['min']:.1f}-{gn[small]['max']:.1f})"))
    order = [v for v in ("BN", "GN", "LN", "IN") if v in rows and big in rows[v]]
    for a, b in zip(order, order[1:]):
        noise = max(_spread(rows[a][big]), _spread(rows[b][big]))
        rel = "<=" if a == "BN" else "<"
        ok = med[a][big] <= med[b][big] + noise
        out.append((ok, f"at {big}: {a} {rel} {b} within noise ({med[a][big]:.1f} vs {med[b][big]:.1f}, "
                        f"seed spread {noise:.1f})"))
    large = sorted(batches)[-2:]  # the batches where every norm should train reliably (paper: 32 and 16)
    cells = [(c["max"] - c["min"], v, b) for v, per in rows.items() for b, c in per.items()
             if b in large and c.get("n", 0) > 1]
    if cells:
        worst = max(cells)
        out.append((worst[0] <= STABLE_SPREAD, f"every cell at {' and '.join(map(str, large[::-1]))} is stable across "
                                               f"seeds (largest spread {worst[0]:.1f} points: {worst[1]} at {worst[2]}; "
                                               f"limit {STABLE_SPREAD:g})"))
    if bn and big in bn:
        entries = {v: rows[v][big] for v in rows if big in rows[v]}
        best = min(entries, key=lambda v: entries[v]["median"])
        noise = max(_spread(bn[big]), _spread(entries[best]))
        out.append((med["BN"][big] <= entries[best]["median"] + noise,
                    f"at {big}: BN is within seed noise of the best entry ({med['BN'][big]:.1f}; best {best} "
                    f"{entries[best]['median']:.1f}, seed spread {noise:.1f})"))
    for variant in ("BN+EvalNorm", "BN+EvalNorm 1/B^2"):
        if variant in rows and small in rows[variant] and bn and gn and small in bn and small in gn:
            e, p, g = med[variant][small], med["BN"][small], med["GN"][small]
            share = (f"{100 * (p - e) / (p - g):.0f}% of BN's gap recovered" if p > g
                     else "BN is not worse than GN here: no gap to recover")
            out.append((g < e < p, f"{variant} recovers part of BN's loss at {small} without closing the gap to "
                                   f"GN ({p:.1f} -> {e:.1f}, GN {g:.1f}: {share})"))
    return out


def summary_from_json(data: Dict) -> Dict:
    """A summary as :func:`summarize` returns it from the ``norm_study.json`` it was saved as
    (JSON turns the integer batch sizes into strings)."""
    out = dict(data)
    out["batches"] = [int(b) for b in data.get("batches", [])]
    out["rows"] = {v: {int(b): c for b, c in cells.items()} for v, cells in data.get("rows", {}).items()}
    out["gaps"] = {int(b): g for b, g in data.get("gaps", {}).items()}
    return out
