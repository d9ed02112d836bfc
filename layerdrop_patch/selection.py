"""Choosing what to drop: importance ranking, the papers' baselines, and iterative re-scoring.

Every choice is a list of *units*: ``("attn", l)``, ``("mlp", l)`` or ``("block", l)``. A selection ranks the
units that may be dropped and takes the first n:

- ``method="importance"`` (He et al.): lowest score first. ``kind="joint"`` ranks attention and MLP scores
  together (the paper's Joint Layer Drop). Ties go to the shallower layer, attention before MLP.
- ``method="random"``: a seeded random sample of the droppable units (a baseline).
- ``method="reverse"``: deepest first, skipping protected layers (the paper's reverse-order baseline).
- ``method="last-k"`` (Tyukin et al., arXiv 2407.15516): the last k layers' attention / MLP / blocks as one
  contiguous run; ``keep_last=True`` leaves the final layer intact and drops the k layers before it. A protected
  or already-dropped layer inside that run is an error (the run would no longer be "the last k").

`protect` names layers never dropped (e.g. ``protect=(0,)``); ``keep_last=True`` protects the final layer for
every method. Sublayers already missing from the scored model (NaN scores) are never chosen, and the returned
`DropConfig` includes those earlier drops, because `apply_drop` on an already-dropped model needs the cumulative
list. n counts units: layers for attn/mlp/block, sublayers for joint; ``ratio`` is a fraction of all units of
that kind (num_layers, or 2 * num_layers for joint), rounded to the nearest integer.

`iterative_select` drops one unit at a time and re-scores the model with the earlier drops applied. Unlike the
reference code, which skips a dropped layer entirely when re-scoring, the model here is really patched with
`apply_drop`, so the surviving sublayer of a half-dropped layer runs and is scored.
"""

from __future__ import annotations

import copy
import math
import random
from typing import Any, Iterable

from layerdrop_patch.config import DropConfig

__all__ = ["SELECT_KINDS", "SELECT_METHODS", "select", "drop_order", "iterative_select"]

SELECT_KINDS = ("attn", "mlp", "block", "joint")
SELECT_METHODS = ("importance", "random", "reverse", "last-k")
_KIND_POS = {"attn": 0, "block": 0, "mlp": 1}


def _check_kind_method(kind: str, method: str) -> None:
    if kind not in SELECT_KINDS:
        raise ValueError(f"kind must be one of {SELECT_KINDS}, got {kind!r}")
    if method not in SELECT_METHODS:
        raise ValueError(f"method must be one of {SELECT_METHODS}, got {method!r}")
    if method == "last-k" and kind == "joint":
        raise ValueError("last-k (Tyukin et al.) drops attention, MLP or blocks; kind='joint' has no meaning for it.")


def _count(kind: str, num_layers: int, n: int | None, ratio: float | None) -> int:
    if (n is None) == (ratio is None):
        raise ValueError("give exactly one of n (how many to drop) or ratio (fraction to drop).")
    total = 2 * num_layers if kind == "joint" else num_layers
    if ratio is not None:
        if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0.0 <= ratio <= 1.0:
            raise ValueError(f"ratio must be a number in [0, 1], got {ratio!r}")
        return int(round(ratio * total))
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"n must be a non-negative integer, got {n!r}")
    return n


def _protected(num_layers: int, protect: Iterable[int], keep_last: bool) -> set[int]:
    out = set()
    for p in protect:
        if isinstance(p, bool) or not isinstance(p, int) or not 0 <= p < num_layers:
            raise ValueError(f"protect: {p!r} is not a layer index of this {num_layers}-layer model (0..{num_layers - 1}).")
        out.add(p)
    if keep_last:
        out.add(num_layers - 1)
    return out


