"""Joint selection under a budget: attention and MLP units compete on quality lost per unit of cost.

He et al.'s Joint Layer Drop ranks attention and MLP by score alone, but an MLP holds about twice the weights of
an attention sublayer and none of the KV cache, so "drop the 8 lowest scores" buys very different savings
depending on what those 8 are. Here every unit has a cost (what removing it saves) and a quality loss (its
importance score, lower = more redundant); units are taken in order of loss per cost until the requested
share of the total cost is saved. Costs:

* ``params``: the unit's parameters (attention vs MLP weights of that layer; a block is both);
* ``kv``: the unit's KV-cache bytes per token (attention only; MLP units then save nothing and are not taken);
* any mapping unit -> cost, e.g. the measured per-sublayer times of a planning cost profile (`budget_select`).

`ratio` is the share of the model's total cost to remove (0.25 = a quarter of the attention+MLP parameters);
the last unit taken may overshoot it, never undershoot.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

from layerdrop_patch.architectures import decoder_layers, get_architecture
from layerdrop_patch.errors import ConfigError
from layerdrop_patch.selection.registry import (Selection, SelectionInputs, Unit, is_gone, protected, provenance,
                                                register_method, to_drop_config)

__all__ = ["COSTS", "unit_costs", "budget_select"]

COSTS = ("params", "kv")


def unit_costs(model: Any, cost: str) -> dict[Unit, float]:
    """What removing each attention / MLP unit of `model` saves, in the units of `cost` (see the module doc)."""
    if cost not in COSTS:
        raise ConfigError(f"cost must be one of {', '.join(COSTS)}, got {cost!r}")
    arch = get_architecture(model)
    config = model.config
    kv_heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    costs: dict[Unit, float] = {}
    for i, layer in enumerate(decoder_layers(model)):
        for kind, part in (("attn", arch.attn), ("mlp", arch.mlp)):
            module = getattr(layer, part.module, None)
            if cost == "params":
                costs[(kind, i)] = float(sum(p.numel() for p in module.parameters())) if module is not None else 0.0
            else:
                costs[(kind, i)] = float(2 * kv_heads * head_dim) if kind == "attn" and module is not None else 0.0
    return costs


def budget_select(scores: Any, costs: Mapping[Unit, float], kind: str, ratio: float, *, protect=(),
                  keep_last: bool = False, cost_name: str = "cost") -> tuple[Any, list[dict[str, Any]]]:
    """(cumulative DropConfig, order taken): units by score per cost until `ratio` of the total cost is saved."""
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0 < ratio <= 1:
        raise ConfigError(f"budget selection takes ratio: the share of the model's {cost_name} to remove, in (0, 1]; "
                          f"got {ratio!r}")
    num_layers = scores.num_layers
    dropped = {"attn": list(scores.dropped.get("attn", [])), "mlp": list(scores.dropped.get("mlp", []))}
    guarded = protected(num_layers, protect, keep_last)
    kinds = {"joint": ("attn", "mlp"), "attn": ("attn",), "mlp": ("mlp",), "block": ("block",)}[kind]

    def unit_cost(unit: Unit) -> float:
        k, layer = unit
        return costs.get(("attn", layer), 0.0) + costs.get(("mlp", layer), 0.0) if k == "block" else costs.get(unit, 0.0)

    total = sum(costs.values())
    candidates = [(k, layer) for layer in range(num_layers) for k in kinds
                  if layer not in guarded and not is_gone((k, layer), dropped)]
    value = {u: scores.scores_for(u[0])[u[1]] for u in candidates}
    ranked = sorted((u for u in candidates if unit_cost(u) > 0 and not math.isnan(value[u])),
                    key=lambda u: (value[u] / unit_cost(u), u[1]))
    chosen, saved, order = [], 0.0, []
    for unit in ranked:
        if saved >= ratio * total:
            break
        chosen.append(unit)
        saved += unit_cost(unit)
        order.append({"step": len(chosen), "kind": unit[0], "layer": unit[1], "score": value[unit],
                      "cost": unit_cost(unit), "saved": saved / total})
    if saved < ratio * total:
        raise ConfigError(f"cannot save {ratio:.0%} of the {cost_name}: the droppable units add up to "
                          f"{saved / total:.0%} (protected layers {sorted(guarded)}).")
    return to_drop_config(chosen, dropped, **provenance(scores, f"budget-{kind}-{cost_name}", kind, scores.metric)), order


@register_method("budget", needs=("scores", "model"),
                 description="joint under a budget: lowest score per unit of cost first, until ratio of the cost "
                             "(params or KV) is saved")
def _budget(config: Any, inputs: SelectionInputs) -> Selection:
    if config.n is not None:
        raise ConfigError("method budget takes ratio (the share of the cost to remove), not n.")
    scores = inputs.scores.with_metric(config.metric)
    cfg, order = budget_select(scores, unit_costs(inputs.model, config.cost), config.kind, config.ratio,
                               protect=config.protect, keep_last=config.keep_last, cost_name=config.cost)
    return Selection(cfg, order)
