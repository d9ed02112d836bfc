"""The steps `run_recipe` executes. Each takes the run state, does one job through `pipeline` (or the quantize /
recovery modules), writes its outputs atomically into the output directory and returns a JSON-able result whose
`outputs` lists the paths (relative to the output directory) that must exist for the step to count as done.

Checkpoints are written by `checkpoint.save_pretrained`, which builds them in a staging directory and renames
it into place, so a killed run never leaves a directory that looks complete.
"""

from __future__ import annotations

import math
from typing import Any

from layerdrop_patch import pipeline

__all__ = ["STEPS"]


def _score(run, steps) -> dict:
    model, tok = run.base_model()
    calibration = run.calibration()
    run.log(f"    calibration: {calibration.description}")
    kind = run.recipe["drop"]["kind"]
    scores = pipeline.score_model(model, calibration, run.out, metric=run.recipe["drop"]["metric"],
                                  batch_size=run.recipe["calibration"]["batch_size"], progress=run.progress,
                                  plot_kind="attn" if kind == "block" else kind, model_name=run.recipe["model"])
    return {"calibration": calibration.description, "tokens": scores.tokens,
            "outputs": ["scores.json", "importance.png", "drop_order.png"]}


def _eval_settings(run) -> dict:
    e = run.recipe["evaluate"]
    return dict(tasks=e["tasks"] or None, limit=e["limit"], num_fewshot=e["num_fewshot"], batch_size=e["batch_size"],
                perplexity_dataset=e["perplexity_dataset"] if e["perplexity"] else None,
                perplexity_tokens=e["perplexity_tokens"], perplexity_seq_len=e["perplexity_seq_len"],
                progress=run.progress)


def _evaluate_baseline(run, steps) -> dict:
    model, tok = run.base_model()
    result = pipeline.evaluate_model(model, tok, **_eval_settings(run))
    pipeline.atomic_write_json(run.out / "eval_baseline.json", result)
    return {"average": result["average"], "outputs": ["eval_baseline.json"]}


def _drop(run, steps) -> dict:
    from layerdrop_patch.scoring import ImportanceScores

    d = run.recipe["drop"]
    model, tok = run.base_model()
    scores = ImportanceScores.load(run.out / "scores.json") if "score" in steps else None
    calibration = run.calibration() if d["mode"] == "iterative" else None
    cfg, _ = pipeline.choose_drop(scores, d["kind"], n=d["n"], ratio=d["ratio"], method=d["method"], mode=d["mode"],
                                  protect=d["protect"], keep_last=d["keep_last"], seed=d["seed"], model=model,
                                  calibration=calibration, metric=d["metric"], progress=run.progress, out_dir=run.out)
    plot = run.out / "importance.png"
    result = pipeline.drop_and_save(model, tok, cfg, run.out / "model-dropped", base_model=run.recipe["model"],
                                    scores_plot=plot if plot.is_file() else None, overwrite=True)
    run.log(f"    dropped {cfg.describe()} ({cfg.num_dropped} sublayers); checkpoint: model-dropped/")
    result.update(checkpoint="model-dropped", outputs=["drop_config.json", "model-dropped/config.json"])
    run._set(model, tok, result)
    return result


def _recover(run, steps) -> dict:
    from layerdrop_patch.checkpoint import save_pretrained
    from layerdrop_patch.recovery import plot_loss_curve, recover_lora

    r = run.recipe["recover"]
    model, tok = run.current_model(steps, "recover")
    model, res = recover_lora(model, tok, r["data"], steps=r["steps"], batch_size=r["batch_size"], seq_len=r["seq_len"],
                              lr=r["lr"], rank=r["rank"], alpha=r["alpha"], merge=r["merge"], seed=r["seed"],
                              eval_tokens=r["eval_tokens"] or None, progress=run.progress)
    out = run.out / "model-recovered"
    result = {"ppl_before": res.ppl_before, "ppl_after": res.ppl_after, "steps": res.steps, "seconds": res.seconds,
              "merged": res.merged, "final_loss": res.losses[-1] if res.losses else None}
    if r["merge"]:
        save_pretrained(model, out, tokenizer=tok, overwrite=True)
        result.update(checkpoint="model-recovered", outputs=["model-recovered/config.json"])
    else:  # adapter kept: the dropped checkpoint is the base it applies to
        model.save_pretrained(str(out / "adapter"))
        result.update(checkpoint=run.result("drop")["checkpoint"], adapter="model-recovered/adapter",
                      outputs=["model-recovered/adapter"])
    plot_loss_curve(res.losses, run.out / "recovery_loss.png")
    pipeline.atomic_write_json(run.out / "recovery.json", res.to_dict())
    result["outputs"] += ["recovery_loss.png", "recovery.json"]
    run.log(f"    LoRA {r['steps']} steps: WikiText-2 perplexity {res.ppl_before} -> {res.ppl_after}")
    run._set(model, tok, result)
    return result


