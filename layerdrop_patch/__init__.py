"""layerdrop-patch: drop redundant attention / MLP sublayers from pretrained transformers LLMs.

Public API (see README): DropConfig, apply_drop, from_pretrained, save_pretrained, load_calibration,
compute_importance, evaluate, export, push_to_hub.
"""

__version__ = "0.1.0"

from layerdrop_patch.config import DropConfig  # noqa: E402
from layerdrop_patch.patch import apply_drop  # noqa: E402
from layerdrop_patch.checkpoint import from_pretrained, save_pretrained  # noqa: E402

__all__ = ["DropConfig", "apply_drop", "from_pretrained", "save_pretrained", "__version__"]
