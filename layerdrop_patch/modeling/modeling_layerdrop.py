# Copyright 2026 the layerdrop-patch developers. Apache-2.0.
"""The one implementation of attention/MLP sublayer dropping for transformers decoder models.

This file is used in two places, unchanged:
  * by the `layerdrop_patch` library (`apply_drop`, `from_pretrained`), and
  * copied verbatim next to the weights of every saved pruned checkpoint, where transformers loads it as
    remote code (`trust_remote_code=True`) on machines that do not have `layerdrop_patch` installed.
It therefore imports nothing but torch and transformers, reads nothing from disk or network and holds
only the modelling logic. Keep it that way: it is what users audit before trusting a checkpoint.

How a drop works:
  1. `model.config.drop_config` (a JSON dict: {"attn": [...], "mlp": [...], ...}) names the decoder layers
     whose attention and/or MLP are removed.
  2. `prune_model` deletes each dropped sublayer together with its norm(s) from the module tree (so its
     memory is freed and its weights are neither saved nor loaded), sets `layer.skip_attn/skip_mlp`, and
     gives partially dropped layers a forward in which the residual passes straight through the removed part.
  3. Compact KV cache: the attention layers that remain get consecutive cache indices
     (`self_attn.layer_idx` = 0, 1, 2, ...), and every cache the model builds has exactly that many layers,
     each of the kind (full / sliding) of the attention layer it serves. So masks and sequence lengths,
     which transformers reads from cache layer 0, come from a layer that really is filled.
"""

from __future__ import annotations

import contextvars
import copy
import re
from dataclasses import dataclass

from transformers import Cache, DynamicCache, StaticCache
from transformers import Gemma2Config, Gemma2ForCausalLM, Gemma3ForCausalLM, Gemma3TextConfig
from transformers import LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM
from transformers import Phi3Config, Phi3ForCausalLM, Qwen2Config, Qwen2ForCausalLM, Qwen3Config, Qwen3ForCausalLM

MODEL_TYPE_PREFIX = "layerdrop_"


# --------------------------------------------------------------------------- architecture descriptors
@dataclass(frozen=True)
class Sublayer:
    """Attribute names (on the decoder layer) of one residual branch: out = x + dropout(post(module(pre(x))))."""

    module: str
    pre_norm: str
    post_norm: str | None = None
    dropout: str | None = None

    def attribute_names(self) -> tuple[str, ...]:
        return tuple(n for n in (self.module, self.pre_norm, self.post_norm, self.dropout) if n)


@dataclass(frozen=True)
class Architecture:
    """How to find the two residual branches of one model family's decoder layer."""

    attn: Sublayer
    mlp: Sublayer


# Llama-style: one RMSNorm before each sublayer. Qwen3's q/k norms live inside `self_attn`, so they go with it.
_PRE_NORM_ONLY = Architecture(
    attn=Sublayer("self_attn", "input_layernorm"),
    mlp=Sublayer("mlp", "post_attention_layernorm"),
)
# Gemma 2/3 normalise each branch's output too; in these layers `post_attention_layernorm` is that output norm.
_PRE_AND_POST_NORM = Architecture(
    attn=Sublayer("self_attn", "input_layernorm", "post_attention_layernorm"),
    mlp=Sublayer("mlp", "pre_feedforward_layernorm", "post_feedforward_layernorm"),
)
# Phi-3 (fused qkv_proj / gate_up_proj, both inside their modules) adds a dropout on each branch's output.
_PRE_NORM_RESID_DROPOUT = Architecture(
    attn=Sublayer("self_attn", "input_layernorm", dropout="resid_attn_dropout"),
    mlp=Sublayer("mlp", "post_attention_layernorm", dropout="resid_mlp_dropout"),
)

# model_type -> descriptor. Adding a family = one entry here (plus its remote-code classes below and a
# parametrised test). The library's `architectures.py` builds its support table from this dict.
# Attention modules of every family here read `layer_idx` only to address the cache; sliding vs full is
# fixed per module at construction (or by config for the whole model), so remapping `layer_idx` is safe.
ARCHITECTURES: dict[str, Architecture] = {
    "llama": _PRE_NORM_ONLY,
    "mistral": _PRE_NORM_ONLY,
    "qwen2": _PRE_NORM_ONLY,
    "qwen3": _PRE_NORM_ONLY,
    "gemma2": _PRE_AND_POST_NORM,
    "gemma3_text": _PRE_AND_POST_NORM,
    "phi3": _PRE_NORM_RESID_DROPOUT,
}


def base_model_type(config) -> str:
    """The transformers model_type a (possibly layerdrop_-prefixed) config is built on."""
    model_type = getattr(config, "model_type", "") or ""
    return model_type[len(MODEL_TYPE_PREFIX):] if model_type.startswith(MODEL_TYPE_PREFIX) else model_type


