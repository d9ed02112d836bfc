"""The drop-order plot (He et al. Fig. 6): as the number of dropped modules grows, which layers' attention and
MLP are gone. From a one-shot ranking (`drop_order`) or from a step-by-step method's history."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from layerdrop_patch.files import save_figure
from layerdrop_patch.plotting import COLORS, pyplot
from layerdrop_patch.selection.ranking import drop_order

__all__ = ["plot_drop_order"]


def _order_from(source: Any, kind: str, **options: Any) -> list[tuple[str, int]]:
    if isinstance(source, list) and all(isinstance(h, dict) for h in source):  # a step-by-step history
        return [(h["kind"], int(h["layer"])) for h in source]
    return drop_order(source, kind, **options)


def plot_drop_order(source: Any, path: str | Path, kind: str = "joint", num_layers: int | None = None,
                    max_dropped: int | None = None, title: str | None = None, **options: Any) -> Path:
    """Grid of layer (y) against number of modules dropped (x): a cell is filled once that module is dropped.

    `source` is ImportanceScores (the one-shot order of `drop_order(scores, kind, **options)`) or an iterative
    history list. Attention and MLP cells of the same layer are drawn in the lower / upper half of its row.
    """
    import numpy as np
    from matplotlib.patches import Patch

    plt = pyplot()
    order = _order_from(source, kind, **options)
    n_layers = num_layers or getattr(source, "num_layers", None) or (max(l for _, l in order) + 1 if order else 1)
    steps = min(len(order), max_dropped or len(order))
    # rows 2*l (attention) and 2*l+1 (MLP); value 1 = attention dropped, 2 = MLP dropped
    grid = np.zeros((2 * n_layers, max(steps, 1)))
    for step in range(steps):
        k, l = order[step]
        for col in range(step, steps):
            if k in ("attn", "block"):
                grid[2 * l, col] = 1
            if k in ("mlp", "block"):
                grid[2 * l + 1, col] = 2
    from matplotlib.colors import ListedColormap

    fig, ax = plt.subplots(figsize=(max(5.0, 0.18 * steps + 3), max(3.5, 0.22 * n_layers + 1.5)))
    cmap = ListedColormap(["#f4f4f4", COLORS["attn"], COLORS["mlp"]])
    ax.imshow(grid, aspect="auto", origin="lower", cmap=cmap, vmin=0, vmax=2, interpolation="nearest",
              extent=(0.5, steps + 0.5, -0.5, n_layers - 0.5))
    ax.set_xlabel("number of modules dropped")
    ax.set_ylabel("layer")
    ax.set_title(title or f"drop order ({kind})")
    ax.legend(handles=[Patch(color=COLORS["attn"], label="attention dropped"),
                       Patch(color=COLORS["mlp"], label="MLP dropped")], frameon=False, fontsize=8,
              loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    return save_figure(fig, path)
