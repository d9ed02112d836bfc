"""Plots of importance scores and drop order (matplotlib, Agg backend, saved to PNG).

`plot_importance` draws what He et al. show in Figs. 2-3: per-layer importance of blocks, attention and MLP, so
one can see at a glance that deep attention layers are the most redundant. `plot_drop_order` draws Fig. 6: as the
number of dropped modules grows, which layers' attention / MLP are gone. Both take `ImportanceScores`; the drop
order can also come from `iterative_select(..., return_history=True)`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

__all__ = ["plot_importance", "plot_drop_order"]

_COLORS = {"block": "#4c4c4c", "attn": "#d1495b", "mlp": "#00798c"}
_LABELS = {"block": "Block", "attn": "Attention", "mlp": "MLP"}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def plot_importance(scores: Any, path: str | Path, kinds: Iterable[str] = ("block", "attn", "mlp"),
                    title: str | None = None) -> Path:
    """Per-layer importance (lower = more redundant) of each kind, one line each; NaN (dropped) leaves gaps."""
    plt = _pyplot()
    kinds = list(kinds)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.25 * scores.num_layers + 3), 3.6))
    layers = list(range(scores.num_layers))
    for kind in kinds:
        ax.plot(layers, scores.scores_for(kind), marker="o", ms=3.5, lw=1.4, color=_COLORS[kind], label=_LABELS[kind])
    ax.set_xlabel("layer")
    ax.set_ylabel(f"importance ({scores.metric})")
    ax.set_title(title or f"{scores.model_name or 'model'}: per-layer importance")
    ax.grid(alpha=0.3)
    ax.legend(frameon=False)
    if scores.calibration:
        fig.text(0.01, 0.01, scores.calibration[:140], fontsize=6, color="#777777")
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    return _save(fig, path)


def _order_from(source: Any, kind: str, **options: Any) -> list[tuple[str, int]]:
    if isinstance(source, list) and all(isinstance(h, dict) for h in source):  # iterative history
        return [(h["kind"], int(h["layer"])) for h in source]
    from layerdrop_patch.selection import drop_order

    return drop_order(source, kind, **options)


def plot_drop_order(source: Any, path: str | Path, kind: str = "joint", num_layers: int | None = None,
                    max_dropped: int | None = None, title: str | None = None, **options: Any) -> Path:
    """Grid of layer (y) against number of modules dropped (x): a cell is filled once that module is dropped.

    `source` is ImportanceScores (the one-shot order of `drop_order(scores, kind, **options)`) or an iterative
    history list. Attention and MLP cells of the same layer are drawn in the lower / upper half of its row.
    """
    import numpy as np
    from matplotlib.patches import Patch

    plt = _pyplot()
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
    cmap = ListedColormap(["#f4f4f4", _COLORS["attn"], _COLORS["mlp"]])
    ax.imshow(grid, aspect="auto", origin="lower", cmap=cmap, vmin=0, vmax=2, interpolation="nearest",
              extent=(0.5, steps + 0.5, -0.5, n_layers - 0.5))
    ax.set_xlabel("number of modules dropped")
    ax.set_ylabel("layer")
    ax.set_title(title or f"drop order ({kind})")
    ax.legend(handles=[Patch(color=_COLORS["attn"], label="attention dropped"),
                       Patch(color=_COLORS["mlp"], label="MLP dropped")], frameon=False, fontsize=8,
              loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    return _save(fig, path)


def _save(fig: Any, path: str | Path) -> Path:
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return path
