"""Cost profiles: what each attention and each MLP sublayer costs for one workload, measured, not guessed.

What a sublayer costs depends on the workload and the engine: attention's share grows with context length and
batch (it reads the KV cache), the MLP's does not; a sliding-window attention reads less than a full one at long
contexts. So a profile is measured for a (model, engine, dtype, batch, prompt length, new tokens) workload by
timing, in one interleaved run, the unpruned model and variants with sublayers removed:

* for each attention kind present (full, sliding), the model without the attention of every other layer of
  that kind;
* the model without every other MLP;
* a mixed check variant (attention of some layers and MLP of others removed) that the profile does not use to
  fit anything: its predicted time against its measured time is the profile's own prediction error.

Per-unit costs (prefill and decode seconds saved by removing one sublayer) follow from the differences. Layers of
one kind share one cost (they have the same shapes); the profile is cached as JSON per model and workload.
"""

from __future__ import annotations

import copy
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from layerdrop_patch.config import DropConfig
from layerdrop_patch.embedded import cache_dir
from layerdrop_patch.errors import DataError
from layerdrop_patch.files import atomic_write_json, digest
from layerdrop_patch.patch import apply_drop

__all__ = ["CostProfile", "measure_profile", "attention_kind", "PHASES"]

PHASES = ("prefill", "decode")
PROFILE_FORMAT = "layerdrop-cost-profile/1"


def attention_kind(config: Any, layer: int) -> str:
    """"sliding" or "full": what an attention layer reads, hence what it costs at long contexts."""
    types = getattr(config, "layer_types", None)
    if types is not None:
        return "sliding" if types[layer] == "sliding_attention" else "full"
    return "sliding" if getattr(config, "sliding_window", None) and getattr(config, "use_sliding_window", True) \
        else "full"


@dataclass
class CostProfile:
    """Measured seconds per request of the unpruned model and per removed unit, for one workload."""

    model: str
    workload: dict[str, Any]
    num_layers: int
    attention_kinds: list[str]  # per layer: "full" / "sliding"
    base: dict[str, float]  # {"prefill": s, "decode": s}: the unpruned model, one generate() call
    unit: dict[str, dict[str, float]]  # {"attn:full": {"prefill": s, "decode": s}, "attn:sliding": ..., "mlp": ...}
    variants: list[dict[str, Any]] = field(default_factory=list)
    check: dict[str, Any] = field(default_factory=dict)

    def unit_key(self, kind: str, layer: int) -> str:
        return f"attn:{self.attention_kinds[layer]}" if kind == "attn" else "mlp"

    def saved(self, kind: str, layer: int, phase: str | None = None) -> float:
        """Seconds saved by removing one attention / MLP (prefill, decode, or both if `phase` is None)."""
        costs = self.unit[self.unit_key(kind, layer)]
        return costs[phase] if phase else costs["prefill"] + costs["decode"]

    def predict(self, drop: DropConfig, phase: str | None = None) -> float:
        """Predicted seconds of a request with `drop` applied."""
        base = self.base[phase] if phase else self.base["prefill"] + self.base["decode"]
        saved = sum(self.saved("attn", i, phase) for i in drop.attn) + sum(self.saved("mlp", i, phase)
                                                                            for i in drop.mlp)
        return base - saved

    def fixed(self, phase: str) -> float:
        """Seconds no sublayer accounts for (embeddings, final norm, output head, generate()'s own work)."""
        return max(0.0, self.base[phase] - sum(self.saved("attn", i, phase) + self.saved("mlp", i, phase)
                                               for i in range(self.num_layers)))

    def speedup(self, drop: DropConfig) -> float:
        return (self.base["prefill"] + self.base["decode"]) / self.predict(drop)

    def to_dict(self) -> dict[str, Any]:
        return {"format": PROFILE_FORMAT, **asdict(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "CostProfile":
        if data.get("format") != PROFILE_FORMAT:
            raise DataError(f"not a cost profile written by layerdrop-patch (format {data.get('format')!r}).")
        return cls(**{k: v for k, v in data.items() if k != "format"})


def _every_other(layers: list[int], offset: int = 0) -> list[int]:
    return layers[offset::2]


def _variants(config: Any, num_layers: int) -> dict[str, DropConfig]:
    kinds = [attention_kind(config, i) for i in range(num_layers)]
    variants = {"base": DropConfig()}
    for kind in sorted(set(kinds)):
        variants[f"attn:{kind}"] = DropConfig(attn=_every_other([i for i in range(num_layers) if kinds[i] == kind]))
    variants["mlp"] = DropConfig(mlp=_every_other(list(range(num_layers))))
    third = list(range(num_layers))
    variants["check"] = DropConfig(attn=third[0::3], mlp=third[1::3])
    return variants


def _cache_path(model_name: str, workload: dict) -> Path:
    return cache_dir() / "profiles" / f"{Path(model_name).name}-{digest(model_name, workload)}.json"


def measure_profile(model: Any, tokenizer: Any, workload: Any, *, model_name: str | None = None,
                    use_cache: bool = True, progress: bool = True) -> CostProfile:
    """Measure (or read from the cache) the cost profile of `model` for `workload` (a BenchConfig)."""
    from layerdrop_patch.evaluation.bench import compare_engine

    name = model_name or str(getattr(model.config, "_name_or_path", "model"))
    settings = workload.to_dict()
    path = _cache_path(name, settings)
    if use_cache and path.is_file():
        try:
            return CostProfile.from_dict(json.loads(path.read_text()))
        except (ValueError, TypeError, DataError):
            pass  # a stale or damaged cache entry is measured again
    num_layers = model.config.num_hidden_layers
    variants = _variants(model.config, num_layers)
    models = {key: model if key == "base" else apply_drop(copy.deepcopy(model), drop)
              for key, drop in variants.items()}
    result = compare_engine(models, tokenizer, workload, progress=progress)
    times = {key: {"prefill": r["prefill_s"], "decode": r["decode_s"]} for key, r in result["models"].items()}
    unit = {}
    for key, drop in variants.items():
        if key in ("base", "check"):
            continue
        count = len(drop.attn) + len(drop.mlp)
        unit[key] = {p: max(0.0, (times["base"][p] - times[key][p]) / count) for p in PHASES}
    kinds = [attention_kind(model.config, i) for i in range(num_layers)]
    profile = CostProfile(model=name, workload=settings, num_layers=num_layers, attention_kinds=kinds,
                          base=times["base"], unit=unit,
                          variants=[{"name": k, "attn": d.attn, "mlp": d.mlp, **times[k]} for k, d in variants.items()])
    measured = times["check"]["prefill"] + times["check"]["decode"]
    predicted = profile.predict(variants["check"])
    profile.check = {"variant": "check", "measured_s": measured, "predicted_s": predicted,
                     "relative_error": (predicted - measured) / measured}
    atomic_write_json(path, profile.to_dict())
    return profile