def _quantize(run, steps) -> dict:
    from layerdrop_patch.quantize import quantize_awq

    q = run.recipe["quantize"]
    model, tok = run.current_model(steps, "quantize")
    c = run.recipe["calibration"]
    model, res = quantize_awq(model, tok, c["source"], run.out / "model-awq", backend=q["backend"], bits=q["bits"],
                              group_size=q["group_size"], sym=q["sym"], n_samples=q["n_samples"], seq_len=q["seq_len"],
                              max_ppl_ratio=q["max_ppl_ratio"], inplace=True)
    run.log(f"    AWQ {q['bits']}-bit: WikiText-2 perplexity {res.ppl_before:.2f} -> {res.ppl_after:.2f}")
    result = {**res.to_dict(), "checkpoint": "model-awq", "outputs": ["model-awq/config.json"]}
    run._set(model, tok, result)
    return result


def _evaluate(run, steps) -> dict:
    model, tok = run.current_model(steps, "evaluate")
    result = pipeline.evaluate_model(model, tok, **_eval_settings(run))
    pipeline.atomic_write_json(run.out / "eval.json", result)
    return {"average": result["average"], "outputs": ["eval.json"]}


def _fmt(v: Any, scale: float = 100.0) -> str:
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v * scale:.2f}"


def eval_table_markdown(columns: dict[str, dict]) -> str:
    """Markdown table: one row per task (accuracy %), the average, and perplexity; one column per model."""
    names = list(columns)
    tasks: list[str] = []
    for res in columns.values():
        tasks += [t for t in res["tasks"] if t not in tasks]
    lines = ["| | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    for t in tasks:
        metric = next(r["tasks"][t]["metric"] for r in columns.values() if t in r["tasks"])
        lines.append(f"| {t} ({metric}, %) | " + " | ".join(_fmt(r["tasks"].get(t, {}).get("value")) for r in columns.values()) + " |")
    if tasks:
        lines.append("| **average** | " + " | ".join(_fmt(r["average"]) for r in columns.values()) + " |")
    if any(r.get("perplexity") for r in columns.values()):
        ds = next(r["perplexity"] for r in columns.values() if r.get("perplexity"))
        lines.append(f"| {ds['dataset']} perplexity ({ds['tokens']} tokens) | "
                     + " | ".join(_fmt((r.get("perplexity") or {}).get("value"), 1.0) for r in columns.values()) + " |")
    return "\n".join(lines) + "\n"


def _report(run, steps) -> dict:
    import json

    columns = {}
    if "evaluate_baseline" in steps:
        columns["baseline"] = json.loads((run.out / "eval_baseline.json").read_text())
    columns[run.recipe["name"]] = json.loads((run.out / "eval.json").read_text())
    table = eval_table_markdown(columns)
    pipeline.atomic_write_text(run.out / "eval_table.md", table)
    produced = [s for s in steps if s in ("drop", "recover", "quantize")]
    summary = {"recipe": run.recipe["name"], "model": run.recipe["model"], "output": str(run.out),
               "steps": {s: {k: v for k, v in run.result(s).items() if k != "outputs"} for s in steps if s != "report"},
               "final_checkpoint": run.result(produced[-1])["checkpoint"], "eval": columns}
    pipeline.atomic_write_json(run.out / "summary.json", summary)
    run.log(table)
    return {"outputs": ["eval_table.md", "summary.json"]}


STEPS = {"score": _score, "evaluate_baseline": _evaluate_baseline, "drop": _drop, "recover": _recover,
         "quantize": _quantize, "evaluate": _evaluate, "report": _report}
