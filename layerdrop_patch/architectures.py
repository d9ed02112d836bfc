"""The library's one look-up of a model's family, decoder layers and drop, and of the shipped classes.

The family table itself lives in `modeling/configuration_layerdrop.py` (`FAMILIES`), because the code shipped
inside checkpoints needs it too; this module is the library-facing view of it, with errors that say what is
supported. Everything that needs "the decoder layers of this model", "its descriptor" or "what is dropped from
it" asks here, so those answers cannot differ between stages.
"""

from __future__ import annotations

from typing import Any

import torch

from layerdrop_patch.config import DropConfig
from layerdrop_patch.errors import ConfigError, UnsupportedModelError
from layerdrop_patch.modeling import configuration_layerdrop as _c
from layerdrop_patch.modeling import modeling_layerdrop as _m
from layerdrop_patch.modeling.configuration_layerdrop import Architecture, Sublayer

__all__ = ["Architecture", "Sublayer", "UnsupportedArchitectureError", "get_architecture", "supported_model_types",
           "remote_class_for", "remote_class_names", "base_model_type", "decoder_layers", "drop_of",
           "projection_names", "check_sequence_length"]

base_model_type = _c.base_model_type
UnsupportedArchitectureError = UnsupportedModelError  # the name 0.1.0 exported


def supported_model_types() -> list[str]:
    return sorted(_c.FAMILIES)


def _config_of(model_or_config: Any):
    return getattr(model_or_config, "config", model_or_config)


def get_architecture(model_or_config: Any) -> Architecture:
    """The descriptor for a model (or config); refuses unsupported families, naming the supported ones."""
    config = _config_of(model_or_config)
    model_type = base_model_type(config)
    if model_type not in _c.FAMILIES:
        raise UnsupportedModelError(
            f"layerdrop-patch does not support model_type {model_type!r} "
            f"(architectures {getattr(config, 'architectures', None)}); supported model types: "
            f"{', '.join(supported_model_types())}. Adding one is an entry in FAMILIES in "
            "layerdrop_patch/modeling/configuration_layerdrop.py plus its test case."
        )
    return _c.FAMILIES[model_type][2]


def remote_class_for(model_or_config: Any) -> type:
    """The shipped `LayerDrop<X>ForCausalLM` class for this family (its `config_class` is the shipped config)."""
    config = _config_of(model_or_config)
    get_architecture(config)
    return _m.REMOTE_CLASSES[base_model_type(config)]


def remote_class_names(model_or_config: Any) -> dict[str, str]:
    """`auto_map` entries for a saved checkpoint: the shipped config and model classes for this family."""
    cls = remote_class_for(model_or_config)
    return {
        "model_type": cls.config_class.model_type,
        "AutoConfig": f"{cls.config_class.__module__.rsplit('.', 1)[-1]}.{cls.config_class.__name__}",
        "AutoModelForCausalLM": f"modeling_layerdrop.{cls.__name__}",
    }


def decoder_layers(model: Any) -> torch.nn.ModuleList:
    """`model.model.layers` of a *ForCausalLM (also inside a peft wrapper), or a clear error."""
    base = getattr(model, "get_base_model", None)
    model = base() if callable(base) else model
    layers = getattr(getattr(model, "model", None), "layers", None)
    if not isinstance(layers, torch.nn.ModuleList):
        raise UnsupportedModelError(
            f"expected a *ForCausalLM with decoder layers at model.model.layers, got {type(model).__name__}. "
            "Load the model with AutoModelForCausalLM (or layerdrop_patch.models.load_model).")
    return layers


def drop_of(model_or_config: Any):
    """The model's DropConfig, or an empty one for an unpruned model."""
    return DropConfig.from_model(model_or_config) or DropConfig(method="none")


def projection_names(model_or_config: Any) -> tuple[str, ...]:
    """Names of the linear projections inside attention and MLP (LoRA and AWQ targets), e.g. Phi-3's fused
    `qkv_proj` and `gate_up_proj`."""
    arch = get_architecture(model_or_config)
    return arch.attn.projections + arch.mlp.projections


def check_sequence_length(model_or_config: Any, seq_len: int, option: str) -> None:
    """Refuse sequences longer than the model's trained context: positions past it are out of its range, so
    scores, losses or perplexities computed on them would look valid and mean nothing."""
    limit = getattr(_config_of(model_or_config), "max_position_embeddings", None)
    if isinstance(limit, int) and seq_len > limit:
        raise ConfigError(f"{option}={seq_len} is longer than this model's context of {limit} tokens "
                          f"(max_position_embeddings); use {option} <= {limit}.")
