"""`EvaluationConfig` and `evaluate_model`: the evaluation every command, recipe and the demo run, in one place.

A model is measured on lm-eval tasks (with the paper's per-task shots and metrics, `harness.evaluate`) and on
held-out perplexity; the result is one JSON-able dict, and `eval_table_markdown` puts several side by side.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from layerdrop_patch.options import StageConfig, non_negative, option, positive

__all__ = ["EvaluationConfig", "evaluate_model", "eval_table_markdown"]


def _tasks_check(tasks: list[str]) -> str | None:
    if not tasks:
        return None
    from layerdrop_patch.evaluation.settings import resolve_tasks

    try:
        resolve_tasks(tasks)
    except ValueError as err:
        return str(err)
    return None


@dataclass
class EvaluationConfig(StageConfig):
    """What to measure: the `evaluate` section of a recipe and the options of `layerdrop eval`."""

    section = "evaluate"
    tasks: list[str] = option([], "lm-eval tasks or sets (paper | openllm | extra), comma-separated; none = "
                                  "perplexity only.", check=_tasks_check)
    limit: int | float | None = option(None, "First N documents per task (or a fraction < 1).", check=positive)
    subsample: int | None = option(None, "Or: N documents per task drawn at random with --seed (MMLU: N over its "
                                         "subjects).", check=positive)
    num_fewshot: int | None = option(None, "Shots for every task (default: the paper's per task).", check=non_negative)
    batch_size: int = option(8, "lm-eval batch size.", check=positive)
    baseline: bool = option(True, "Recipes: also evaluate the unpruned model.")
    perplexity: bool = option(True, "Also measure perplexity.")
    perplexity_dataset: str = option("wikitext2", "Perplexity text: wikitext2 | c4 | a UTF-8 text file.",
                                     flag="--ppl-dataset")
    perplexity_tokens: int = option(8192, "Tokens scored for perplexity.", check=positive, flag="--ppl-tokens")
    perplexity_seq_len: int = option(512, "Window length for perplexity.", check=positive, flag="--ppl-seq-len")
    seed: int = option(1234, "Seed for lm-eval's sampling and subsampling.")

    def checks(self) -> list[str]:
        return ["subsample: give limit or subsample, not both"] if self.limit and self.subsample else []


def evaluate_model(model: Any, tokenizer: Any, config: EvaluationConfig | None = None, *, progress: bool = True,
                   **overrides: Any) -> dict[str, Any]:
    """Task accuracies (lm-eval with the paper's settings, or `num_fewshot` for all) and a perplexity slice.

    Returns {"tasks": {task: {"metric", "value", "stderr", "n", "shots"}}, "average", "perplexity": {...}}.
    No tasks skips lm-eval; `perplexity=False` skips perplexity.
    """
    config = EvaluationConfig.build(config, **overrides)
    out: dict[str, Any] = {"tasks": {}, "average": None, "perplexity": None, "settings": {}}
    if config.tasks:
        from layerdrop_patch.evaluation.harness import evaluate

        limit = int(config.limit) if config.limit and config.limit >= 1 else config.limit
        result = evaluate(model, tokenizer, tasks=config.tasks, limit=limit, num_fewshot=config.num_fewshot,
                          batch_size=config.batch_size, seed=config.seed, subsample=config.subsample)
        out["tasks"] = {name: {"metric": s.metric, "value": s.value, "stderr": s.stderr, "n": s.n_samples,
                               "shots": s.num_fewshot, "per_doc": s.per_doc} for name, s in result.scores.items()}
        out["average"] = result.average
        out["settings"] = {k: v for k, v in result.settings.items() if k != "drop_config"}
    if config.perplexity and config.perplexity_dataset:
        from layerdrop_patch.evaluation.perplexity import perplexity

        name = config.perplexity_dataset
        dataset = Path(name) if Path(name).is_file() else name
        details = perplexity(model, tokenizer, dataset, seq_len=config.perplexity_seq_len,
                             stride=config.perplexity_seq_len, max_tokens=config.perplexity_tokens,
                             progress=progress, return_details=True)
        out["perplexity"] = {"dataset": Path(name).name, "value": details["perplexity"],
                             "tokens": details["scored_tokens"], "seq_len": details["seq_len"],
                             "window_nll": details["window_nll"], "window_tokens": details["window_tokens"]}
    return out


def _fmt(v: Any, scale: float = 100.0) -> str:
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v * scale:.2f}"


def _with_stderr(task: dict) -> str:
    """'47.20 ± 2.23' (percent, lm-eval's standard error), or the value alone where there is none."""
    value, stderr = task.get("value"), task.get("stderr")
    return _fmt(value) + (f" ± {_fmt(stderr)}" if stderr is not None and value is not None else "")


def eval_table_markdown(columns: dict[str, dict]) -> str:
    """Markdown table: one row per task (accuracy %), the average, and perplexity; one column per model."""
    names = list(columns)
    tasks: list[str] = []
    for res in columns.values():
        tasks += [t for t in res["tasks"] if t not in tasks]
    lines = ["| | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    for t in tasks:
        metric = next(r["tasks"][t]["metric"] for r in columns.values() if t in r["tasks"])
        lines.append(f"| {t} ({metric}, %) | " + " | ".join(
            _with_stderr(r["tasks"].get(t, {})) for r in columns.values()) + " |")
    if tasks:
        lines.append("| **average** | " + " | ".join(_fmt(r["average"]) for r in columns.values()) + " |")
    if any(r.get("perplexity") for r in columns.values()):
        ds = next(r["perplexity"] for r in columns.values() if r.get("perplexity"))
        lines.append(f"| {ds['dataset']} perplexity ({ds['tokens']} tokens) | "
                     + " | ".join(_fmt((r.get("perplexity") or {}).get("value"), 1.0) for r in columns.values()) + " |")
    return "\n".join(lines) + "\n"
