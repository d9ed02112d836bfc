"""Selection methods, registered by name, and the vocabulary they share: units, counts, protected layers.

Every choice is a list of *units*: ``("attn", l)``, ``("mlp", l)`` or ``("block", l)``; `kind="joint"` ranks
attention and MLP units together. A method turns a `SelectionConfig` plus whatever it needs (importance scores,
the model, calibration tokens) into a `Selection`: a cumulative `DropConfig` and, for step-by-step methods, the
history of what was dropped when. Adding a method is one `@register_method` function (see `ranking.py`,
`iterative.py`); the CLI, the recipe schema and `choose_drop` read `METHODS`.

Sublayers already missing from the model are never chosen, and the returned DropConfig includes those earlier
drops, because `apply_drop` on an already-dropped model needs the cumulative list.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

from layerdrop_patch.config import DropConfig
from layerdrop_patch.errors import ConfigError, shorten

__all__ = ["Unit", "Method", "METHODS", "register_method", "SelectionInputs", "Selection", "SELECT_KINDS",
           "units", "is_gone", "protected", "count_for", "to_drop_config", "provenance"]

Unit = tuple[str, int]
SELECT_KINDS = ("attn", "mlp", "block", "joint")


@dataclass
class SelectionInputs:
    """What a method may draw on. `dropped` lists sublayers already absent from the scored/given model."""

    num_layers: int
    scores: Any = None
    model: Any = None
    calibration: Any = None
    dropped: dict[str, list[int]] = field(default_factory=lambda: {"attn": [], "mlp": []})
    progress: bool = True
    resume: Sequence[Any] | None = None  # an earlier run's order to go on from (methods registered `resumable`)
    on_step: Callable[[list[dict[str, Any]]], None] | None = None  # told the order after each step (resumable)


@dataclass
class Selection:
    """A method's answer: the cumulative DropConfig and, for step-by-step methods, the steps in order."""

    drop_config: DropConfig
    history: list[dict[str, Any]] | None = None


@dataclass(frozen=True)
class Method:
    name: str
    choose: Callable[[Any, SelectionInputs], Selection]
    needs: tuple[str, ...]  # of "scores", "model", "calibration"
    description: str
    resumable: bool = False  # step-by-step methods that can go on from an earlier run's order


METHODS: dict[str, Method] = {}


def register_method(name: str, *, needs: Iterable[str] = (), description: str = "", resumable: bool = False):
    """Register `choose(config: SelectionConfig, inputs: SelectionInputs) -> Selection` under `name`.
    `resumable`: the method honours `inputs.resume` and `inputs.on_step`; `choose_drop` refuses them for any other."""
    def decorate(fn):
        METHODS[name] = Method(name, fn, tuple(needs), description, resumable)
        return fn
    return decorate


# ----------------------------------------------------------------------------------------------- units
def units(kind: str, num_layers: int) -> list[Unit]:
    if kind == "joint":
        return [(k, layer) for layer in range(num_layers) for k in ("attn", "mlp")]
    return [(kind, layer) for layer in range(num_layers)]


def is_gone(unit: Unit, dropped: dict[str, list[int]]) -> bool:
    k, layer = unit
    if k == "block":
        return layer in dropped["attn"] and layer in dropped["mlp"]
    return layer in dropped[k]


def protected(num_layers: int, protect: Iterable[int], keep_last: bool) -> set[int]:
    out = set()
    for p in protect:
        if isinstance(p, bool) or not isinstance(p, int) or not 0 <= p < num_layers:
            raise ConfigError(f"protect: {shorten(p)} is not a layer index of this {num_layers}-layer model "
                              f"(0..{num_layers - 1}).")
        out.add(p)
    if keep_last:
        out.add(num_layers - 1)
    return out


def count_for(kind: str, num_layers: int, n: int | None, ratio: float | None) -> int:
    """How many units n / ratio means (ratio of all units of the kind: num_layers, or 2 * num_layers for joint)."""
    if (n is None) == (ratio is None):
        raise ConfigError("give exactly one of n (how many to drop) or ratio (fraction to drop).")
    total = 2 * num_layers if kind == "joint" else num_layers
    if ratio is not None:
        if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0.0 <= ratio <= 1.0:
            raise ConfigError(f"ratio must be a number in [0, 1], got {shorten(ratio)}")
        return int(round(ratio * total))
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ConfigError(f"n must be a non-negative integer, got {shorten(n)}")
    return n


def to_drop_config(chosen: Iterable[Unit], dropped: dict[str, list[int]], **prov: Any) -> DropConfig:
    """The cumulative DropConfig: earlier drops plus the chosen units."""
    attn, mlp = set(dropped["attn"]), set(dropped["mlp"])
    for k, layer in chosen:
        if k in ("attn", "block"):
            attn.add(layer)
        if k in ("mlp", "block"):
            mlp.add(layer)
    return DropConfig(attn=sorted(attn), mlp=sorted(mlp), **prov)


def provenance(scores: Any, method: str, kind: str, metric: str | None) -> dict[str, Any]:
    """DropConfig provenance: how the drop was chosen, and the scores it was chosen from."""
    out: dict[str, Any] = {"method": method, "metric": metric}
    if scores is not None:
        out.update(scores={k: [None if math.isnan(v) else v for v in scores.scores_for(k)]
                           for k in ("attn", "mlp", "block")},
                   calibration=scores.calibration, base_model=scores.model_name)
    return out
