"""The sweep plot: a quality measure against the number of units dropped (the demo's perplexity curve)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from layerdrop_patch.files import save_figure
from layerdrop_patch.plotting import pyplot

__all__ = ["plot_sweep"]


def plot_sweep(rows: list[dict[str, Any]], path: str | os.PathLike, *, y: str = "perplexity", kind: str = "attn",
               title: str | None = None, chosen: int | None = None, log_y: bool = True) -> Path:
    """Line plot of `y` against the number of `kind` units dropped (e.g. the perplexity sweep)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.6))
    xs, ys = [r["n"] for r in rows], [r[y] for r in rows]
    ax.plot(xs, ys, marker="o", color="#d1495b")
    if chosen is not None and chosen in xs:
        ax.axvline(chosen, color="#777777", ls="--", lw=1, label=f"chosen: {chosen}")
        ax.legend(frameon=False)
    if log_y and all(v is not None and v > 0 for v in ys):
        ax.set_yscale("log")
    ax.set_xlabel(f"{kind} sublayers dropped")
    ax.set_ylabel(y)
    ax.set_title(title or f"{y} vs {kind} sublayers dropped", fontsize=10)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return save_figure(fig, path)
