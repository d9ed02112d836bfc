"""Serving exports: write a dropped model in formats that vLLM and llama.cpp run natively.

`export(model_or_dir, format=..., out=...)` is the one entry point (and what `layerdrop export` calls); the
formats are registered in `FORMATS` (`registry.py`):

* ``"standard"``: a stock checkpoint of the base architecture with fewer, renumbered layers (no remote code;
  transformers, vLLM, llama.cpp's converter). Only when the kept sublayers form complete layers.
* ``"decilm"``: NVIDIA's Nemotron-NAS format (`DeciLMForCausalLM`, per-layer no-op attention / FFN), served
  natively by vLLM; `load_model` reads it back.
* ``"gguf"``: one GGUF file for llama.cpp / Ollama (`deci` architecture for per-layer structure).

Every format computes exactly what the dropped model computes; anything a target engine would run
differently is refused with a message that says which format to use instead.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from layerdrop_patch.checkpoint import from_pretrained
from layerdrop_patch.embedded import load_tokenizer, resolve_model
from layerdrop_patch.errors import ConfigError, ExportError
from layerdrop_patch.export import decilm as _decilm  # noqa: F401  (each format module registers itself)
from layerdrop_patch.export import gguf as _gguf  # noqa: F401
from layerdrop_patch.export import standard as _standard  # noqa: F401
from layerdrop_patch.export.registry import FORMATS, ExportFormat, register_format

__all__ = ["export", "FORMATS", "ExportFormat", "ExportError", "register_format"]


def export(model_or_dir: Any, format: str = "standard", out: str | os.PathLike | None = None, tokenizer: Any = None,
           **options: Any) -> Path:
    """Export a dropped model (a model object, or anything `layerdrop_patch.models.load_model` loads).

    Args:
        model_or_dir: a model dropped with `apply_drop`, or a pruned checkpoint directory / hub id / embedded name.
        format: a name in `FORMATS` ("standard", "decilm", "gguf").
        out: output directory (standard, decilm) or file (gguf). Written atomically; an existing output is
            replaced only with `overwrite=True`.
        tokenizer: saved alongside (standard, decilm) or embedded (gguf); loaded from the directory if omitted.
        **options: format-specific keywords: `overwrite`; decilm `zero_attention_layer0`; gguf `dtype`,
            `attention_only_layers`, `tokenizer_pre`, `allow_no_tokenizer`.
    Returns:
        the path written.
    """
    if format not in FORMATS:
        raise ConfigError(f"unknown export format {format!r}; choose one of {', '.join(FORMATS)}")
    if out is None:
        raise ConfigError("out is required: a directory for standard/decilm, a .gguf file for gguf")
    if isinstance(model_or_dir, (str, os.PathLike)):  # a pruned checkpoint (or a base model, nothing dropped)
        path = resolve_model(model_or_dir)
        model = from_pretrained(path).eval()
        tokenizer = tokenizer or load_tokenizer(path, required=False)
    else:
        model = model_or_dir
    return FORMATS[format].write(model, out, tokenizer, **options)