def _source(scores_or_num_layers: Any) -> tuple[int, Any, dict[str, list[int]]]:
    """(num_layers, ImportanceScores or None, already dropped {"attn": [...], "mlp": [...]})."""
    if isinstance(scores_or_num_layers, bool) or scores_or_num_layers is None:
        raise TypeError("select needs ImportanceScores (from compute_importance) or the number of layers.")
    if isinstance(scores_or_num_layers, int):
        if scores_or_num_layers < 1:
            raise ValueError(f"num_layers must be positive, got {scores_or_num_layers}")
        return scores_or_num_layers, None, {"attn": [], "mlp": []}
    s = scores_or_num_layers
    return s.num_layers, s, {"attn": list(s.dropped.get("attn", [])), "mlp": list(s.dropped.get("mlp", []))}


def _units(kind: str, num_layers: int) -> list[tuple[str, int]]:
    if kind == "joint":
        return [(k, l) for l in range(num_layers) for k in ("attn", "mlp")]
    return [(kind, l) for l in range(num_layers)]


def _is_gone(unit: tuple[str, int], dropped: dict[str, list[int]]) -> bool:
    k, l = unit
    if k == "block":
        return l in dropped["attn"] and l in dropped["mlp"]
    return l in dropped[k]


def drop_order(scores_or_num_layers: Any, kind: str, *, method: str = "importance", protect: Iterable[int] = (),
               keep_last: bool = False, seed: int = 0) -> list[tuple[str, int]]:
    """Every droppable unit in the order `select` takes them (select(n) == the first n of this list)."""
    _check_kind_method(kind, method)
    num_layers, scores, dropped = _source(scores_or_num_layers)
    guarded = _protected(num_layers, protect, keep_last)
    units = [u for u in _units(kind, num_layers) if u[1] not in guarded and not _is_gone(u, dropped)]
    if method == "importance":
        if scores is None:
            raise ValueError("method='importance' needs ImportanceScores; a layer count only serves the baselines.")
        value = {u: scores.scores_for(u[0])[u[1]] for u in units}
        units = [u for u in units if not math.isnan(value[u])]
        return sorted(units, key=lambda u: (value[u], u[1], _KIND_POS[u[0]]))
    if method == "random":
        return random.Random(seed).sample(units, len(units))
    if method == "reverse":
        return sorted(units, key=lambda u: (u[1], _KIND_POS[u[0]]), reverse=True)
    # last-k: every layer counted back from the end (or from the one before the kept final layer); whether the
    # first k of them may really be dropped is checked by select, because the run must stay contiguous.
    end = num_layers - 1 if keep_last else num_layers
    return [(kind, l) for l in range(end - 1, -1, -1)]


def _validate_last_k(order, n, protect, dropped, keep_last) -> None:
    run = order[:n]
    if n > len(order):
        raise ValueError(f"last-k: cannot drop the last {n} layers' sublayers; only {len(order)} layers are available"
                         f"{' before the kept final layer' if keep_last else ''}.")
    bad = [l for k, l in run if l in protect or _is_gone((k, l), dropped)]
    if bad:
        raise ValueError(f"last-k: layers {sorted(bad)} inside the last-{n} run are protected or already dropped; "
                         "use method='reverse' to skip them instead.")


def _to_config(units: list[tuple[str, int]], dropped: dict[str, list[int]], **provenance: Any) -> DropConfig:
    attn, mlp = set(dropped["attn"]), set(dropped["mlp"])
    for k, l in units:
        if k in ("attn", "block"):
            attn.add(l)
        if k in ("mlp", "block"):
            mlp.add(l)
    return DropConfig(attn=sorted(attn), mlp=sorted(mlp), **provenance)


def _provenance(scores: Any, kind: str, method: str, keep_last: bool) -> dict[str, Any]:
    names = {"importance": f"{kind}-drop", "random": f"random-{kind}", "reverse": f"reverse-{kind}",
             "last-k": f"last-k-{kind}" + ("-keep-last" if keep_last else "")}
    out: dict[str, Any] = {"method": names[method]}
    if scores is not None:
        out.update(
            metric=scores.metric if method == "importance" else None,
            scores={k: [None if math.isnan(v) else v for v in scores.scores_for(k)] for k in ("attn", "mlp", "block")},
            calibration=scores.calibration, base_model=scores.model_name,
        )
    return out


