"""The recovery loss curve: training loss per step (light) and its running mean (dark)."""

from __future__ import annotations

import os
from pathlib import Path

from layerdrop_patch.files import save_figure
from layerdrop_patch.plotting import pyplot

__all__ = ["plot_loss_curve"]


def plot_loss_curve(losses: list[float], path: str | os.PathLike, title: str = "LoRA recovery") -> Path:
    """Training loss per step and its running mean over ~5% of the steps, as a PNG."""
    plt = pyplot()
    window = max(1, len(losses) // 20)
    smooth = [sum(losses[max(0, i - window + 1): i + 1]) / len(losses[max(0, i - window + 1): i + 1])
              for i in range(len(losses))]
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=120)
    ax.plot(range(1, len(losses) + 1), losses, color="tab:blue", alpha=0.3, lw=1, label="loss")
    ax.plot(range(1, len(losses) + 1), smooth, color="tab:blue", lw=2, label=f"mean of {window}")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    return save_figure(fig, path, dpi=120)
