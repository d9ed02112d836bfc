"""`evaluate()`: lm-eval on an already-loaded (possibly dropped) model with the paper's per-task settings.

Why a wrapper: lm-eval takes one `num_fewshot` for all tasks, while the paper (Table 5) uses 0/5/10/25 shots
per task and reports acc or acc_norm per task. This module groups the requested tasks by shot count, runs
`lm_eval.simple_evaluate` once per group on the same `HFLM`, and reads back exactly the metric that
`settings.TASKS` names. Offline (HF_HUB_OFFLINE / HF_DATASETS_OFFLINE set, or the hub unreachable) it runs
the project's local task copies on the bundled data instead of lm-eval's hub tasks.

Sample-size controls (at most one of the two):
- `limit`: lm-eval's own semantics, passed through: an int N evaluates the *first* N documents of every
  (leaf) task; a float in (0, 1) evaluates that fraction of each.
- `subsample`: N documents per task drawn uniformly *at random* with `seed` (reproducible, and not biased
  towards the head of the file). For a group (MMLU), N is split evenly over its subtasks:
  ceil(N / n_subtasks) documents each, at least one.
"""

from __future__ import annotations

import logging
import math
import random
import time
import zlib
from collections import defaultdict
from pathlib import Path
from typing import Any, Mapping

from layerdrop_patch.errors import ConfigError
from layerdrop_patch.evaluation.results import EvalResult, TaskScore
from layerdrop_patch.evaluation.settings import TaskSpec, hub_reachable, offline_requested, resolve_tasks

TASKS_DIR = Path(__file__).resolve().parent / "tasks"
_TASK_MANAGERS: dict[bool, Any] = {}


class _DropNoise(logging.Filter):
    """Hide lm-eval's per-task hint about --metadata that every custom_dataset task prints."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Custom kwargs can be passed" not in record.getMessage()


def task_manager(offline: bool):
    """A cached lm-eval TaskManager: local `ldp_*` tasks only (offline) or lm-eval's standard tasks."""
    if offline not in _TASK_MANAGERS:
        from lm_eval.tasks import TaskManager

        logging.getLogger("lm_eval.api.task").addFilter(_DropNoise())
        if offline:
            _TASK_MANAGERS[offline] = TaskManager(include_path=str(TASKS_DIR), include_defaults=False)
        else:
            _TASK_MANAGERS[offline] = TaskManager()
    return _TASK_MANAGERS[offline]


def load_task(name: str, offline: bool = True):
    """Load one lm-eval task or group by its lm-eval name; returns lm-eval's {"tasks", "groups", ...} dict."""
    return task_manager(offline).load([name])


def leaf_tasks(loaded: Mapping[str, Any], name: str) -> list[str]:
    """Names of the leaf tasks under `name` (itself if it is a task), following nested groups."""
    group_map = loaded.get("group_map", {})
    if name not in group_map:
        return [name]
    out: list[str] = []
    for child in group_map[name]:
        out.extend(leaf_tasks(loaded, child))
    return out


def subsample_indices(doc_counts: Mapping[str, int], n: int, seed: int) -> dict[str, list[int]]:
    """Sorted random document indices per task: min(n, count) of them, reproducible from `seed`.

    Each task gets its own generator seeded from (seed, task name), so adding or removing a task does not
    change the documents drawn for the others.
    """
    if n <= 0:
        raise ConfigError(f"subsample must be a positive number of documents, got {n}")
    out = {}
    for task, count in doc_counts.items():
        rng = random.Random(seed * 1_000_003 + zlib.crc32(task.encode()))
        out[task] = sorted(rng.sample(range(count), min(n, count)))
    return out


def _resolve_offline(offline: bool | None) -> bool:
    if offline is not None:
        return bool(offline)
    return offline_requested() or not hub_reachable()


def _fewshot_for(spec: TaskSpec, num_fewshot: int | Mapping[str, int] | None) -> int:
    if num_fewshot is None:
        return spec.num_fewshot
    if isinstance(num_fewshot, Mapping):
        return int(num_fewshot.get(spec.name, spec.num_fewshot))
    if int(num_fewshot) < 0:
        raise ConfigError(f"num_fewshot must be >= 0, got {num_fewshot}")
    return int(num_fewshot)


def _read_score(spec: TaskSpec, lm_name: str, shots: int, res: Mapping[str, Any], leaves: list[str]) -> TaskScore:
    table = res.get("results", {})
    row = table.get(lm_name) or res.get("groups", {}).get(lm_name)
    if row is None or spec.result_key not in row:
        have = sorted(k for k in (row or {}) if "," in k)
        raise RuntimeError(f"lm-eval returned no {spec.result_key!r} for {lm_name}; it returned {have}.")
    stderr = row.get(spec.stderr_key)
    stderr = float(stderr) if isinstance(stderr, (int, float)) and not math.isnan(float(stderr)) else None
    n_samples = None
    counts = res.get("n-samples", {})
    if all(leaf in counts for leaf in leaves):
        n_samples = sum(int(counts[leaf].get("effective", 0)) for leaf in leaves)
    others = {k: float(v) for k, v in row.items()
              if "," in k and "_stderr" not in k and isinstance(v, (int, float)) and k != spec.result_key}
    per_doc = {}
    for leaf in leaves:
        for sample in (res.get("samples") or {}).get(leaf, []):
            value = sample.get(spec.metric)
            if isinstance(value, (int, float, bool)):
                per_doc[f"{leaf}/{sample.get('doc_id')}"] = float(value)
    return TaskScore(task=spec.name, metric=spec.metric, value=float(row[spec.result_key]), stderr=stderr,
                     num_fewshot=shots, lm_eval_task=lm_name, n_samples=n_samples, other_metrics=others,
                     per_doc=per_doc)


