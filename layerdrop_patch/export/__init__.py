"""Serving exports: write a dropped model in formats that vLLM and llama.cpp run natively.

`export(model_or_dir, format=..., out=...)` is the one entry point (and what `layerdrop export` calls):

* ``"standard"``: a stock checkpoint of the base architecture with fewer, renumbered layers (no remote code;
  transformers, vLLM, llama.cpp's converter). Only when the kept sublayers form complete layers.
* ``"decilm"``: NVIDIA's Nemotron-NAS format (`DeciLMForCausalLM`, per-layer no-op attention / FFN), served
  natively by vLLM; reload it with `layerdrop_patch.export.decilm.load_decilm`.
* ``"gguf"``: one GGUF file for llama.cpp / Ollama (`deci` architecture for per-layer structure).

Every format computes exactly what the dropped model computes; anything a target engine would run
differently is refused with a message that says which format to use instead.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from layerdrop_patch.export.common import ExportError

__all__ = ["export", "FORMATS", "ExportError"]

FORMATS = ("standard", "decilm", "gguf")


def _load(model_or_dir: Any, tokenizer: Any):
    """A directory or hub id goes through layerdrop's own loader (pruned checkpoints and drop-at-load)."""
    if not isinstance(model_or_dir, (str, os.PathLike)):
        return model_or_dir, tokenizer
    from layerdrop_patch.checkpoint import from_pretrained
    from layerdrop_patch.models import resolve_model

    model = from_pretrained(model_or_dir).eval()
    if tokenizer is None:
        try:
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(resolve_model(str(model_or_dir)))
        except (OSError, ValueError):  # a checkpoint saved without its tokenizer
            tokenizer = None
    return model, tokenizer


def export(model_or_dir: Any, format: str = "standard", out: str | os.PathLike | None = None, tokenizer: Any = None,
           **options: Any) -> Path:
    """Export a dropped model (a model object, or a directory saved by `layerdrop_patch.save_pretrained`).

    Args:
        model_or_dir: a model dropped with `apply_drop`, or a path/hub id `layerdrop_patch.from_pretrained` loads.
        format: "standard", "decilm" or "gguf".
        out: output directory (standard, decilm) or file (gguf). Written atomically.
        tokenizer: saved alongside (standard, decilm) or embedded (gguf); loaded from the directory if omitted.
        **options: format-specific keywords: `overwrite`; decilm `zero_attention_layer0`; gguf `dtype`
            ("f32"/"f16"), `attention_only_layers` ("zero-ffn"/"refuse"), `tokenizer_pre` (llama.cpp
            pre-tokenizer name, e.g. "smollm", "llama-bpe").
    Returns:
        the path written.
    """
    if format not in FORMATS:
        raise ValueError(f"unknown export format {format!r}; choose one of {', '.join(FORMATS)}")
    if out is None:
        raise ValueError("out is required: a directory for standard/decilm, a .gguf file for gguf")
    model, tokenizer = _load(model_or_dir, tokenizer)
    if format == "standard":
        from layerdrop_patch.export.standard import export_standard

        return export_standard(model, out, tokenizer, **options)
    if format == "decilm":
        from layerdrop_patch.export.decilm import export_decilm

        return export_decilm(model, out, tokenizer, **options)
    from layerdrop_patch.export.gguf import export_gguf

    return export_gguf(model, out, tokenizer, **options)
