# Copyright 2026 the layerdrop-patch developers. Apache-2.0.
"""The one implementation of attention/MLP sublayer dropping for transformers decoder models.

This file is used in two places, unchanged:
  * by the `layerdrop_patch` library (`apply_drop`, `from_pretrained`), and
  * copied verbatim next to the weights of every saved pruned checkpoint, where transformers loads it as
    remote code (`trust_remote_code=True`) on machines that do not have `layerdrop_patch` installed.
It therefore imports nothing but torch, transformers and its sibling `configuration_layerdrop.py` (the
families and the drop_config rules, shipped with it), reads nothing from disk or network and holds only the
modelling logic. Keep it that way: it is what users audit before trusting a checkpoint.

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
import inspect
import re

from transformers import Cache, DynamicCache, LlamaModel, StaticCache

from .configuration_layerdrop import (FAMILIES, SHIPPED_CONFIGS, Architecture, Sublayer, architecture_for,
                                      dropped_sets, kept_attention_layers)

# The keyword under which decoder forwards and generate() carry the KV cache. transformers 5.24 renamed
# `past_key_values` to `cache` (the old name warns until 5.40); read it off the installed release rather than
# guessing from its version number, and accept either name from callers.
CACHE_KWARG = "cache" if "cache" in inspect.signature(LlamaModel.forward).parameters else "past_key_values"
CACHE_KWARGS = ("cache", "past_key_values")


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


def pop_cache_argument(kwargs: dict):
    """Remove the cache from `kwargs` under either keyword and return it (None if absent); two different
    caches under the two names are refused, since one of them would silently be ignored."""
    caches = [c for c in (kwargs.pop(name, None) for name in CACHE_KWARGS) if c is not None]
    if len(caches) == 2 and caches[0] is not caches[1]:
        raise ValueError(f"layerdrop: both `cache` and `past_key_values` were given; pass the cache once, as "
                         f"`{CACHE_KWARG}=`.")
    return caches[0] if caches else None


# --------------------------------------------------------------------------- model-level mixins
class LayerDropBaseModelMixin:
    """Mixed into the decoder stack (e.g. LlamaModel): builds compact caches when none is passed."""

    def forward(self, *args, use_cache=None, **kwargs):
        cache = pop_cache_argument(kwargs)
        wants_cache = use_cache if use_cache is not None else getattr(self.config, "use_cache", False)
        if cache is None and wants_cache:
            cache = make_compact_cache(self.config)
        elif cache is not None:
            check_cache_layout(cache, self.config)
        kwargs[CACHE_KWARG] = cache
        return super().forward(*args, use_cache=use_cache, **kwargs)


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
        kwargs.setdefault("ignore_mismatched_sizes", True)  # reported below, by name, instead of a generic error
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

    def generate(self, *args, **kwargs):
        """transformers' generate(), taking a cache under either keyword on every supported release."""
        cache = pop_cache_argument(kwargs)
        if cache is not None:
            kwargs[CACHE_KWARG] = cache
        return super().generate(*args, **kwargs)

    def make_cache(self, max_cache_len: int | None = None) -> Cache:
        """A cache for this model: dynamic, or static with `max_cache_len` slots."""
        return make_compact_cache(self.config, max_cache_len=max_cache_len)

    def _prepare_cache_for_generation(self, generation_config, model_kwargs, *args, **kwargs):
        user_cache = model_kwargs.get(CACHE_KWARG)
        result = super()._prepare_cache_for_generation(generation_config, model_kwargs, *args, **kwargs)
        cache = model_kwargs.get(CACHE_KWARG)
        if cache is not None and cache is not user_cache:
            model_kwargs[CACHE_KWARG] = make_compact_cache(self.config, like=cache)
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
    shipped = SHIPPED_CONFIGS.get(type(config))
    if shipped is not None:  # the decoder stack shares this config object, so it follows too
        config.__class__ = shipped


# --------------------------------------------------------------------------- remote-code classes
# LayerDrop<X>ForCausalLM for every family (e.g. LayerDropLlamaForCausalLM), as module attributes so that
# config.json's `auto_map` finds them. `_auto_class` makes transformers' own `save_pretrained` / `push_to_hub`
# write the portable layout (auto_map, both shipped files), so the stock habit cannot produce a checkpoint
# that loads wrong; patching a stock model in memory gives it this same class.
REMOTE_CLASSES: dict[str, type] = {}  # model_type -> shipped causal-LM class
globals().update({cls.__name__: cls for cls in SHIPPED_CONFIGS.values()})  # 0.1.0 auto_maps named them here
for _model_type, (_config_class, _model_class, _) in FAMILIES.items():
    _shipped = type("LayerDrop" + _model_class.__name__, (LayerDropCausalLMMixin, _model_class),
                    {"config_class": SHIPPED_CONFIGS[_config_class], "_auto_class": "AutoModelForCausalLM",
                     "__module__": __name__})
    globals()[_shipped.__name__] = REMOTE_CLASSES[_model_type] = _shipped
    _MIXED_CLASSES[(LayerDropCausalLMMixin, _model_class)] = _shipped
