"""layerdrop-patch: drop redundant attention / MLP sublayers from pretrained transformers LLMs.

The public API, all importable from here:

    DropConfig, apply_drop                       what to drop; drop it from a loaded model
    from_pretrained, save_pretrained             portable pruned checkpoints (load-time drops too)
    load_model                                   the one loader: embedded names, hub ids, any checkpoint
    load_calibration, compute_importance         calibration tokens; per-layer importance scores
    ImportanceScores, select, choose_drop        choosing what to drop (one-shot, iterative, baselines, ...)
    evaluate, perplexity                         lm-eval with the paper's settings; WikiText-2/C4 perplexity
    plan_drop                                    the drop for a speed-up / KV / weight target, verified by measurement
    export, push_to_hub                          vLLM / llama.cpp / standard exports; Hub publishing
    LayerdropError                               the one error family for bad input

Layout: the core (config, patch, checkpoint, models, modeling/) at the top; one package per stage (scoring,
selection, planning, recover, quantize, evaluation, export, publish, run), each with one typed config; cli/ on top.

Heavy modules (lm-eval, huggingface_hub, gguf) are imported on first use, so `import layerdrop_patch` stays fast.
"""

from __future__ import annotations

import importlib

from layerdrop_patch.version import __version__  # noqa: E402

from layerdrop_patch.errors import LayerdropError  # noqa: E402
from layerdrop_patch.config import DropConfig  # noqa: E402
from layerdrop_patch.patch import apply_drop  # noqa: E402
from layerdrop_patch.checkpoint import from_pretrained, save_pretrained  # noqa: E402

_LAZY = {
    "load_model": "layerdrop_patch.models",
    "load_calibration": "layerdrop_patch.scoring",
    "Calibration": "layerdrop_patch.scoring",
    "CalibrationConfig": "layerdrop_patch.scoring",
    "compute_importance": "layerdrop_patch.scoring",
    "ImportanceScores": "layerdrop_patch.scoring",
    "select": "layerdrop_patch.selection",
    "choose_drop": "layerdrop_patch.selection",
    "iterative_select": "layerdrop_patch.selection",
    "SelectionConfig": "layerdrop_patch.selection",
    "evaluate": "layerdrop_patch.evaluation",
    "EvalResult": "layerdrop_patch.evaluation",
    "perplexity": "layerdrop_patch.evaluation",
    "export": "layerdrop_patch.export",
    "push_to_hub": "layerdrop_patch.publish",
    "recover_lora": "layerdrop_patch.recover",
    "RecoveryConfig": "layerdrop_patch.recover",
    "quantize_awq": "layerdrop_patch.quantize",
    "QuantizeConfig": "layerdrop_patch.quantize",
    "run_recipe": "layerdrop_patch.run",
    "plan_drop": "layerdrop_patch.planning",
}

__all__ = ["DropConfig", "apply_drop", "from_pretrained", "save_pretrained", "LayerdropError", "__version__", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'layerdrop_patch' has no attribute {name!r}")