def architecture_for(config) -> Architecture:
    model_type = base_model_type(config)
    if model_type not in ARCHITECTURES:
        raise NotImplementedError(
            f"layerdrop: model_type {model_type!r} is not supported; supported model types are "
            f"{sorted(ARCHITECTURES)}."
        )
    return ARCHITECTURES[model_type]


def dropped_sets(config) -> tuple[frozenset[int], frozenset[int]]:
    """(attention layers dropped, MLP layers dropped) as recorded in `config.drop_config`."""
    drop = getattr(config, "drop_config", None) or {}
    return frozenset(drop.get("attn", ())), frozenset(drop.get("mlp", ()))


def kept_attention_layers(config) -> list[int]:
    attn_dropped, _ = dropped_sets(config)
    return [i for i in range(config.num_hidden_layers) if i not in attn_dropped]


def dropped_weight_patterns(config) -> set[str]:
    """Regexes matching the state-dict keys of every dropped sublayer (e.g. `layers.3.self_attn.`)."""
    arch = architecture_for(config)
    attn_dropped, mlp_dropped = dropped_sets(config)
    patterns = set()
    for layers, part in ((attn_dropped, arch.attn), (mlp_dropped, arch.mlp)):
        for layer in layers:
            patterns.update(rf"(^|\.)layers\.{layer}\.{re.escape(name)}\." for name in part.attribute_names())
    return patterns


# Set only while `from_pretrained` prunes a *base* checkpoint at load time (see LayerDropCausalLMMixin).
_SKIP_DROPPED_WEIGHTS = contextvars.ContextVar("layerdrop_skip_dropped_weights", default=False)


# --------------------------------------------------------------------------- decoder layer
def _run_sublayer(layer, part: Sublayer, hidden_states, **attention_kwargs):
    """x + dropout(post_norm(module(pre_norm(x)))) -- the same op order as the stock decoder layers."""
    residual = hidden_states
    hidden_states = getattr(layer, part.pre_norm)(hidden_states)
    if attention_kwargs:
        hidden_states = getattr(layer, part.module)(hidden_states=hidden_states, **attention_kwargs)[0]
    else:
        hidden_states = getattr(layer, part.module)(hidden_states)
    if part.post_norm is not None:
        hidden_states = getattr(layer, part.post_norm)(hidden_states)
    if part.dropout is not None:
        hidden_states = getattr(layer, part.dropout)(hidden_states)
    return residual + hidden_states


class SkippableDecoderLayerMixin:
    """Mixed into a decoder layer class. Layers with nothing dropped run their stock forward untouched
    (bit-identical outputs); a removed sublayer contributes nothing and the residual passes through."""

    skip_attn: bool = False
    skip_mlp: bool = False

    def forward(self, hidden_states, *args, **kwargs):
        if not (self.skip_attn or self.skip_mlp):
            return super().forward(hidden_states, *args, **kwargs)
        if args:
            raise TypeError("layerdrop: a partially dropped decoder layer takes its extra inputs as keywords.")
        if not self.skip_attn:
            hidden_states = _run_sublayer(self, self.layerdrop_arch.attn, hidden_states, **kwargs)
        if not self.skip_mlp:
            hidden_states = _run_sublayer(self, self.layerdrop_arch.mlp, hidden_states)
        return hidden_states


# --------------------------------------------------------------------------- compact KV cache
def compact_cache_config(config):
    """A shallow copy of `config` that describes only the attention layers that remain, in order.

    transformers sizes every cache (and picks each cache layer's kind) from `num_hidden_layers` and
    `layer_types`; giving it this view yields a cache with one layer per kept attention layer.
    """
    kept = kept_attention_layers(config)
    view = copy.copy(config)
    view.__dict__.pop("_heterogeneity_spec", None)  # per-layer overrides are indexed by original layer
    view.num_hidden_layers = len(kept)
    layer_types = getattr(config, "layer_types", None)
    if layer_types is not None:
        view.layer_types = [layer_types[i] for i in kept]
    return view


