"""The two robustness figures, in the style of He et al. (2024) Figs. 3 and 10.

* `plot_scores_by_source`: per-layer scores of each kind, one line per calibration source at the largest
  sample count, the k lowest of each source marked: if the lines lie on each other and the marks fall on the
  same layers, the choice of calibration text does not matter (Fig. 3).
* `plot_scores_by_samples`: top row, every layer's score against the number of samples on the first source
  (log axes; the k layers dropped at the largest count drawn bold); bottom row, per source, Spearman's ρ with
  the largest count and overlap@k / k against the number of samples: where both reach 1, more samples stop
  changing the selection (Fig. 10).

Scores are drawn on a log axis: the layers that get dropped are the ones with the smallest scores, often 100x
below the first layer's, and a linear axis flattens exactly those.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from layerdrop_patch.files import save_figure
from layerdrop_patch.plotting import COLORS, LABELS, pyplot
from layerdrop_patch.scoring.scores import KINDS

__all__ = ["plot_scores_by_source", "plot_scores_by_samples"]

SOURCE_COLORS = ("#1b6ca8", "#e07a1f", "#3a9d4a", "#8e44ad", "#c0392b", "#7f8c8d", "#b8860b", "#17a2b8")


def _positive(values: list[float]) -> list[float]:
    """Scores for a log axis: non-positive and NaN values become gaps."""
    return [v if v == v and v > 0 else float("nan") for v in values]


def _footer(fig: Any, result: Any) -> None:
    cfg = result.config
    fig.text(0.01, 0.005, f"{result.model_name or 'model'}; metric {result.metric}; samples of {cfg.seq_len} tokens, "
             f"seed {cfg.seed}; nested sample sets", fontsize=7, color="#666666")


def plot_scores_by_source(result: Any, path: str | Path) -> Path:
    """Per-layer scores for each calibration source at the largest sample count; the k lowest marked."""
    plt = pyplot()
    from matplotlib.ticker import MaxNLocator

    n = result.counts[-1]
    layers = list(range(result.num_layers))
    fig, axes = plt.subplots(1, len(KINDS), figsize=(4.2 * len(KINDS) + 0.4 * result.num_layers / 10, 4.0),
                             squeeze=False)
    for ax, kind in zip(axes[0], KINDS):
        k = result.k(kind)
        for i, label in enumerate(result.labels):
            color = SOURCE_COLORS[i % len(SOURCE_COLORS)]
            values = result.values(kind, (label, n))
            ax.plot(layers, _positive(values), lw=1.3, marker="o", ms=2.5, color=color, label=label)
            low = result.lowest(kind, (label, n))
            ax.scatter(low, [values[j] for j in low], s=70, facecolors="none", edgecolors=color, lw=1.3)
        rows = result.across_sources(kind).get(n)
        agree = (f"\nsources: worst pair ρ = {rows['spearman_min']:.2f}, overlap {rows['overlap_min']}/{k}"
                 if rows else "")
        ax.set_title(f"{LABELS[kind]}: circles = the {k} lowest{agree}", fontsize=9, color=COLORS[kind])
        ax.set_yscale("log")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("layer")
        ax.grid(alpha=0.3, which="both")
    axes[0][0].set_ylabel(f"importance ({result.metric})")
    axes[0][0].legend(frameon=False, fontsize=8, title=f"{n} samples", title_fontsize=8)
    fig.suptitle("Importance scores by calibration source", fontsize=11)
    _footer(fig, result)
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    return save_figure(fig, path)


def plot_scores_by_samples(result: Any, path: str | Path) -> Path:
    """Top: each layer's score against the sample count (first source). Bottom: agreement with the largest
    count (Spearman rho, solid; overlap@k / k, dashed) per source."""
    plt = pyplot()
    counts, first = result.counts, result.labels[0]
    fig, axes = plt.subplots(2, len(KINDS), figsize=(4.4 * len(KINDS), 7.0), squeeze=False,
                             gridspec_kw={"height_ratios": [3, 2]})
    cmap = plt.get_cmap("viridis")
    for col, kind in enumerate(KINDS):
        top, bottom, k = axes[0][col], axes[1][col], result.k(kind)
        dropped = set(result.lowest(kind, (first, counts[-1])))
        for layer in range(result.num_layers):
            series = _positive([result.values(kind, (first, n))[layer] for n in counts])
            bold = layer in dropped
            top.plot(counts, series, color=cmap(layer / max(1, result.num_layers - 1)), lw=2.2 if bold else 0.8,
                     alpha=1.0 if bold else 0.55, marker="o" if bold else None, ms=3)
        top.set_xscale("log", base=2)
        top.set_yscale("log")
        top.set_title(f"{LABELS[kind]} on {first} (bold: the {k} lowest at {counts[-1]})", fontsize=8.5,
                      color=COLORS[kind])
        top.grid(alpha=0.3, which="both")
        lowest = 1.0
        for i, (label, rows) in enumerate(result.across_counts(kind).items()):
            color = SOURCE_COLORS[i % len(SOURCE_COLORS)]
            rho, share = [rows[n]["spearman"] for n in counts], [rows[n]["overlap"] / k for n in counts]
            bottom.plot(counts, rho, color=color, lw=1.5, marker="o", ms=3, label=f"{label}: ρ")
            bottom.plot(counts, share, color=color, lw=1.2, ls="--", marker="s", ms=3, label=f"{label}: overlap@{k}")
            lowest = min([lowest, *[v for v in rho + share if v == v]])
        bottom.set_xscale("log", base=2)
        bottom.set_ylim(max(-1.05, min(0.5, math.floor((lowest - 0.05) * 10) / 10)), 1.03)  # zoomed, 0.5 at most
        bottom.set_xlabel("calibration samples")
        bottom.set_title(f"agreement with {counts[-1]} samples", fontsize=8.5)
        bottom.grid(alpha=0.3)
    axes[0][0].set_ylabel(f"importance ({result.metric}); colour = depth")
    axes[1][0].set_ylabel("Spearman ρ  /  overlap@k ÷ k")
    axes[1][0].legend(frameon=False, fontsize=7)
    fig.suptitle("Importance scores against the number of calibration samples", fontsize=11)
    _footer(fig, result)
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    return save_figure(fig, path)
