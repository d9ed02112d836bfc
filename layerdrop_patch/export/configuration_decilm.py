# Copyright 2026 the layerdrop-patch developers. Apache-2.0.
"""Configuration class for Nemotron-NAS ("DeciLM") checkpoints written by layerdrop-patch.

This file is copied next to the weights of every `decilm` export and named in `config.json`'s `auto_map`, so
`AutoConfig.from_pretrained(path, trust_remote_code=True)` works without layerdrop-patch installed. vLLM
loads its config this way before building its own DeciLM model, and reads each layer's structure as
attributes: `config.block_configs[i].attention.no_op`, `.attention.n_heads_in_group`, `.ffn.no_op`,
`.ffn.ffn_mult`. This class therefore turns the JSON dicts of `block_configs` into small attribute objects
on load and back into plain dicts on save. It imports only transformers and defines no model: the
weights are ordinary Llama tensors (vLLM has its own DeciLM model; layerdrop-patch reloads the export into
its patched Llama model).

Written independently for layerdrop-patch; it implements the published config.json layout only.
"""

from __future__ import annotations

from typing import Any

from transformers import LlamaConfig


class BlockSection:
    """One sub-block description (`attention` or `ffn`): every JSON key becomes an attribute.

    Keys that are absent stay absent (vLLM uses `hasattr(ffn, "ffn_mult")` to pick how the width is given).
    """

    def __init__(self, **fields: Any) -> None:
        self.__dict__.update(fields)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, BlockSection) and other.__dict__ == self.__dict__

    def __repr__(self) -> str:
        inner = ", ".join(f"{k}={v!r}" for k, v in self.__dict__.items())
        return f"BlockSection({inner})"


class BlockConfig:
    """The structure of one decoder layer: its `attention` and `ffn` sections (plus any extra keys)."""

    def __init__(self, attention: dict | BlockSection | None = None, ffn: dict | BlockSection | None = None,
                 **extra: Any) -> None:
        self.attention = attention if isinstance(attention, BlockSection) else BlockSection(**(attention or {}))
        self.ffn = ffn if isinstance(ffn, BlockSection) else BlockSection(**(ffn or {}))
        self.__dict__.update(extra)

    @classmethod
    def from_any(cls, value: "dict | BlockConfig") -> "BlockConfig":
        if isinstance(value, BlockConfig):
            return value
        if not isinstance(value, dict):
            raise TypeError(f"block_configs entries must be dicts, got {type(value).__name__}")
        return cls(**value)

    def to_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in self.__dict__.items() if k not in ("attention", "ffn")}
        out["attention"] = self.attention.to_dict()
        out["ffn"] = self.ffn.to_dict()
        return out

    def __eq__(self, other: object) -> bool:
        return isinstance(other, BlockConfig) and other.to_dict() == self.to_dict()

    def __repr__(self) -> str:
        return f"BlockConfig(attention={self.attention!r}, ffn={self.ffn!r})"


class DeciLMConfig(LlamaConfig):
    """A Llama configuration plus `block_configs`: one entry per decoder layer."""

    model_type = "nemotron-nas"

    def __init__(self, block_configs: list | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.block_configs = [BlockConfig.from_any(b) for b in (block_configs or [])]
        if self.block_configs and len(self.block_configs) != self.num_hidden_layers:
            raise ValueError(
                f"block_configs has {len(self.block_configs)} entries but num_hidden_layers is "
                f"{self.num_hidden_layers}; there must be one entry per decoder layer."
            )

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        out["block_configs"] = [b.to_dict() for b in self.block_configs]
        return out


__all__ = ["DeciLMConfig", "BlockConfig", "BlockSection"]