def make_compact_cache(config, like: Cache | None = None, max_cache_len: int | None = None) -> Cache:
    """A cache holding only the kept attention layers: static if `like` is static or `max_cache_len` is
    given, otherwise dynamic. `like` (a cache transformers just built for the full model) donates its
    settings (length, offloading, early initialisation)."""
    view = compact_cache_config(config)
    offloading = getattr(like, "offloading", False)
    if isinstance(like, StaticCache) or (like is None and max_cache_len is not None):
        if max_cache_len is None:  # the longest layer: in hybrid models layer 0 may be a short sliding one
            max_cache_len = max(layer.max_cache_len for layer in like.layers)
        cache = StaticCache(config=view, max_cache_len=max_cache_len, offloading=offloading)
        first = like.layers[0] if like is not None and like.layers else None
        if first is not None and getattr(first, "is_initialized", False) and first.keys is not None:
            batch, heads, _, head_dim = first.keys.shape
            cache.early_initialization(
                batch_size=batch, num_heads=heads, head_dim=head_dim, dtype=first.keys.dtype, device=first.keys.device
            )
        return cache
    if like is not None and not isinstance(like, DynamicCache):
        raise NotImplementedError(
            f"layerdrop: {type(like).__name__} is not supported for dropped models; use the dynamic or static cache."
        )
    return DynamicCache(config=view, offloading=offloading)


def check_cache_layout(cache, config) -> None:
    """Refuse a cache built for the full model: its layer kinds would not line up with the compact indices."""
    if not isinstance(cache, Cache):
        return
    expected = len(kept_attention_layers(config))
    if len(cache.layers) > expected:
        raise ValueError(
            f"layerdrop: this model keeps {expected} of {config.num_hidden_layers} attention layers, but the cache "
            f"passed in has {len(cache.layers)} layers (built for the unpruned model). Build it with "
            f"`model.make_cache()` (or DynamicCache() without a config), or let generate() create it."
        )


# --------------------------------------------------------------------------- model-level mixins
class LayerDropBaseModelMixin:
    """Mixed into the decoder stack (e.g. LlamaModel): builds compact caches when none is passed."""

    def forward(self, *args, past_key_values=None, use_cache=None, **kwargs):
        wants_cache = use_cache if use_cache is not None else getattr(self.config, "use_cache", False)
        if past_key_values is None and wants_cache:
            past_key_values = make_compact_cache(self.config)
        elif past_key_values is not None:
            check_cache_layout(past_key_values, self.config)
        return super().forward(*args, past_key_values=past_key_values, use_cache=use_cache, **kwargs)


class LayerDropCausalLMMixin:
    """Mixed into the *ForCausalLM class: prunes at construction (remote-code loading) and makes
    `generate()` build compact caches."""

    def __init__(self, config, *args, **kwargs):
        super().__init__(config, *args, **kwargs)
        prune_model(self)
        if _SKIP_DROPPED_WEIGHTS.get():
            self._keys_to_ignore_on_load_unexpected = set(self._keys_to_ignore_on_load_unexpected or ())
            self._keys_to_ignore_on_load_unexpected |= dropped_weight_patterns(config)

    @classmethod
    def from_pretrained(cls, *args, layerdrop_allow_dropped_weights: bool = False, **kwargs):
        """Load, then refuse any disagreement between the weights and the DropConfig.

        transformers would random-initialise missing weights and ignore extra ones with a warning; for a
        pruned checkpoint either means it does not match its DropConfig, so we raise instead. When a *base*
        checkpoint is pruned at load time (`layerdrop_allow_dropped_weights=True`), weights of the dropped
        sublayers are expected in it and skipped without ever being materialised.
        """
        want_info = kwargs.pop("output_loading_info", False)
        token = _SKIP_DROPPED_WEIGHTS.set(layerdrop_allow_dropped_weights)
        try:
            model, info = super().from_pretrained(*args, output_loading_info=True, **kwargs)
        finally:
            _SKIP_DROPPED_WEIGHTS.reset(token)
        unexpected = sorted(info.get("unexpected_keys") or ())
        problems = {
            "missing (kept sublayers without weights)": sorted(info.get("missing_keys") or ()),
            "unexpected (weights for dropped or unknown modules)": unexpected,
            "mismatched shapes": sorted(str(k) for k in info.get("mismatched_keys") or ()),
        }
        problems = {kind: keys for kind, keys in problems.items() if keys}
        if problems:
            details = "; ".join(f"{kind}: {', '.join(keys[:20])}{' ...' if len(keys) > 20 else ''}"
                                for kind, keys in problems.items())
            raise ValueError(
                "layerdrop: the checkpoint's weights do not match its drop_config "
                f"(attn={sorted(dropped_sets(model.config)[0])}, mlp={sorted(dropped_sets(model.config)[1])}). "
                f"{details}. The checkpoint is corrupt or its config.json was edited; re-export it from the base model."
            )
        return (model, info) if want_info else model

    def make_cache(self, max_cache_len: int | None = None) -> Cache:
        """A cache for this model: dynamic, or static with `max_cache_len` slots."""
        return make_compact_cache(self.config, max_cache_len=max_cache_len)

    def _prepare_cache_for_generation(self, generation_config, model_kwargs, *args, **kwargs):
        user_cache = model_kwargs.get("past_key_values")
        result = super()._prepare_cache_for_generation(generation_config, model_kwargs, *args, **kwargs)
        cache = model_kwargs.get("past_key_values")
        if cache is not None and cache is not user_cache:
            model_kwargs["past_key_values"] = make_compact_cache(self.config, like=cache)
        return result


