"""`layerdrop plan`: the drop that meets a speed-up, KV-cache or weight target on a workload, measured.

Options come from three configs: the targets and eligible kinds (`SelectionConfig`), the workload
(`BenchConfig`: engine, batch, lengths, dtype through --dtype) and how to plan (`PlanConfig`).
"""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape
from rich.table import Table

from layerdrop_patch.cli.common import MODEL_HELP, check_output, console, handle_errors
from layerdrop_patch.cli.options import with_configs
from layerdrop_patch.evaluation.bench import BenchConfig
from layerdrop_patch.models import LoadConfig
from layerdrop_patch.planning import PlanConfig
from layerdrop_patch.scoring.calibration import CalibrationConfig
from layerdrop_patch.selection.config import SelectionConfig

_TARGETS = ("kind", "metric", "protect", "keep_last", "objective", "target_speedup", "kv_budget", "param_budget")


def plan_table(plan, title: str) -> Table:
    table = Table(title=escape(title))
    table.add_column("")
    table.add_column("value", justify="right")
    drop = plan.drop_config
    table.add_row("attention dropped", escape(str(drop["attn"])))
    table.add_row("MLP dropped", escape(str(drop["mlp"])))
    table.add_row("predicted speed-up", f"x{plan.predicted_speedup:.3f}")
    if plan.measured_speedup is not None:
        table.add_row("measured speed-up", f"x{plan.measured_speedup:.3f}")
        table.add_row("prediction error", f"{100 * plan.prediction_error:+.1f}%")
    table.add_row("KV cache kept", f"{100 * plan.kv_kept:.1f}%")
    table.add_row("weights kept", f"{100 * plan.params_kept:.1f}%")
    table.add_row(f"predicted quality cost ({plan.quality})", f"{plan.predicted_quality_cost:.4f}")
    table.add_row("planning rounds", str(len(plan.rounds)))
    return table


@handle_errors
@with_configs(selection=(SelectionConfig, {"only": _TARGETS, "defaults": {"kind": "joint"}}),
              workload=(BenchConfig, {"exclude": ("seed",)}), planning=PlanConfig,
              calibration=(CalibrationConfig, {"exclude": ("batch_size",)}), load=LoadConfig)
def plan(
    model: str = typer.Argument(..., help=MODEL_HELP),
    out: Path = typer.Option(..., "--out", "-o", help="Directory for plan.json, the profile, recipe.yaml."),
    overwrite: bool = typer.Option(False, help="Replace OUT if it exists."),
    selection=None, workload=None, planning=None, calibration=None, load=None,
):
    """Plan the drop that meets a target on YOUR workload (engine, batch, lengths), losing the least quality.

    Measures what each attention and MLP costs on the workload, chooses per layer (keep, drop attention, drop MLP,
    drop the block) the cheapest combination meeting the target, then times the plan against the unpruned model.

    Examples:

      layerdrop plan smollm2-135m --target-speedup 1.2 --batch-size 1 --prompt-len 128 --new-tokens 64 -o plan/

      layerdrop plan mistralai/Mistral-7B-v0.1 --target-speedup 1.3 --batch 16 --prompt-len 2048 --new-tokens 256 --engine vllm --kv-budget 0.5 -o plan7b/
    """
    import yaml

    from layerdrop_patch.files import atomic_write_json, atomic_write_text, staged_directory
    from layerdrop_patch.models import load_model
    from layerdrop_patch.planning import fit_cost_model, measure_profile, plan_drop
    from layerdrop_patch.scoring import compute_importance

    check_output(out, model, overwrite)
    m, tok = load_model(model, load)
    cal = calibration.load(tok)
    scores = compute_importance(m, cal, metric=selection.metric) if planning.quality == "scores" else None
    result = plan_drop(m, tok, selection, workload, planning, scores=scores, calibration=cal, model_name=model)
    profile = measure_profile(m, tok, workload, model_name=model, use_cache=True, progress=False)
    cost_model = fit_cost_model(profile, m.config)
    recipe = {"model": model, "dtype": load.dtype, "calibration": calibration.to_dict(),
              "drop": {k: v for k, v in selection.to_dict().items() if k in _TARGETS and v not in (None, [], False)},
              "plan": planning.to_dict(), "bench": {k: v for k, v in workload.to_dict().items() if v is not None},
              "evaluate": {"tasks": [], "perplexity_tokens": 8192}}
    with staged_directory(out, overwrite=overwrite) as staging:
        atomic_write_json(staging / "plan.json", {**result.to_dict(), "model": model, "workload": workload.to_dict(),
                                                  "profile_check": profile.check, "cost_model": cost_model.to_dict()})
        atomic_write_json(staging / "profile.json", profile.to_dict())
        atomic_write_text(staging / "recipe.yaml", "# reproduces this plan: layerdrop recipe run recipe.yaml\n"
                          + yaml.safe_dump(recipe, sort_keys=False))
    console.print(plan_table(result, f"{model}: plan for {workload.engine}, batch {workload.batch_size}, "
                                     f"{workload.prompt_len} + {workload.new_tokens} tokens"))
    console.print(f"wrote {out}/plan.json, profile.json, recipe.yaml", highlight=False)


def register(app: typer.Typer) -> None:
    app.command()(plan)
