"""One-shot selection: rank the droppable units once and take the first n.

- ``importance`` (He et al.): lowest score first. ``kind="joint"`` ranks attention and MLP scores together (the
  paper's Joint Layer Drop). Ties go to the shallower layer, attention before MLP.
- ``random``: a seeded random sample of the droppable units (a baseline).
- ``reverse``: deepest first, skipping protected layers (the paper's reverse-order baseline).
- ``last-k`` (Tyukin et al., arXiv 2407.15516): the last k layers' attention / MLP / blocks as one contiguous
  run; ``keep_last=True`` leaves the final layer intact and drops the k layers before it. A protected or
  already-dropped layer inside that run is an error (the run would no longer be "the last k").

`protect` names layers never dropped (e.g. ``protect=(0,)``); ``keep_last=True`` protects the final layer for
every method. n counts units: layers for attn/mlp/block, sublayers for joint; ``ratio`` is a fraction of all
units of that kind (num_layers, or 2 * num_layers for joint), rounded to the nearest integer.
"""

from __future__ import annotations

import math
import random
from typing import Any, Callable, Iterable

from layerdrop_patch.config import DropConfig
from layerdrop_patch.errors import ConfigError
from layerdrop_patch.selection.registry import (SELECT_KINDS, Selection, SelectionInputs, Unit, count_for, is_gone,
                                                protected, provenance, register_method, to_drop_config, units)

__all__ = ["drop_order", "select", "ORDERS"]

_KIND_POS = {"attn": 0, "block": 0, "mlp": 1}


def _by_importance(candidates: list[Unit], scores: Any, seed: int) -> list[Unit]:
    if scores is None:
        raise ConfigError("method 'importance' needs ImportanceScores (from compute_importance / `layerdrop score`); "
                          "a layer count only serves the baselines random, reverse and last-k.")
    value = {u: scores.scores_for(u[0])[u[1]] for u in candidates}
    return sorted((u for u in candidates if not math.isnan(value[u])), key=lambda u: (value[u], u[1], _KIND_POS[u[0]]))


def _by_random(candidates: list[Unit], scores: Any, seed: int) -> list[Unit]:
    return random.Random(seed).sample(candidates, len(candidates))


def _by_depth(candidates: list[Unit], scores: Any, seed: int) -> list[Unit]:
    return sorted(candidates, key=lambda u: (u[1], _KIND_POS[u[0]]), reverse=True)


# name -> order of the droppable units; "last-k" is special (a contiguous run, see drop_order)
ORDERS: dict[str, Callable[[list[Unit], Any, int], list[Unit]]] = {
    "importance": _by_importance, "random": _by_random, "reverse": _by_depth}


def _source(scores_or_num_layers: Any) -> tuple[int, Any, dict[str, list[int]]]:
    """(num_layers, ImportanceScores or None, already dropped {"attn": [...], "mlp": [...]})."""
    if isinstance(scores_or_num_layers, bool) or scores_or_num_layers is None:
        raise ConfigError("select needs ImportanceScores (from compute_importance) or the number of layers.")
    if isinstance(scores_or_num_layers, int):
        if scores_or_num_layers < 1:
            raise ConfigError(f"num_layers must be positive, got {scores_or_num_layers}")
        return scores_or_num_layers, None, {"attn": [], "mlp": []}
    s = scores_or_num_layers
    return s.num_layers, s, {"attn": list(s.dropped.get("attn", [])), "mlp": list(s.dropped.get("mlp", []))}


def _check(kind: str, method: str) -> None:
    if kind not in SELECT_KINDS:
        raise ConfigError(f"kind must be one of {', '.join(SELECT_KINDS)}, got {kind!r}")
    if method not in ORDERS and method != "last-k":
        raise ConfigError(f"{method!r} is not a one-shot ranking ({', '.join([*ORDERS, 'last-k'])}); other methods "
                          "need the model: use selection.choose_drop(SelectionConfig(...), model=..., ...).")
    if method == "last-k" and kind == "joint":
        raise ConfigError("last-k (Tyukin et al.) drops attention, MLP or blocks; kind='joint' has no meaning for it.")


