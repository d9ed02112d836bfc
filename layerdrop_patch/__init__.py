"""layerdrop-patch: drop redundant attention / MLP sublayers from pretrained transformers LLMs.

The public API, all importable from here:

    DropConfig, apply_drop                       what to drop; drop it from a loaded model
    from_pretrained, save_pretrained             portable pruned checkpoints (load-time drops too)
    load_calibration, compute_importance         calibration tokens; per-layer importance scores
    ImportanceScores, select, iterative_select   choosing what to drop (also `scores.select(...)`)
    evaluate, perplexity                         lm-eval with the paper's settings; WikiText-2/C4 perplexity
    export, push_to_hub                          vLLM / llama.cpp / standard exports; Hub publishing

Heavy modules (lm-eval, huggingface_hub, gguf) are imported on first use, so `import layerdrop_patch` stays fast.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

from layerdrop_patch.config import DropConfig  # noqa: E402
from layerdrop_patch.patch import apply_drop  # noqa: E402
from layerdrop_patch.checkpoint import from_pretrained, save_pretrained  # noqa: E402

_LAZY = {
    "load_calibration": "layerdrop_patch.calibration",
    "Calibration": "layerdrop_patch.calibration",
    "compute_importance": "layerdrop_patch.scoring",
    "ImportanceScores": "layerdrop_patch.scoring",
    "select": "layerdrop_patch.selection",
    "iterative_select": "layerdrop_patch.selection",
    "evaluate": "layerdrop_patch.evaluation",
    "EvalResult": "layerdrop_patch.evaluation",
    "perplexity": "layerdrop_patch.evaluation.perplexity",
    "export": "layerdrop_patch.export",
    "push_to_hub": "layerdrop_patch.hub",
}

__all__ = ["DropConfig", "apply_drop", "from_pretrained", "save_pretrained", "__version__", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'layerdrop_patch' has no attribute {name!r}")
