# Copyright 2026 the layerdrop-patch developers. Apache-2.0.
"""What a layer drop is, as data: the supported families, the `drop_config` record, and the shipped configs.

Shipped, unchanged, next to the weights of every pruned checkpoint together with `modeling_layerdrop.py`
(transformers copies both and loads them as remote code), and used by the `layerdrop_patch` library itself. It
imports nothing but transformers, reads no file and opens no connection: it is what users audit before they
trust a checkpoint.

`drop_config` (inside config.json) names the decoder layers whose attention and/or MLP are gone:
    {"format_version": 1, "attn": [3, 7], "mlp": [7], "method": ..., "metric": ..., ...}
`check_drop_config` is the one set of rules for it; the library's `DropConfig` and the shipped configs both
apply it, so a tampered or hand-edited config.json is refused the same way whether or not the package is there.
"""

from __future__ import annotations

from dataclasses import dataclass

from transformers import Gemma2Config, Gemma2ForCausalLM, Gemma3ForCausalLM, Gemma3TextConfig
from transformers import LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM
from transformers import Phi3Config, Phi3ForCausalLM, Qwen2Config, Qwen2ForCausalLM, Qwen3Config, Qwen3ForCausalLM

MODEL_TYPE_PREFIX = "layerdrop_"
DROP_CONFIG_FORMAT_VERSION = 1
# Every key a drop_config may hold; the library's DropConfig has exactly these fields (a test keeps them equal).
DROP_CONFIG_KEYS = ("format_version", "attn", "mlp", "method", "metric", "scores", "calibration", "base_model",
                    "library_version")


# --------------------------------------------------------------------------- architecture descriptors
@dataclass(frozen=True)
class Sublayer:
    """Attribute names (on the decoder layer) of one residual branch: out = x + dropout(post(module(pre(x)))),
    and the names of the linear projections inside `module` (what LoRA and AWQ act on)."""

    module: str
    pre_norm: str
    post_norm: str | None = None
    dropout: str | None = None
    projections: tuple[str, ...] = ()

    def attribute_names(self) -> tuple[str, ...]:
        return tuple(n for n in (self.module, self.pre_norm, self.post_norm, self.dropout) if n)


@dataclass(frozen=True)
class Architecture:
    """How to find the two residual branches of one model family's decoder layer."""

    attn: Sublayer
    mlp: Sublayer


_QKVO, _GATE_UP_DOWN = ("q_proj", "k_proj", "v_proj", "o_proj"), ("gate_proj", "up_proj", "down_proj")
# Llama-style: one RMSNorm before each sublayer. Qwen3's q/k norms live inside `self_attn`, so they go with it.
_PRE_NORM_ONLY = Architecture(
    attn=Sublayer("self_attn", "input_layernorm", projections=_QKVO),
    mlp=Sublayer("mlp", "post_attention_layernorm", projections=_GATE_UP_DOWN),
)
# Gemma 2/3 normalise each branch's output too; in these layers `post_attention_layernorm` is that output norm.
_PRE_AND_POST_NORM = Architecture(
    attn=Sublayer("self_attn", "input_layernorm", "post_attention_layernorm", projections=_QKVO),
    mlp=Sublayer("mlp", "pre_feedforward_layernorm", "post_feedforward_layernorm", projections=_GATE_UP_DOWN),
)
# Phi-3 fuses q/k/v and gate/up into one projection each, and adds a dropout on each branch's output.
_PRE_NORM_RESID_DROPOUT = Architecture(
    attn=Sublayer("self_attn", "input_layernorm", dropout="resid_attn_dropout", projections=("qkv_proj", "o_proj")),
    mlp=Sublayer("mlp", "post_attention_layernorm", dropout="resid_mlp_dropout",
                 projections=("gate_up_proj", "down_proj")),
)

# model_type -> (stock config class, stock causal-LM class, descriptor). Adding a family is one entry here plus
# its case in the tests; the shipped classes and the library's support table are derived from it.
# Attention modules of every family here read `layer_idx` only to address the cache; sliding vs full is
# fixed per module at construction (or by config for the whole model), so remapping `layer_idx` is safe.
FAMILIES: dict[str, tuple[type, type, Architecture]] = {
    "llama": (LlamaConfig, LlamaForCausalLM, _PRE_NORM_ONLY),
    "mistral": (MistralConfig, MistralForCausalLM, _PRE_NORM_ONLY),
    "qwen2": (Qwen2Config, Qwen2ForCausalLM, _PRE_NORM_ONLY),
    "qwen3": (Qwen3Config, Qwen3ForCausalLM, _PRE_NORM_ONLY),
    "gemma2": (Gemma2Config, Gemma2ForCausalLM, _PRE_AND_POST_NORM),
    "gemma3_text": (Gemma3TextConfig, Gemma3ForCausalLM, _PRE_AND_POST_NORM),
    "phi3": (Phi3Config, Phi3ForCausalLM, _PRE_NORM_RESID_DROPOUT),
}


def base_model_type(config) -> str:
    """The transformers model_type a (possibly layerdrop_-prefixed) config is built on."""
    model_type = getattr(config, "model_type", "") or ""
    return model_type[len(MODEL_TYPE_PREFIX):] if model_type.startswith(MODEL_TYPE_PREFIX) else model_type


def architecture_for(config) -> Architecture:
    model_type = base_model_type(config)
    if model_type not in FAMILIES:
        raise NotImplementedError(
            f"layerdrop: model_type {model_type!r} is not supported; supported model types are {sorted(FAMILIES)}."
        )
    return FAMILIES[model_type][2]