# (mixin, stock class) -> mixed class; the explicit remote-code classes at the bottom register here too,
# so a model patched in memory and the same model loaded from a checkpoint have the same class.
_MIXED_CLASSES: dict[tuple[type, type], type] = {}


def _mix_in(obj, mixin: type) -> None:
    """Give `obj` the class `LayerDrop<Its class>` = (mixin, its class); no-op if it already has it."""
    cls = type(obj)
    if issubclass(cls, mixin):
        return
    key = (mixin, cls)
    if key not in _MIXED_CLASSES:
        _MIXED_CLASSES[key] = type("LayerDrop" + cls.__name__, (mixin, cls), {"__module__": __name__})
    obj.__class__ = _MIXED_CLASSES[key]


def _prune_layer(layer, arch: Architecture, skip_attn: bool, skip_mlp: bool) -> None:
    for part, skip in ((arch.attn, skip_attn), (arch.mlp, skip_mlp)):
        if skip:
            for name in part.attribute_names():
                layer._modules.pop(name, None)
    if skip_attn or skip_mlp:  # intact layers keep their stock class: no per-token cost at all
        _mix_in(layer, SkippableDecoderLayerMixin)
        layer.layerdrop_arch = arch
    layer.skip_attn = skip_attn
    layer.skip_mlp = skip_mlp


def prune_model(model) -> None:
    """Make `model`'s structure match `model.config.drop_config` (in place, idempotent)."""
    config = model.config
    arch = architecture_for(config)
    attn_dropped, mlp_dropped = dropped_sets(config)
    layers = model.model.layers
    for index, layer in enumerate(layers):
        _prune_layer(layer, arch, index in attn_dropped, index in mlp_dropped)
    for cache_index, layer_index in enumerate(kept_attention_layers(config)):
        getattr(layers[layer_index], arch.attn.module).layer_idx = cache_index
    _mix_in(model.model, LayerDropBaseModelMixin)
    _mix_in(model, LayerDropCausalLMMixin)


# --------------------------------------------------------------------------- remote-code classes
# Saved checkpoints name these in config.json's `auto_map`. The `layerdrop_` model types make plain
# transformers refuse such a checkpoint without `trust_remote_code` instead of silently random-initialising
# the removed weights.
def _remote_pair(config_class: type, model_class: type) -> tuple[type, type]:
    """LayerDrop<X>Config / LayerDrop<X>ForCausalLM for one family, named after the stock classes."""
    prefix = "LayerDrop"
    config = type(prefix + config_class.__name__, (config_class,),
                  {"model_type": MODEL_TYPE_PREFIX + config_class.model_type, "__module__": __name__})
    model = type(prefix + model_class.__name__, (LayerDropCausalLMMixin, model_class),
                 {"config_class": config, "__module__": __name__})
    return config, model


LayerDropLlamaConfig, LayerDropLlamaForCausalLM = _remote_pair(LlamaConfig, LlamaForCausalLM)
LayerDropMistralConfig, LayerDropMistralForCausalLM = _remote_pair(MistralConfig, MistralForCausalLM)
LayerDropQwen2Config, LayerDropQwen2ForCausalLM = _remote_pair(Qwen2Config, Qwen2ForCausalLM)
LayerDropQwen3Config, LayerDropQwen3ForCausalLM = _remote_pair(Qwen3Config, Qwen3ForCausalLM)
LayerDropGemma2Config, LayerDropGemma2ForCausalLM = _remote_pair(Gemma2Config, Gemma2ForCausalLM)
LayerDropGemma3TextConfig, LayerDropGemma3ForCausalLM = _remote_pair(Gemma3TextConfig, Gemma3ForCausalLM)
LayerDropPhi3Config, LayerDropPhi3ForCausalLM = _remote_pair(Phi3Config, Phi3ForCausalLM)

REMOTE_CLASSES = (LayerDropLlamaForCausalLM, LayerDropMistralForCausalLM, LayerDropQwen2ForCausalLM,
                  LayerDropQwen3ForCausalLM, LayerDropGemma2ForCausalLM, LayerDropGemma3ForCausalLM,
                  LayerDropPhi3ForCausalLM)
for _remote_class in REMOTE_CLASSES:  # patching a stock model in memory yields the same class
    _MIXED_CLASSES[(LayerDropCausalLMMixin, _remote_class.__mro__[2])] = _remote_class