def drop_order(scores_or_num_layers: Any, kind: str, *, method: str = "importance", protect: Iterable[int] = (),
               keep_last: bool = False, seed: int = 0) -> list[Unit]:
    """Every droppable unit in the order `select` takes them (select(n) == the first n of this list)."""
    _check(kind, method)
    num_layers, scores, dropped = _source(scores_or_num_layers)
    if method == "last-k":  # every layer counted back from the end (or from the one before the kept final layer)
        end = num_layers - 1 if keep_last else num_layers
        return [(kind, layer) for layer in range(end - 1, -1, -1)]
    guarded = protected(num_layers, protect, keep_last)
    candidates = [u for u in units(kind, num_layers) if u[1] not in guarded and not is_gone(u, dropped)]
    return ORDERS[method](candidates, scores, seed)


def _method_name(kind: str, method: str, keep_last: bool) -> str:
    return {"importance": f"{kind}-drop", "random": f"random-{kind}", "reverse": f"reverse-{kind}",
            "last-k": f"last-k-{kind}" + ("-keep-last" if keep_last else "")}[method]


def select(scores_or_num_layers: Any, kind: str, n: int | None = None, ratio: float | None = None, *,
           method: str = "importance", protect: Iterable[int] = (), keep_last: bool = False,
           seed: int = 0) -> DropConfig:
    """A DropConfig dropping n (or ratio of) `kind` units ranked by `method` (see the module docstring).

    `scores_or_num_layers` is ImportanceScores, or for the baselines simply the number of decoder layers.
    """
    _check(kind, method)
    num_layers, scores, dropped = _source(scores_or_num_layers)
    count = count_for(kind, num_layers, n, ratio)
    order = drop_order(scores_or_num_layers, kind, method=method, protect=protect, keep_last=keep_last, seed=seed)
    if method == "last-k":
        guarded = protected(num_layers, protect, False)
        if count > len(order):
            raise ConfigError(f"last-k: cannot drop the last {count} layers' sublayers; only {len(order)} layers are "
                              f"available{' before the kept final layer' if keep_last else ''}.")
        bad = [layer for k, layer in order[:count] if layer in guarded or is_gone((k, layer), dropped)]
        if bad:
            raise ConfigError(f"last-k: layers {sorted(bad)} inside the last-{count} run are protected or already "
                              "dropped; use method='reverse' to skip them instead.")
    elif count > len(order):
        total = 2 * num_layers if kind == "joint" else num_layers
        gone = sum(is_gone(u, dropped) for u in units(kind, num_layers))
        raise ConfigError(f"cannot drop {count} {kind} units: only {len(order)} of {total} can be dropped (protected "
                          f"layers {sorted(protected(num_layers, protect, keep_last))}, {gone} already dropped).")
    metric = scores.metric if scores is not None and method == "importance" else None
    return to_drop_config(order[:count], dropped, **provenance(scores, _method_name(kind, method, keep_last), kind,
                                                               metric))


def _one_shot(method: str):
    def choose(config: Any, inputs: SelectionInputs) -> Selection:
        source = inputs.scores.with_metric(config.metric) if inputs.scores is not None else inputs.num_layers
        return Selection(select(source, config.kind, config.n, config.ratio, method=method, protect=config.protect,
                                keep_last=config.keep_last, seed=config.seed))
    return choose


register_method("importance", needs=("scores",),
                description="one-shot: lowest importance score first (He et al.)")(_one_shot("importance"))
register_method("random", description="seeded random units (baseline)")(_one_shot("random"))
register_method("reverse", description="deepest units first (baseline)")(_one_shot("reverse"))
register_method("last-k", description="the last k layers' units (Tyukin et al.)")(_one_shot("last-k"))
