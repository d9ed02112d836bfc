"""Plots of importance scores (matplotlib, Agg backend, PNG written atomically).

`plot_importance` draws what He et al. show in Figs. 2-3: per-layer importance of blocks, attention and MLP, so
one can see at a glance that deep attention layers are the most redundant. The drop-order plot (Fig. 6) is
`selection.plots.plot_drop_order`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

from layerdrop_patch.files import save_figure
from layerdrop_patch.plotting import COLORS, LABELS, pyplot

__all__ = ["plot_importance"]


def plot_importance(scores: Any, path: str | Path, kinds: Iterable[str] = ("block", "attn", "mlp"),
                    title: str | None = None) -> Path:
    """Per-layer importance (lower = more redundant) of each kind, one line each; NaN (dropped) leaves gaps."""
    plt = pyplot()
    kinds = list(kinds)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.25 * scores.num_layers + 3), 3.6))
    layers = list(range(scores.num_layers))
    for kind in kinds:
        ax.plot(layers, scores.scores_for(kind), marker="o", ms=3.5, lw=1.4, color=COLORS[kind], label=LABELS[kind])
    ax.set_xlabel("layer")
    ax.set_ylabel(f"importance ({scores.metric})")
    ax.set_title(title or f"{scores.model_name or 'model'}: per-layer importance")
    ax.grid(alpha=0.3)
    ax.legend(frameon=False)
    if scores.calibration:
        fig.text(0.01, 0.01, scores.calibration[:140], fontsize=6, color="#777777")
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    return save_figure(fig, path)
