"""Planning: drops chosen for a speed-up, KV-cache or weight target on a workload, and checked by measurement.

    PlanConfig                 how to plan: the quality signal, verification, refinement rounds
    plan_drop                  profile -> cost model -> optimal choice per layer -> measured verification
    measure_profile            what each attention / MLP costs for a workload, measured (cached as JSON)
    fit_cost_model             FLOPs and bytes moved, fitted to a profile, for workloads not measurable here

The targets themselves (`target_speedup`, `kv_budget`, `param_budget`) are selection options
(`SelectionConfig`, a recipe's `drop:` section); the workload is a `BenchConfig` (engine, batch, lengths).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from layerdrop_patch.architectures import drop_of
from layerdrop_patch.errors import ConfigError
from layerdrop_patch.options import StageConfig, non_negative, option, positive
from layerdrop_patch.planning.cost_model import CostModel, estimate_speedup, fit_cost_model
from layerdrop_patch.planning.planner import Plan, _kv_weights, solve, unit_quality, verify
from layerdrop_patch.planning.profile import CostProfile, measure_profile
from layerdrop_patch.selection.budget import unit_costs

__all__ = ["PlanConfig", "Plan", "plan_drop", "CostProfile", "measure_profile", "CostModel", "fit_cost_model",
           "estimate_speedup", "loss_quality"]

_KINDS = {"joint": ("attn", "mlp", "block"), "attn": ("attn",), "mlp": ("mlp",), "block": ("block",)}


@dataclass
class PlanConfig(StageConfig):
    """How a target is planned: the `plan` section of a recipe and the options of `layerdrop plan`."""

    section = "plan"
    quality: str = option("scores", "What a removal is predicted to cost: scores (importance scores) or loss (the "
                          "calibration loss increase of removing it alone; slower, one scale for attention, MLP "
                          "and blocks).", choices=("scores", "loss"))
    verify: bool = option(True, "Measure the plan's speed-up against the unpruned model on the workload.")
    refine: int = option(2, "Rounds of re-planning when the measured speed-up falls short of the target.",
                         check=non_negative)
    slack: float = option(0.02, "Measurement noise tolerated before re-planning (0.02 = 2%).", check=positive)
    cache_profile: bool = option(True, "Reuse a cost profile measured earlier for the same model and workload.",
                                 flag="--cache-profile/--fresh-profile")


def loss_quality(model: Any, calibration: Any, kinds: tuple[str, ...], objective: str = "lm",
                 progress: bool = True) -> dict[tuple[str, int], float]:
    """The calibration loss increase of removing each attention / MLP / block alone: one scale for all."""
    from tqdm.auto import tqdm

    from layerdrop_patch.scoring.calibration import as_token_tensor
    from layerdrop_patch.selection.greedy import GreedyTrunk, _with

    ids, _ = as_token_tensor(calibration)
    trunk = GreedyTrunk(model, ids, 4, objective)
    base = trunk.loss()
    out = {}
    candidates = [(o, i) for i in range(len(trunk.layers)) for o in kinds]
    for option_, layer in tqdm(candidates, desc="loss of each removal", disable=not progress):
        flags = _with(trunk.flags, (option_, layer))
        out[(option_, layer)] = trunk.loss(flags, start=layer) - base if flags != trunk.flags else float("nan")
    return out


def plan_drop(model: Any, tokenizer: Any, selection: Any, workload: Any, config: PlanConfig | None = None, *,
              scores: Any = None, calibration: Any = None, quality_table: dict | None = None,
              model_name: str | None = None, progress: bool = True) -> Plan:
    """Plan the drop meeting `selection`'s targets on `workload` at the least predicted quality cost; verify it.

    `selection`: a SelectionConfig with `target_speedup`, `kv_budget` and/or `param_budget` (its `kind` says which
    units may go: joint = attention, MLP and whole blocks; its `protect` / `keep_last` are honoured).
    `scores` (quality="scores") or `calibration` (quality="loss") give the quality signal; with quality="loss",
    `quality_table` (the output of `loss_quality` for the same kinds and objective, computed once) spares
    recomputing it when planning several targets.
    """
    config = PlanConfig.build(config)
    if selection.target_speedup is None and selection.kv_budget is None and selection.param_budget is None:
        raise ConfigError("a plan needs a target: --target-speedup, --kv-budget or --param-budget.")
    num_layers = model.config.num_hidden_layers
    kinds = _KINDS[selection.kind]
    if quality_table is not None and config.quality != "loss":
        raise ConfigError(f"quality_table is a loss table; it needs quality 'loss', not '{config.quality}'.")
    if config.quality == "scores":
        if scores is None:
            raise ConfigError("quality 'scores' needs importance scores (compute_importance).")
        quality = unit_quality(scores.with_metric(selection.metric), num_layers)
    elif quality_table is not None:
        quality = quality_table
    else:
        if calibration is None:
            raise ConfigError("quality 'loss' needs calibration tokens.")
        quality = loss_quality(model, calibration, kinds, selection.objective, progress)
    guarded = set(selection.protect) | ({num_layers - 1} if selection.keep_last else set())
    quality = {u: (float("nan") if u[1] in guarded else q) for u, q in quality.items()}
    params = unit_costs(model, "params")
    total_params = float(sum(p.numel() for p in model.parameters()))
    profile = measure_profile(model, tokenizer, workload, model_name=model_name, use_cache=config.cache_profile,
                              progress=progress)
    already = drop_of(model)
    target = selection.target_speedup
    rounds: list[dict[str, Any]] = []
    for round_ in range(config.refine + 1):
        drop, cost = solve(profile, quality, params, kinds=kinds, already=already, target_speedup=target,
                           kv_budget=selection.kv_budget, param_budget=selection.param_budget, config=model.config,
                           total_params=total_params)
        predicted = profile.speedup(drop)
        measured = verify(model, tokenizer, drop, workload, progress) if config.verify else None
        rounds.append({"round": round_, "planned_for": target, "attn": drop.attn, "mlp": drop.mlp,
                       "predicted_speedup": predicted, "measured_speedup": measured, "quality_cost": cost})
        if measured is None or selection.target_speedup is None or \
                measured >= selection.target_speedup * (1 - config.slack):
            break
        target = (target or 1.0) * predicted / measured  # aim higher by what the prediction overshot
    drop.method, drop.metric = "plan", (selection.metric if config.quality == "scores" else "single-removal loss")
    kv = _kv_weights(model.config, profile)
    removed = sum(params[("attn", i)] for i in drop.attn) + sum(params[("mlp", i)] for i in drop.mlp)
    return Plan(drop_config=drop.to_dict(), target_speedup=selection.target_speedup, kv_budget=selection.kv_budget,
                param_budget=selection.param_budget, predicted_speedup=predicted, measured_speedup=measured,
                prediction_error=(predicted / measured - 1) if measured else None,
                kv_kept=sum(w for i, w in enumerate(kv) if i not in drop.attn) / sum(kv),
                params_kept=(total_params - removed) / total_params,
                predicted_quality_cost=cost, quality=config.quality, rounds=rounds)