# --------------------------------------------------------------------------- the drop_config record
def _layer_indices(name: str, values, num_layers: int | None) -> list[int]:
    if isinstance(values, (str, bytes, dict)) or not isinstance(values, (list, tuple)):
        raise ValueError(f"drop_config.{name} must be a list of decoder-layer indices, got {values!r:.80}.")
    seen = []
    valid = f"valid indices are 0..{num_layers - 1}" if num_layers else "indices are 0-based"
    for index in values:
        if isinstance(index, bool) or not isinstance(index, int):
            raise ValueError(f"drop_config.{name}: {index!r:.40} is not an integer layer index.")
        if index < 0:
            hint = f", write {num_layers + index} instead" if num_layers and num_layers + index >= 0 else ""
            raise ValueError(f"drop_config.{name}: layer index {index} is negative; {valid} (negative indexing "
                             f"is not supported{hint}).")
        if num_layers is not None and index >= num_layers:
            raise ValueError(f"drop_config.{name}: layer index {index} is out of range; this model has "
                             f"{num_layers} decoder layers, so {valid}.")
        if index in seen:
            raise ValueError(f"drop_config.{name}: layer index {index} is listed twice.")
        seen.append(index)
    return seen


def check_drop_config(data, num_layers: int | None = None) -> tuple[list[int], list[int]]:
    """The (attn, mlp) indices of a drop_config dict, after checking every rule; ValueError names the problem."""
    if not isinstance(data, dict):
        raise ValueError(f"drop_config must be a JSON object (dict), got {type(data).__name__}.")
    version = data.get("format_version")
    if isinstance(version, bool) or not isinstance(version, int):
        raise ValueError(f"drop_config.format_version must be an integer (this release writes "
                         f"{DROP_CONFIG_FORMAT_VERSION}), got {version!r:.40}; it was not written by layerdrop-patch.")
    if version > DROP_CONFIG_FORMAT_VERSION:
        raise ValueError(f"drop_config format_version {version} is newer than this code understands "
                         f"({DROP_CONFIG_FORMAT_VERSION}); upgrade with `pip install -U layerdrop-patch`.")
    unknown = sorted(str(k)[:40] for k in data if k not in DROP_CONFIG_KEYS)
    if unknown:
        raise ValueError(f"drop_config has unknown keys {unknown[:10]}; known keys are {list(DROP_CONFIG_KEYS)}.")
    return (_layer_indices("attn", data.get("attn", []), num_layers),
            _layer_indices("mlp", data.get("mlp", []), num_layers))


def dropped_sets(config) -> tuple[frozenset[int], frozenset[int]]:
    """(attention layers dropped, MLP layers dropped) as recorded in `config.drop_config`."""
    drop = getattr(config, "drop_config", None) or {}
    return frozenset(drop.get("attn", ())), frozenset(drop.get("mlp", ()))


def kept_attention_layers(config) -> list[int]:
    attn_dropped, _ = dropped_sets(config)
    return [i for i in range(config.num_hidden_layers) if i not in attn_dropped]


def per_layer_skip_config(config) -> dict[str, dict[str, list[str]]]:
    """The drop in transformers' heterogeneous-config format: {layer: {"skip": [removed module names]}}."""
    arch = architecture_for(config)
    attn_dropped, mlp_dropped = dropped_sets(config)
    entries = {}
    for layer in sorted(attn_dropped | mlp_dropped):
        names = (arch.attn.attribute_names() if layer in attn_dropped else ()) + \
            (arch.mlp.attribute_names() if layer in mlp_dropped else ())
        entries[str(layer)] = {"skip": sorted(names)}
    return entries


# --------------------------------------------------------------------------- the shipped configs
class LayerDropConfigMixin:
    """Mixed into each family's config class. `drop_config` is checked on construction, so a checkpoint whose
    config.json breaks its rules does not load. On save the same drop is also written as `per_layer_config`
    skip entries (transformers' heterogeneous-config format) for readers of that format; on load those entries
    must agree with `drop_config` and are not kept, so a config read from disk equals one patched in memory."""

    _auto_class = "AutoConfig"  # transformers' save_pretrained then writes auto_map and copies this file

    def __post_init__(self, **kwargs):  # transformers' configs are dataclasses: extra keys arrive here
        per_layer_config = kwargs.pop("per_layer_config", None)
        super().__post_init__(**kwargs)
        drop = getattr(self, "drop_config", None)
        if drop is not None:
            check_drop_config(drop, self.num_hidden_layers)
        if per_layer_config and drop and {str(int(k)): v for k, v in per_layer_config.items()} != \
                per_layer_skip_config(self):
            raise ValueError(
                f"layerdrop: config.json's per_layer_config {str(per_layer_config):.200} disagrees with its "
                f"drop_config {str(drop):.200}; the file was edited by hand. Re-save the model from its base."
            )

    def to_dict(self):
        output = super().to_dict()
        if getattr(self, "drop_config", None):
            output["per_layer_config"] = per_layer_skip_config(self)
        return output


# LayerDrop<X>Config for every family (e.g. LayerDropLlamaConfig), as module attributes so that config.json's
# `auto_map` finds them. The `layerdrop_` model types make plain transformers refuse a pruned checkpoint without
# `trust_remote_code`, instead of silently random-initialising the removed weights.
SHIPPED_CONFIGS: dict[type, type] = {}  # stock config class -> shipped config class
for _config_class, _, _ in FAMILIES.values():
    _shipped = type("LayerDrop" + _config_class.__name__, (LayerDropConfigMixin, _config_class),
                    {"model_type": MODEL_TYPE_PREFIX + _config_class.model_type, "__module__": __name__})
    globals()[_shipped.__name__] = SHIPPED_CONFIGS[_config_class] = _shipped
