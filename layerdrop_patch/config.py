"""`DropConfig`: which attention / MLP sublayers of a decoder are removed, and why.

A DropConfig is plain data. It is stored as a JSON-able dict in `model.config.drop_config`, so it travels in
`config.json` and the shipped modeling code (which cannot import this package) reads the same dict. The dict
carries `format_version`; `from_dict` refuses versions it does not know instead of guessing.

Indices are 0-based decoder-layer indices. A *block* drop is simply a layer whose attention and MLP are both
dropped; `DropConfig.blocks([...])` is the shorthand for it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Iterable

from layerdrop_patch.errors import ConfigError, shorten
from layerdrop_patch.version import __version__
from layerdrop_patch.modeling.configuration_layerdrop import DROP_CONFIG_FORMAT_VERSION as FORMAT_VERSION
from layerdrop_patch.modeling.configuration_layerdrop import check_drop_config as _check_drop_config


def check_drop_config(data: Any, num_layers: int | None = None) -> tuple[list[int], list[int]]:
    """The shipped rules for a drop_config dict (`configuration_layerdrop.check_drop_config`), raising ConfigError."""
    try:
        return _check_drop_config(data, num_layers)
    except ValueError as err:
        raise ConfigError(str(err)) from None


def _library_version() -> str:
    return __version__


def _as_index_list(name: str, values: Iterable[Any]) -> list[int]:
    if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
        raise ConfigError(f"DropConfig.{name} must be a list of layer indices, got {shorten(values)}")
    out = []
    for v in values:
        # bool is an int subclass; True/False as an index is always a bug.
        if isinstance(v, bool) or not isinstance(v, int):
            try:
                import numpy as np

                if isinstance(v, np.integer):
                    out.append(int(v))
                    continue
            except ImportError:  # pragma: no cover
                pass
            raise ConfigError(
                f"DropConfig.{name}: layer index {shorten(v, 40)} is not an integer; use 0-based decoder layer indices."
            )
        out.append(v)
    return out


@dataclass
class DropConfig:
    """Which sublayers to drop, plus where that decision came from.

    Args:
        attn: decoder layers whose attention (and its pre-/post-norm) is removed.
        mlp: decoder layers whose MLP (and its pre-/post-norm) is removed.
        method: how the indices were chosen, e.g. ``"attn-drop"``, ``"joint-drop"``, ``"last-k"``, ``"manual"``.
        metric: the importance metric used, e.g. ``"cosine"`` (1 - cos with residual), ``"angular"``.
        scores: optional per-layer scores ``{"attn": [...], "mlp": [...], "block": [...]}``.
        calibration: human-readable description of the calibration data.
        base_model: name or path of the model the drop was computed for.
        library_version: version of layerdrop-patch that produced it (filled in automatically).
    """

    attn: list[int] = field(default_factory=list)
    mlp: list[int] = field(default_factory=list)
    method: str = "manual"
    metric: str | None = None
    scores: dict[str, list[float]] | None = None
    calibration: str | None = None
    base_model: str | None = None
    library_version: str = field(default_factory=_library_version)

    def __post_init__(self) -> None:
        self.attn = _as_index_list("attn", self.attn)
        self.mlp = _as_index_list("mlp", self.mlp)

    # ----------------------------------------------------------------- constructors
    @classmethod
    def blocks(cls, layers: Iterable[int], **provenance: Any) -> "DropConfig":
        """Drop whole decoder layers (attention and MLP of each)."""
        layers = _as_index_list("blocks", layers)
        provenance.setdefault("method", "block-drop")
        return cls(attn=list(layers), mlp=list(layers), **provenance)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "DropConfig":
        """Rebuild a DropConfig from its dict (as stored in config.json); the rules are those the shipped
        checkpoint code applies too (`check_drop_config`), so both refuse the same files."""
        if isinstance(data, DropConfig):
            return data
        if not isinstance(data, dict):
            raise ConfigError(f"drop_config must be a dict like {{'attn': [3, 7]}}, got {type(data).__name__}")
        check_drop_config(data)
        return cls(**{k: v for k, v in data.items() if k != "format_version"})

    @classmethod
    def from_model(cls, model_or_config: Any) -> "DropConfig | None":
        """The DropConfig recorded on a model (or its config), or None if it was never dropped."""
        config = getattr(model_or_config, "config", model_or_config)
        data = getattr(config, "drop_config", None)
        return None if data is None else cls.from_dict(data)

    # ----------------------------------------------------------------- views
    def to_dict(self) -> dict[str, Any]:
        d = {"format_version": FORMAT_VERSION}
        d.update(dataclasses.asdict(self))
        d["attn"] = sorted(self.attn)
        d["mlp"] = sorted(self.mlp)
        return d

    @property
    def block_layers(self) -> list[int]:
        """Layers where both attention and MLP are dropped (a whole block)."""
        return sorted(set(self.attn) & set(self.mlp))

    @property
    def num_dropped(self) -> int:
        """Number of dropped sublayers (a block counts as two)."""
        return len(set(self.attn)) + len(set(self.mlp))

    def is_empty(self) -> bool:
        return not self.attn and not self.mlp

    def kept_attention_layers(self, num_layers: int) -> list[int]:
        dropped = set(self.attn)
        return [i for i in range(num_layers) if i not in dropped]

    def describe(self) -> str:
        parts = []
        if self.block_layers:
            parts.append(f"blocks {self.block_layers}")
        attn_only = sorted(set(self.attn) - set(self.mlp))
        mlp_only = sorted(set(self.mlp) - set(self.attn))
        if attn_only:
            parts.append(f"attention {attn_only}")
        if mlp_only:
            parts.append(f"MLP {mlp_only}")
        return ", ".join(parts) if parts else "nothing"

    def validate(self, num_layers: int) -> "DropConfig":
        """Check every index against a model with `num_layers` decoder layers; returns self."""
        if isinstance(num_layers, bool) or not isinstance(num_layers, int) or num_layers <= 0:
            raise ConfigError(f"num_layers must be a positive integer, got {shorten(num_layers)}")
        check_drop_config(self.to_dict(), num_layers)
        return self

    def __repr__(self) -> str:
        return f"DropConfig(attn={sorted(self.attn)}, mlp={sorted(self.mlp)}, method={self.method!r})"
