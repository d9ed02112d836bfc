"""The one model loader, `load_model`: every entry point (CLI commands, recipes, the demo, exports, benchmarks)
loads through it, and it never runs code from a checkpoint.

It tells apart what a model argument names (`embedded.resolve_model`) and loads it the right way:

* an embedded name (`smollm2-135m`, `gemma3-270m`): its converted checkpoint, made on first use;
* a pruned checkpoint written by layerdrop-patch (`drop_config` in config.json): `checkpoint.from_pretrained`,
  which uses this package's own copy of the modelling code, never the copy shipped in the directory;
* an AWQ checkpoint (`quantization_config.quant_method == "awq"`): through GPTQModel, as transformers does;
* a Nemotron-NAS (DeciLM) export: `export.decilm.load_decilm`;
* anything else (a hub id or a plain local directory): transformers' `AutoModelForCausalLM`, optionally pruned at
  load time with `drop_config=`.
Tokenizers load with `trust_remote_code=False` (`embedded.load_tokenizer`): a pruned checkpoint's `auto_map`
names our shipped classes, and transformers would otherwise offer (on a terminal: ask) to run them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from layerdrop_patch.checkpoint import from_pretrained, shipped_config_and_class
from layerdrop_patch.embedded import (DEFAULT_MODEL, EMBEDDED_MODELS, cache_dir, ensure_embedded, load_tokenizer,
                                      read_config, resolve_model)
from layerdrop_patch.export.decilm import load_decilm
from layerdrop_patch.options import StageConfig, option
from layerdrop_patch.quantize.awq import load_quantized

__all__ = ["LoadConfig", "load_model", "empty_model", "load_embedded_model", "DEFAULT_MODEL", "EMBEDDED_MODELS",
           "cache_dir", "ensure_embedded", "load_tokenizer", "read_config", "resolve_model"]

DTYPES = ("float32", "bfloat16", "float16", "auto")


@dataclass
class LoadConfig(StageConfig):
    """How a model is loaded: the options every command that loads a model shares."""

    dtype: str = option("float32", "Weights dtype: float32 (CPU default), bfloat16, float16, or auto (the "
                        "checkpoint's own).", choices=DTYPES)
    device_map: str | None = option(None, "Passed to from_pretrained, e.g. auto to spread a large model over "
                                          "GPUs and CPU (accelerate).")


def _torch_dtype(dtype: str):
    import torch

    return "auto" if dtype == "auto" else getattr(torch, dtype)


def load_model(name_or_path: str = DEFAULT_MODEL, config: LoadConfig | None = None, *, drop_config: Any = None,
               tokenizer: bool | str = True, **overrides: Any):
    """(model, tokenizer) in eval mode for any model argument; `tokenizer=False` returns (model, None) and
    `tokenizer="optional"` returns None for a model saved without one.

    `config` / keyword overrides: `dtype`, `device_map` (LoadConfig). `drop_config` prunes a base model at load
    time (the dropped weights are never materialised). See the module docstring for what is recognised.
    """
    from transformers import AutoModelForCausalLM

    config = LoadConfig.build(config, **overrides)
    path = resolve_model(name_or_path)
    saved = read_config(path)
    kwargs: dict[str, Any] = {"dtype": _torch_dtype(config.dtype)}
    if config.device_map:
        kwargs["device_map"] = config.device_map
    if (saved.get("quantization_config") or {}).get("quant_method") == "awq":
        model = load_quantized(path, device_map=config.device_map)
    elif saved.get("model_type") == "nemotron-nas":
        model = load_decilm(path, **kwargs)
    elif saved.get("drop_config") or drop_config is not None:
        model = from_pretrained(path, drop_config=drop_config, **kwargs)
    else:
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    return model.eval(), (load_tokenizer(path, required=tokenizer is True) if tokenizer else None)


def empty_model(name_or_path: str, dtype: Any = None):
    """A *ForCausalLM built on the meta device from a checkpoint's config (no weights read, ~no memory), for
    `compute_importance(model, calib, offload=True)`, which then reads weights layer by layer from its files.
    Buffers (e.g. RoPE inverse frequencies) are real, computed from the config."""
    import torch
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    path = resolve_model(name_or_path)
    saved = read_config(path)
    if saved.get("drop_config"):  # a pruned checkpoint: our classes, built already pruned
        config, cls = shipped_config_and_class(saved)
        build = lambda: cls(config)  # noqa: E731
    else:
        config = AutoConfig.from_pretrained(path, trust_remote_code=False)
        build = lambda: AutoModelForCausalLM.from_config(config)  # noqa: E731
    with init_empty_weights(include_buffers=False):
        model = build().to(dtype or getattr(config, "dtype", None) or torch.float32)
    model.name_or_path = str(path)
    model.config._name_or_path = str(path)
    return model.eval()


def load_embedded_model(name: str = DEFAULT_MODEL, dtype: str = LoadConfig.dtype):
    """(model, tokenizer) of an embedded model (fp32 unless `dtype` is given)."""
    return load_model(name, dtype=dtype)
