"""layerdrop-patch: drop redundant attention / MLP sublayers from pretrained transformers LLMs.

Public API (see README): DropConfig, apply_drop, from_pretrained, load_calibration, compute_importance,
evaluate, export, push_to_hub.
"""

__version__ = "0.1.0"

from layerdrop_patch.config import DropConfig  # noqa: E402

__all__ = ["DropConfig", "__version__"]