def select(scores_or_num_layers: Any, kind: str, n: int | None = None, ratio: float | None = None, *,
           method: str = "importance", protect: Iterable[int] = (), keep_last: bool = False,
           seed: int = 0) -> DropConfig:
    """A DropConfig dropping n (or ratio of) `kind` units chosen by `method` (see the module docstring).

    `scores_or_num_layers` is ImportanceScores, or for the baselines simply the number of decoder layers.
    """
    _check_kind_method(kind, method)
    num_layers, scores, dropped = _source(scores_or_num_layers)
    count = _count(kind, num_layers, n, ratio)
    order = drop_order(scores_or_num_layers, kind, method=method, protect=protect, keep_last=keep_last, seed=seed)
    if method == "last-k":
        guarded = _protected(num_layers, protect, False)
        _validate_last_k(order, count, guarded, dropped, keep_last)
    elif count > len(order):
        total = 2 * num_layers if kind == "joint" else num_layers
        gone = sum(_is_gone(u, dropped) for u in _units(kind, num_layers))
        guarded = sorted(_protected(num_layers, protect, keep_last))
        raise ValueError(
            f"cannot drop {count} {kind} units: only {len(order)} of {total} can be dropped "
            f"(protected layers {guarded}, {gone} already dropped)."
        )
    return _to_config(order[:count], dropped, **_provenance(scores, kind, method, keep_last))


def iterative_select(model: Any, calibration: Any, kind: str, n: int | None = None, ratio: float | None = None, *,
                     metric: str = "cosine", protect: Iterable[int] = (), keep_last: bool = False,
                     batch_size: int = 1, progress: bool = True, inplace: bool = False,
                     return_history: bool = False) -> Any:
    """Drop one unit at a time, re-scoring the model with every earlier drop applied.

    Works on a deep copy of `model` unless ``inplace=True`` (then `model` ends up patched with the result).
    Returns the cumulative DropConfig (method ``"iterative-<kind>-drop"``, scores of the first round); with
    ``return_history=True`` also a list of ``{"step", "kind", "layer", "score"}`` dicts in drop order.
    Needs a resident model (not the offloaded mode): each round is a full streaming pass.
    """
    from layerdrop_patch.patch import apply_drop
    from layerdrop_patch.scoring import compute_importance

    if kind not in SELECT_KINDS:
        raise ValueError(f"kind must be one of {SELECT_KINDS}, got {kind!r}")
    work = model if inplace else copy.deepcopy(model)
    num_layers = len(work.model.layers)
    count = _count(kind, num_layers, n, ratio)
    history: list[dict[str, Any]] = []
    first = None
    cfg = DropConfig.from_model(work) or DropConfig()
    for step in range(count):
        scores = compute_importance(work, calibration, batch_size=batch_size, metric=metric, progress=False)
        first = first or scores
        order = drop_order(scores, kind, protect=protect, keep_last=keep_last)
        if not order:
            raise ValueError(f"iterative: after {step} drops nothing else may be dropped (n={count} requested).")
        unit = order[0]
        history.append({"step": step + 1, "kind": unit[0], "layer": unit[1], "score": scores.scores_for(unit[0])[unit[1]]})
        cfg = _to_config([unit], scores.dropped)  # cumulative: earlier drops plus this one
        apply_drop(work, cfg)
        if progress:
            print(f"iterative {kind}: step {step + 1}/{count}: dropped {unit[0]} {unit[1]} (score {history[-1]['score']:.5f})")
    prov = _provenance(first, kind, "importance", keep_last) if first is not None else {"metric": metric}
    prov["method"] = f"iterative-{kind}-drop"
    result = DropConfig(attn=sorted(cfg.attn), mlp=sorted(cfg.mlp), **prov)
    if inplace and count:
        apply_drop(work, result)  # idempotent; records the provenance on the model
    return (result, history) if return_history else result