def evaluate(
    model: Any,
    tokenizer: Any,
    tasks: str | list[str] = "paper",
    limit: int | float | None = None,
    num_fewshot: int | Mapping[str, int] | None = None,
    offline: bool | None = None,
    batch_size: int | str = 8,
    seed: int = 1234,
    subsample: int | None = None,
    max_length: int | None = None,
    bootstrap_iters: int = 1000,
) -> EvalResult:
    """Evaluate `model` on lm-eval tasks with the paper's settings and return an `EvalResult`.

    Args:
        model: a loaded transformers causal LM (dropped or not), on the device it should run on.
        tokenizer: its tokenizer.
        tasks: a task set ("paper", "openllm", "extra", "all"), a comma-separated string, or a list of
            task names (lm-eval standard names, e.g. "arc_challenge", "mmlu"; see `settings.TASKS`).
        limit: lm-eval's limit (first N documents per leaf task, or a fraction if < 1). For quick runs.
        num_fewshot: None = the paper's shots per task; an int for all tasks; or {task: shots}.
        offline: True = local task copies on bundled data; False = lm-eval's hub tasks; None = offline when
            HF_HUB_OFFLINE/HF_DATASETS_OFFLINE is set or the hub does not answer.
        batch_size: lm-eval batch size (int or "auto").
        seed: seeds python/numpy/torch, the few-shot sampler, and `subsample`.
        subsample: N random documents per task (see module docstring); exclusive with `limit`.
        max_length: context length lm-eval may use (default: the model's max_position_embeddings).
        bootstrap_iters: bootstrap iterations for non-mean metrics' stderr (LAMBADA perplexity).
    """
    if limit is not None and subsample is not None:
        raise ConfigError("Pass either limit (first N documents) or subsample (N random documents), not both.")
    specs = resolve_tasks(tasks)
    offline = _resolve_offline(offline)

    import lm_eval
    from lm_eval.models.huggingface import HFLM

    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, max_length=max_length)
    by_shots: dict[int, list[TaskSpec]] = defaultdict(list)
    for spec in specs:
        by_shots[_fewshot_for(spec, num_fewshot)].append(spec)

    scores: dict[str, TaskScore] = {}
    started = time.time()
    for shots, group in sorted(by_shots.items()):
        objects, leaves_of, counts = [], {}, {}
        for spec in group:
            lm_name = spec.local if offline else spec.name
            loaded = load_task(lm_name, offline)
            top = loaded["groups"].get(lm_name) or loaded["tasks"][lm_name]
            objects.append(top)
            leaves_of[spec.name] = leaf_tasks(loaded, lm_name)
            for leaf in leaves_of[spec.name]:
                counts[leaf] = (len(loaded["tasks"][leaf].eval_docs), len(leaves_of[spec.name]))
        samples = None
        if subsample is not None:
            samples = {}
            for leaf, (count, siblings) in counts.items():
                per_leaf = max(1, math.ceil(subsample / siblings))
                samples.update(subsample_indices({leaf: count}, per_leaf, seed))
        res = lm_eval.simple_evaluate(
            model=lm, tasks=objects, num_fewshot=shots, limit=limit, samples=samples, task_manager=task_manager(offline),
            random_seed=seed, numpy_random_seed=seed, torch_random_seed=seed, fewshot_random_seed=seed,
            bootstrap_iters=bootstrap_iters, log_samples=True,
        )
        for spec in group:
            lm_name = spec.local if offline else spec.name
            scores[spec.name] = _read_score(spec, lm_name, shots, res, leaves_of[spec.name])

    ordered = {spec.name: scores[spec.name] for spec in specs}
    drop_config = getattr(getattr(model, "config", None), "drop_config", None)
    settings = {
        "tasks": [s.name for s in specs],
        "num_fewshot": {name: s.num_fewshot for name, s in ordered.items()},
        "metric": {name: s.metric for name, s in ordered.items()},
        "offline": offline,
        "limit": limit,
        "subsample": subsample,
        "seed": seed,
        "batch_size": batch_size,
        "lm_eval_version": getattr(lm_eval, "__version__", None),
        "model": getattr(getattr(model, "config", None), "_name_or_path", type(model).__name__),
        "drop_config": drop_config,
        "seconds": round(time.time() - started, 1),
    }
    return EvalResult(scores=ordered, settings=settings)
