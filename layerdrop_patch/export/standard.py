"""Export a dropped model as an ordinary checkpoint of its base architecture (no remote code).

This is the most portable format: it *is* a stock checkpoint of the base architecture (any family
layerdrop-patch supports) that happens to have fewer layers, what mergekit's "passthrough" produces, so plain
transformers loads it without remote code and so does any engine that loads the base architecture (vLLM,
llama.cpp's converter; only the transformers load is tested here). It is only possible when the kept sublayers still form complete decoder layers:

* whole-block drops: the remaining layers are renumbered 0..k-1 and `num_hidden_layers` is reduced;
* more generally any drop whose kept branches pack into full (attention, MLP) pairs, e.g. "MLP of layer i
  and attention of layer i+1" merge into one ordinary layer (see `common.pack_layers`).

Anything else (a lone attention or a lone MLP left in a layer) cannot be expressed by a homogeneous
architecture; we refuse and point to the `decilm` (vLLM) and `gguf` (llama.cpp) exports, which describe
per-layer structure. The exported model computes exactly what the dropped model computes (tests compare
logits bit for bit).
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import torch

from layerdrop_patch.architectures import drop_of
from layerdrop_patch.export.common import ExportError, pack_layers
from layerdrop_patch.export.registry import alternatives, check_supported, register_format
from layerdrop_patch.files import staged_directory
from layerdrop_patch.architectures import base_model_type, get_architecture

__all__ = ["export_standard", "standard_layer_map"]

# config keys that only make sense for a layerdrop checkpoint (or a quantised source) and must not leak
_DROPPED_CONFIG_KEYS = ("drop_config", "per_layer_config", "auto_map", "_name_or_path", "quantization_config",
                        "transformers_version", "architectures", "model_type")


def standard_layer_map(model) -> list[tuple[int, int]]:
    """[(original attention layer, original MLP layer)] for each exported layer; raises if not expressible."""
    layers = pack_layers(model)
    incomplete = [layer for layer in layers if layer.attn is None or layer.mlp is None]
    if incomplete:
        drop = drop_of(model)
        described = "; ".join(layer.describe() for layer in incomplete[:6])
        raise ExportError(
            f"the drop ({drop.describe()}) leaves layers with only an attention or only an MLP ({described}"
            f"{' ...' if len(incomplete) > 6 else ''}), which a standard {base_model_type(model.config)} "
            f"checkpoint cannot express: every layer of it has both. Export with {alternatives(model, 'standard')}, "
            "which store per-layer structure, or drop whole blocks."
        )
    if not layers:
        raise ExportError("every sublayer is dropped; there is nothing to export.")
    return [(layer.attn, layer.mlp) for layer in layers]


def _standard_config(model, layer_map: list[tuple[int, int]]):
    from transformers import AutoConfig

    model_type = base_model_type(model.config)
    data = model.config.to_dict()
    for key in _DROPPED_CONFIG_KEYS:
        data.pop(key, None)
    data["num_hidden_layers"] = len(layer_map)
    if data.get("layer_types") is not None:
        data["layer_types"] = [data["layer_types"][attn] for attn, _ in layer_map]
    config = AutoConfig.for_model(model_type, **data)
    return config


def _renamed_state_dict(model, layer_map: list[tuple[int, int]]) -> dict[str, torch.Tensor]:
    arch = get_architecture(model)
    attn_names, mlp_names = arch.attn.attribute_names(), arch.mlp.attribute_names()
    state = {k: v.detach() for k, v in model.state_dict().items()}
    out = {k: v for k, v in state.items() if not k.startswith("model.layers.")}
    for new, (attn, mlp) in enumerate(layer_map):
        for source, names in ((attn, attn_names), (mlp, mlp_names)):
            prefix = f"model.layers.{source}."
            for key, tensor in state.items():
                if key.startswith(prefix) and key[len(prefix):].split(".", 1)[0] in names:
                    out[f"model.layers.{new}.{key[len(prefix):]}"] = tensor
    return out


@register_format("standard", target="directory", families=None, engines="transformers, vLLM",
                 description="a stock checkpoint of the base architecture with fewer, renumbered layers")
def export_standard(model, out: str | os.PathLike, tokenizer=None, *, overwrite: bool = False,
                    max_shard_size: str | int = "5GB") -> Path:
    """Write `model` (dropped in place by `apply_drop`) as a stock checkpoint with fewer layers; returns `out`."""
    from transformers import AutoModelForCausalLM

    check_supported(model, "standard")
    layer_map = standard_layer_map(model)
    config = _standard_config(model, layer_map)
    state = _renamed_state_dict(model, layer_map)

    with torch.device("meta"):
        stock = AutoModelForCausalLM.from_config(config, dtype=next(model.parameters()).dtype)
    if getattr(config, "tie_word_embeddings", False) and "lm_head.weight" not in state:
        state["lm_head.weight"] = state["model.embed_tokens.weight"]
    # strict: every parameter of the stock model must come from the dropped model, and nothing else
    result = stock.load_state_dict(state, strict=True, assign=True)
    if result.missing_keys or result.unexpected_keys:  # pragma: no cover - strict=True raises first
        raise ExportError(f"weight mapping failed: {result}")
    if getattr(config, "tie_word_embeddings", False):
        stock.tie_weights()
    if getattr(model, "generation_config", None) is not None:
        stock.generation_config = copy.deepcopy(model.generation_config)

    drop = drop_of(model)
    with staged_directory(out, overwrite=overwrite) as staging:
        stock.save_pretrained(staging, max_shard_size=max_shard_size)
        if tokenizer is not None:
            tokenizer.save_pretrained(staging)
        provenance = {
            "format": "standard",
            "base_model_type": base_model_type(model.config),
            "original_num_hidden_layers": model.config.num_hidden_layers,
            "layers": [{"attention_from": a, "mlp_from": m} for a, m in layer_map],
            "drop_config": drop.to_dict(),
        }
        (staging / "layerdrop_export.json").write_text(json.dumps(provenance, indent=2) + "\n")
    return Path(out)
