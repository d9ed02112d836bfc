"""Plan a drop for a target: the sublayers whose removal meets a speed-up, KV-cache or weight target while losing
the least predicted quality, then verify the speed-up by measurement.

Users do not want "drop 8 attention layers"; they want "1.3x faster for my workload, losing as little as
possible". Each layer offers four choices: keep it, drop its attention, drop its MLP, drop the whole block. Each
choice has a quality cost (importance scores, or the loss increase of removing it alone on calibration tokens)
and savings: seconds per request from the measured cost profile, KV-cache bytes, weight bytes. The planner
solves this multiple-choice knapsack by dynamic programming over the layers: partial plans are merged when each
constraint's exact running saving falls in the same of `_BINS` steps (the cheapest is kept), and a plan is only
accepted when its exact savings meet every target, so rounding neither breaks a target nor piles up over many
units into a plan that overshoots it. Then it measures: the plan and the unpruned model are timed side by side;
if the measured speed-up falls short of the target by more than `slack`, the target is raised by the shortfall
and the plan made again (`refine` rounds).
"""

from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass, field
from typing import Any

from layerdrop_patch.config import DropConfig
from layerdrop_patch.errors import ConfigError
from layerdrop_patch.patch import apply_drop
from layerdrop_patch.planning.profile import CostProfile

__all__ = ["Plan", "solve", "unit_quality", "verify"]

_BINS = (2000, 300, 60)  # progress steps per constraint, for one, two or three constraints at once
_OPTIONS = {"attn": (True, False), "mlp": (False, True), "block": (True, True)}


@dataclass
class Plan:
    """A planned drop: what it removes, what it was predicted and measured to buy, what it is predicted to cost."""

    drop_config: dict[str, Any]
    target_speedup: float | None
    kv_budget: float | None
    param_budget: float | None
    predicted_speedup: float
    measured_speedup: float | None = None
    prediction_error: float | None = None  # predicted / measured - 1
    kv_kept: float = 1.0
    params_kept: float = 1.0
    predicted_quality_cost: float = 0.0
    quality: str = "scores"
    rounds: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def unit_quality(scores: Any, num_layers: int) -> dict[tuple[str, int], float]:
    """Quality cost per option from importance scores (lower = more redundant); NaN = already gone."""
    out = {}
    for i in range(num_layers):
        for option in ("attn", "mlp", "block"):
            out[(option, i)] = scores.scores_for(option)[i]
    return out


def _kv_weights(config: Any, profile: CostProfile) -> list[float]:
    """KV bytes each attention layer holds for the profile's workload (a sliding layer at most its window)."""
    window = getattr(config, "sliding_window", None) or 0
    context = profile.workload["prompt_len"] + profile.workload["new_tokens"]
    return [float(min(context, window)) if kind == "sliding" and window else float(context)
            for kind in profile.attention_kinds]


def solve(profile: CostProfile, quality: dict[tuple[str, int], float], params: dict[tuple[str, int], float], *,
          kinds: tuple[str, ...], already: DropConfig, target_speedup: float | None, kv_budget: float | None,
          param_budget: float | None, config: Any, total_params: float) -> tuple[DropConfig, float]:
    """(DropConfig, predicted quality cost): the cheapest choice per layer meeting every given target."""
    base = profile.base["prefill"] + profile.base["decode"]
    kv = _kv_weights(config, profile)
    needs = []  # (name, requirement, saving of option at layer i)
    if target_speedup is not None:
        needs.append((f"speed-up x{target_speedup:g}", base * (1 - 1 / target_speedup),
                      lambda o, i: sum(profile.saved(k, i) for k, on in zip(("attn", "mlp"), _OPTIONS[o]) if on)))
    if kv_budget is not None:
        needs.append((f"KV cache <= {kv_budget:g}", sum(kv) * (1 - kv_budget),
                      lambda o, i: kv[i] if _OPTIONS[o][0] else 0.0))
    if param_budget is not None:
        needs.append((f"weights <= {param_budget:g}", total_params * (1 - param_budget),
                      lambda o, i: sum(params[(k, i)] for k, on in zip(("attn", "mlp"), _OPTIONS[o]) if on)))
    if not needs:
        raise ConfigError("a plan needs a target: target_speedup, kv_budget or param_budget.")
    bins = _BINS[min(len(needs), len(_BINS)) - 1]

    def key(saved: tuple[float, ...]) -> tuple[int, ...]:
        """Each constraint's progress in bins from the exact running saving; `bins` only once it is met."""
        return tuple(bins if s >= req * (1 - 1e-12) else min(bins - 1, math.floor(bins * s / req))
                     for s, (_, req, _) in zip(saved, needs))

    def rank(state: tuple) -> tuple:
        """Cheaper first; at equal cost fewer removals, then more savings (more room above the target)."""
        cost, count, saved, _ = state
        return cost, count, tuple(-s for s in saved)

    # a state: (quality cost, units removed, exact savings, choices), kept per key; rounding happens only in the
    # key, never in the savings, so it cannot pile up over many units
    start = tuple(0.0 for _ in needs)
    states: dict[tuple[int, ...], tuple[float, int, tuple[float, ...], tuple]] = {key(start): (0.0, 0, start, ())}
    for i in range(profile.num_layers):
        options = [o for o in kinds if not (i in already.attn and _OPTIONS[o][0]) and
                   not (i in already.mlp and _OPTIONS[o][1]) and not math.isnan(quality.get((o, i), math.nan))]
        nxt = dict(states)
        for cost, count, saved, chosen in states.values():
            for o in options:
                total = tuple(s + saving(o, i) for s, (_, _, saving) in zip(saved, needs))
                candidate = (cost + max(quality[(o, i)], 0.0), count + 1, total, chosen + ((o, i),))
                k = key(total)
                if k not in nxt or rank(candidate) < rank(nxt[k]):
                    nxt[k] = candidate
        states = nxt
    done = tuple(bins for _ in needs)
    if done not in states:
        reachable = max(states, key=sum)
        missing = [f"{name} (at most {100 * s / bins:.0f}% of the way)" for (name, _, _), s in zip(needs, reachable)
                   if s < bins]
        raise ConfigError(f"no drop of the allowed kinds {list(kinds)} meets {', '.join(missing)} for this workload; "
                          "allow more kinds (joint), relax the target, or protect fewer layers.")
    cost, _, _, chosen = states[done]
    attn = set(already.attn) | {i for o, i in chosen if _OPTIONS[o][0]}
    mlp = set(already.mlp) | {i for o, i in chosen if _OPTIONS[o][1]}
    return DropConfig(attn=sorted(attn), mlp=sorted(mlp)), cost


def verify(model: Any, tokenizer: Any, drop: DropConfig, workload: Any, progress: bool = True) -> float:
    """The measured speed-up of `drop` on `workload`: pruned and unpruned timed side by side, interleaved."""
    from layerdrop_patch.evaluation.bench import compare_engine

    pruned = apply_drop(copy.deepcopy(model), DropConfig(attn=drop.attn, mlp=drop.mlp))
    result = compare_engine({"unpruned": model, "planned": pruned}, tokenizer, workload, progress=progress)
    return float(result["ratios"]["planned"]["total_speedup"])
