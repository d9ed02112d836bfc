"""`apply_drop`: remove sublayers from a loaded transformers model, in place; and what that saves.

The structural work (deleting modules, the skip forward, compact KV-cache indices) is done by the shipped
modeling code (`modeling/modeling_layerdrop.py`), so a model patched here and the same model reloaded from a
saved checkpoint run exactly the same code. This module adds what only the library needs: validation with
helpful errors, provenance, and measurements (parameter and KV-cache bytes).
"""

from __future__ import annotations

from typing import Any

import torch

from layerdrop_patch.architectures import decoder_layers, get_architecture
from layerdrop_patch.config import DropConfig
from layerdrop_patch.errors import ConfigError, UnsupportedModelError
from layerdrop_patch.modeling import modeling_layerdrop as _m

__all__ = ["apply_drop", "kv_cache_bytes", "parameter_bytes", "kept_attention_layers", "returned_cache"]


def apply_drop(model: Any, drop_config: DropConfig | dict) -> Any:
    """Drop the sublayers named by `drop_config` from `model` (in place) and return the model.

    Dropped attention/MLP modules and their norms are deleted from the module tree (memory is freed once
    nothing else references them); the residual passes straight through; the KV cache holds only the
    attention layers that remain. The config is recorded in `model.config.drop_config` (so it travels in
    `config.json`). Applying to an already-dropped model is cumulative: the new config must include what
    was dropped before, since removed weights cannot be restored.
    """
    if isinstance(drop_config, dict):
        drop_config = DropConfig.from_dict(drop_config)
    if not isinstance(drop_config, DropConfig):
        raise ConfigError(f"drop_config must be a DropConfig or its dict, got {type(drop_config).__name__}")
    get_architecture(model)
    layers = decoder_layers(model)
    num_layers = model.config.num_hidden_layers
    if len(layers) != num_layers:
        raise UnsupportedModelError(f"model has {len(layers)} decoder layers but config.num_hidden_layers="
                                    f"{num_layers}; it was modified outside layerdrop-patch.")
    drop_config.validate(num_layers)

    previous = DropConfig.from_model(model)
    if previous is not None:
        restored_attn = sorted(set(previous.attn) - set(drop_config.attn))
        restored_mlp = sorted(set(previous.mlp) - set(drop_config.mlp))
        if restored_attn or restored_mlp:
            raise ConfigError(
                f"this model already had attention {restored_attn} / MLP {restored_mlp} removed and their weights "
                "are gone; a new DropConfig must include every earlier drop. Reload the base model to start over."
            )

    model.config.drop_config = drop_config.to_dict()
    _m.prune_model(model)
    return model


def kept_attention_layers(model_or_config: Any) -> list[int]:
    """Original indices of the attention layers that remain (cache layer j serves the j-th of them)."""
    return _m.kept_attention_layers(getattr(model_or_config, "config", model_or_config))


def returned_cache(output: Any) -> Any:
    """The KV cache a forward or generate() output carries: `output.cache` from transformers 5.24 on,
    `output.past_key_values` before (reading the old name on 5.24 logs a deprecation)."""
    fields = getattr(type(output), "__dataclass_fields__", {})
    return output.cache if "cache" in fields else output.past_key_values


def kv_cache_bytes(cache: Any) -> int:
    """Bytes held by the key/value tensors of a transformers `Cache` (allocated storage, not just filled)."""
    total = 0
    for layer in getattr(cache, "layers", []):
        for name in ("keys", "values"):
            tensor = getattr(layer, name, None)
            if isinstance(tensor, torch.Tensor):
                total += tensor.numel() * tensor.element_size()
    return total


def parameter_bytes(model: torch.nn.Module) -> int:
    """Bytes of all distinct parameters and buffers (tied weights counted once)."""
    seen, total = set(), 0
    for tensor in list(model.parameters()) + list(model.buffers()):
        key = tensor.data_ptr() if tensor.device.type != "meta" else id(tensor)
        if key in seen:
            continue
        seen.add(key)
        total += tensor.numel() * tensor.element_size()
    return total
