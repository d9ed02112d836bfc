"""Evaluation: lm-eval with the paper's settings, perplexity, SDR, long-context ICL, and speed benchmarks.

Public API:
    EvaluationConfig, evaluate_model(model, tokenizer, config) -> dict (tasks + perplexity, what commands run)
    BenchConfig, compare_generate(models, tokenizer, config) -> prefill/decode speed and KV bytes side by side
    evaluate(model, tokenizer, tasks="paper", ...) -> EvalResult
    perplexity(model, tokenizer, dataset="wikitext2", ...) -> float
    sdr(base_avg, pruned_avg, base_speed, pruned_speed) -> float
    banking77_icl(model, tokenizer, context_lengths=[...], ...) -> dict
Task settings (shots, metric per task) live in `settings.TASKS` / `settings.TASK_SETS`.
"""

from layerdrop_patch.evaluation.bench import BenchConfig, compare_generate
from layerdrop_patch.evaluation.harness import evaluate
from layerdrop_patch.evaluation.suite import EvaluationConfig, eval_table_markdown, evaluate_model
from layerdrop_patch.evaluation.long_context import banking77_icl
from layerdrop_patch.evaluation.perplexity import perplexity
from layerdrop_patch.evaluation.results import EvalResult, TaskScore
from layerdrop_patch.evaluation.sdr import sdr
from layerdrop_patch.evaluation.settings import TASK_SETS, TASKS, TaskSpec, resolve_tasks

__all__ = ["BenchConfig", "compare_generate", "EvaluationConfig", "eval_table_markdown", "evaluate_model", "evaluate", "perplexity", "sdr", "banking77_icl", "EvalResult", "TaskScore", "TASKS", "TASK_SETS", "TaskSpec", "resolve_tasks"]
