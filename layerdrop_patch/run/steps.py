"""The steps `run_recipe` executes. Each takes the run state, does one job through `pipeline` (or the recover /
quantize stages), writes its outputs atomically into the output directory and returns a JSON-able result whose
`outputs` lists the paths (relative to the output directory, files or directories) that make the step done; the
runner records their fingerprints and checks them before it skips a finished step.
"""

from __future__ import annotations

import json
from typing import Any

from layerdrop_patch.checkpoint import save_pretrained
from layerdrop_patch.evaluation.suite import eval_table_markdown, evaluate_model
from layerdrop_patch.files import atomic_write_json, atomic_write_text, staged_directory
from layerdrop_patch.run import pipeline
from layerdrop_patch.scoring import ImportanceScores
from layerdrop_patch.selection import METHODS

__all__ = ["STEPS"]


def _score(run, steps) -> dict:
    model, tok = run.base_model()
    calibration = run.calibration()
    run.log(f"    calibration: {calibration.description}")
    kind = run.recipe.drop.kind
    scores = pipeline.score_model(model, calibration, run.out, metric=run.recipe.drop.metric,
                                  batch_size=run.recipe.calibration.batch_size, progress=run.progress,
                                  plot_kind="attn" if kind == "block" else kind, model_name=run.recipe.model)
    return {"calibration": calibration.description, "tokens": scores.tokens,
            "outputs": ["scores.json", "importance.png", "drop_order.png"]}


def _evaluate_baseline(run, steps) -> dict:
    model, tok = run.base_model()
    result = evaluate_model(model, tok, run.recipe.evaluate, progress=run.progress)
    atomic_write_json(run.out / "eval_baseline.json", result)
    return {"average": result["average"], "outputs": ["eval_baseline.json"]}


def _drop(run, steps) -> dict:
    drop = run.recipe.drop
    model, tok = run.base_model()
    scores = ImportanceScores.load(run.out / "scores.json") if "score" in steps else None
    outputs = ["drop_config.json", "model-dropped"]
    if drop.planned:
        from layerdrop_patch.config import DropConfig
        from layerdrop_patch.evaluation.bench import BenchConfig
        from layerdrop_patch.planning import PlanConfig, plan_drop

        planning = run.recipe.plan or PlanConfig()
        plan = plan_drop(model, tok, drop, run.recipe.bench or BenchConfig(), planning, scores=scores,
                         calibration=run.calibration() if planning.quality == "loss" else None,
                         model_name=run.recipe.model, progress=run.progress)
        atomic_write_json(run.out / "plan.json", plan.to_dict())
        cfg = DropConfig.from_dict(plan.drop_config)
        atomic_write_json(run.out / "drop_config.json", cfg.to_dict())
        outputs.append("plan.json")
        run.log(f"    planned for x{drop.target_speedup}: predicted x{plan.predicted_speedup:.3f}, measured "
                f"{'x%.3f' % plan.measured_speedup if plan.measured_speedup else 'not measured'}")
    else:
        calibration = run.calibration() if "calibration" in METHODS[drop.method].needs else None
        cfg = pipeline.choose_and_record(drop, scores=scores, model=model, calibration=calibration,
                                         progress=run.progress, out_dir=run.out).drop_config
    plot = run.out / "importance.png"
    result = pipeline.drop_and_save(model, tok, cfg, run.out / "model-dropped", base_model=run.recipe.model,
                                    scores_plot=plot if plot.is_file() else None, overwrite=True)
    run.log(f"    dropped {cfg.describe()} ({cfg.num_dropped} sublayers); checkpoint: model-dropped/")
    result.update(checkpoint="model-dropped", outputs=outputs)
    run.set_model(model, tok, result)
    return result


def _recover(run, steps) -> dict:
    from layerdrop_patch.recover import plot_loss_curve, recover_lora

    from layerdrop_patch.models import load_model

    config = run.recipe.recover
    model, tok = run.current_model(steps, "recover")
    teacher = load_model(run.recipe.model, run.recipe.load, tokenizer=False)[0] if config.loss != "lm" else None
    model, res = recover_lora(model, tok, config=config, teacher=teacher, progress=run.progress)
    out = run.out / "model-recovered"
    result = {"ppl_before": res.ppl_before, "ppl_after": res.ppl_after, "steps": res.steps, "seconds": res.seconds,
              "merged": res.merged, "final_loss": res.losses[-1] if res.losses else None}
    if config.merge:
        save_pretrained(model, out, tokenizer=tok, overwrite=True)
        result.update(checkpoint="model-recovered", outputs=["model-recovered"])
    else:  # adapter kept: the dropped checkpoint is the base it applies to
        with staged_directory(out, overwrite=True) as staging:
            model.save_pretrained(str(staging / "adapter"))
        result.update(checkpoint=run.result("drop")["checkpoint"], adapter="model-recovered/adapter",
                      outputs=["model-recovered"])
    plot_loss_curve(res.losses, run.out / "recovery_loss.png")
    atomic_write_json(run.out / "recovery.json", res.to_dict())
    result["outputs"] += ["recovery_loss.png", "recovery.json"]
    run.log(f"    LoRA {config.steps} steps: WikiText-2 perplexity {res.ppl_before} -> {res.ppl_after}")
    run.set_model(model, tok, result)
    return result


def _quantize(run, steps) -> dict:
    from layerdrop_patch.quantize import quantize_awq

    config = run.recipe.quantize
    model, tok = run.current_model(steps, "quantize")
    model, res = quantize_awq(model, tok, run.recipe.calibration.source, run.out / "model-awq", config,
                              inplace=True, overwrite=True)
    run.log(f"    AWQ {config.bits}-bit: WikiText-2 perplexity {res.ppl_before:.2f} -> {res.ppl_after:.2f}")
    result = {**res.to_dict(), "checkpoint": "model-awq", "outputs": ["model-awq"]}
    run.set_model(model, tok, result)
    return result


def _evaluate(run, steps) -> dict:
    model, tok = run.current_model(steps, "evaluate")
    result = evaluate_model(model, tok, run.recipe.evaluate, progress=run.progress)
    atomic_write_json(run.out / "eval.json", result)
    return {"average": result["average"], "outputs": ["eval.json"]}


def _report(run, steps) -> dict:
    columns: dict[str, Any] = {}
    if "evaluate_baseline" in steps:
        columns["baseline"] = json.loads((run.out / "eval_baseline.json").read_text())
    columns[run.recipe.name] = json.loads((run.out / "eval.json").read_text())
    table = eval_table_markdown(columns)
    atomic_write_text(run.out / "eval_table.md", table)
    produced = [s for s in steps if s in ("drop", "recover", "quantize")]
    summary = {"recipe": run.recipe.name, "model": run.recipe.model, "output": str(run.out),
               "steps": {s: {k: v for k, v in run.result(s).items() if k != "outputs"} for s in steps if s != "report"},
               "final_checkpoint": run.result(produced[-1])["checkpoint"], "eval": columns}
    atomic_write_json(run.out / "summary.json", summary)
    run.log(table)
    return {"outputs": ["eval_table.md", "summary.json"]}


STEPS = {"score": _score, "evaluate_baseline": _evaluate_baseline, "drop": _drop, "recover": _recover,
         "quantize": _quantize, "evaluate": _evaluate, "report": _report}
