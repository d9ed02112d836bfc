"""Which model families layerdrop-patch supports, and how their decoder layers are laid out.

The descriptors themselves live in `modeling/configuration_layerdrop.py` (`FAMILIES`), because the shipped
remote code needs them too; this module is the library-facing view of that table: look-ups with clear
errors, and the names of the remote-code classes a saved checkpoint points `auto_map` at.
"""

from __future__ import annotations

from typing import Any

from layerdrop_patch.modeling import configuration_layerdrop as _c
from layerdrop_patch.modeling import modeling_layerdrop as _m
from layerdrop_patch.modeling.configuration_layerdrop import Architecture, Sublayer

__all__ = [
    "Architecture",
    "Sublayer",
    "UnsupportedArchitectureError",
    "get_architecture",
    "supported_model_types",
    "remote_class_for",
    "remote_class_names",
    "base_model_type",
]

base_model_type = _c.base_model_type


class UnsupportedArchitectureError(NotImplementedError):
    """Raised for a model family layerdrop-patch has no descriptor for."""


def supported_model_types() -> list[str]:
    return sorted(_c.FAMILIES)


def _config_of(model_or_config: Any):
    return getattr(model_or_config, "config", model_or_config)


def get_architecture(model_or_config: Any) -> Architecture:
    """The descriptor for a model (or config); raises `UnsupportedArchitectureError` naming what is supported."""
    config = _config_of(model_or_config)
    model_type = base_model_type(config)
    if model_type not in _c.FAMILIES:
        raise UnsupportedArchitectureError(
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
        "AutoConfig": f"modeling_layerdrop.{cls.config_class.__name__}",
        "AutoModelForCausalLM": f"modeling_layerdrop.{cls.__name__}",
    }
