"""Iterative selection: drop one unit at a time, re-scoring the really pruned model after each drop.

Unlike the reference code, which skips a dropped layer entirely when re-scoring, the model here is really patched
with `apply_drop`, so the surviving sublayer of a half-dropped layer runs and is scored.
"""

from __future__ import annotations

import copy
from typing import Any, Iterable

from tqdm.auto import tqdm

from layerdrop_patch.architectures import decoder_layers
from layerdrop_patch.config import DropConfig
from layerdrop_patch.errors import ConfigError
from layerdrop_patch.patch import apply_drop
from layerdrop_patch.scoring.metrics import DEFAULT_METRIC
from layerdrop_patch.scoring.streaming import compute_importance
from layerdrop_patch.selection.ranking import drop_order
from layerdrop_patch.selection.registry import (SELECT_KINDS, Selection, SelectionInputs, count_for, provenance,
                                                register_method, to_drop_config)

__all__ = ["iterative_select"]


def iterative_select(model: Any, calibration: Any, kind: str, n: int | None = None, ratio: float | None = None, *,
                     metric: str = DEFAULT_METRIC, protect: Iterable[int] = (), keep_last: bool = False,
                     batch_size: int = 1, progress: bool = True, inplace: bool = False,
                     return_history: bool = False) -> Any:
    """Drop one unit at a time, re-scoring the model with every earlier drop applied.

    Works on a deep copy of `model` unless ``inplace=True`` (then `model` ends up patched with the result).
    Returns the cumulative DropConfig (method ``"iterative-<kind>-drop"``, scores of the first round); with
    ``return_history=True`` also a list of ``{"step", "kind", "layer", "score"}`` dicts in drop order.
    Needs a resident model (not the offloaded mode): each round is a full streaming pass.
    """
    if kind not in SELECT_KINDS:
        raise ConfigError(f"kind must be one of {', '.join(SELECT_KINDS)}, got {kind!r}")
    work = model if inplace else copy.deepcopy(model)
    count = count_for(kind, len(decoder_layers(work)), n, ratio)
    history: list[dict[str, Any]] = []
    first = None
    cfg = DropConfig.from_model(work) or DropConfig()
    for step in tqdm(range(count), desc=f"iterative {kind} selection", unit="drop", disable=not progress):
        scores = compute_importance(work, calibration, batch_size=batch_size, metric=metric, progress=False)
        first = first or scores
        order = drop_order(scores, kind, protect=protect, keep_last=keep_last)
        if not order:
            raise ConfigError(f"iterative: after {step} drops nothing else may be dropped (n={count} requested).")
        unit = order[0]
        history.append({"step": step + 1, "kind": unit[0], "layer": unit[1],
                        "score": scores.scores_for(unit[0])[unit[1]]})
        cfg = to_drop_config([unit], scores.dropped)  # cumulative: earlier drops plus this one
        apply_drop(work, cfg)
    prov = provenance(first, f"iterative-{kind}-drop", kind, metric) if first is not None else {"metric": metric}
    result = DropConfig(attn=sorted(cfg.attn), mlp=sorted(cfg.mlp), **prov)
    if inplace and count:
        apply_drop(work, result)  # idempotent; records the provenance on the model
    return (result, history) if return_history else result


@register_method("iterative", needs=("model", "calibration"),
                 description="drop the lowest-scoring unit, re-score the pruned model, repeat")
def _iterative(config: Any, inputs: SelectionInputs) -> Selection:
    cfg, history = iterative_select(inputs.model, inputs.calibration, config.kind, config.n, config.ratio,
                                    metric=config.metric, protect=config.protect, keep_last=config.keep_last,
                                    progress=inputs.progress, return_history=True)
    return Selection(cfg, history)
