"""What every plot shares: a headless matplotlib, one palette for attention / MLP / block, atomic PNG files.

Each stage keeps its own plots next to its code (`scoring/plots.py`, `selection/plots.py`, ...); they draw with
`pyplot()` and save with `files.save_figure`, so every PNG appears whole or not at all.
"""

from __future__ import annotations

__all__ = ["pyplot", "COLORS", "LABELS"]

COLORS = {"block": "#4c4c4c", "attn": "#d1495b", "mlp": "#00798c", "joint": "#6c4f9c"}
LABELS = {"block": "Block", "attn": "Attention", "mlp": "MLP", "joint": "Joint"}


def pyplot():
    """matplotlib.pyplot on the non-interactive Agg backend (no display is needed or used)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt
