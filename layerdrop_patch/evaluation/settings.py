"""The evaluation protocol as data: which tasks, how many shots, which metric is reported.

Why one table: the paper's numbers are only comparable if every caller uses the same shots and metric per
task (He et al. 2024, Table 5, which follows the Open LLM Leaderboard v1). Code elsewhere reads `TASKS` and
`TASK_SETS`; nothing else hard-codes a shot count or a metric name.

Each task has two lm-eval names: the standard hub task (used online) and the project's local copy
(`ldp_*`, in `evaluation/tasks/`, reading the bundled data; used offline). Both build the same prompts.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass

from layerdrop_patch.errors import ConfigError


@dataclass(frozen=True)
class TaskSpec:
    """One benchmark as the paper evaluates it.

    Attributes:
        name: user-facing name = lm-eval's standard task (or group) name.
        local: name of the offline copy in `evaluation/tasks/`.
        num_fewshot: shots in the paper's setting.
        metric: lm-eval metric key reported as *the* score (``acc``, ``acc_norm``, ``exact_match``).
        filter: lm-eval filter name the metric is read under (``none`` except for GSM8K).
        is_group: True when the lm-eval name is a group (MMLU) whose score aggregates subtasks.
    """

    name: str
    local: str
    num_fewshot: int
    metric: str
    filter: str = "none"
    is_group: bool = False

    @property
    def result_key(self) -> str:
        return f"{self.metric},{self.filter}"

    @property
    def stderr_key(self) -> str:
        return f"{self.metric}_stderr,{self.filter}"

    def to_dict(self) -> dict:
        return asdict(self)


# Paper Table 5 (and the Open LLM Leaderboard v1): normalised accuracy for ARC-C, HellaSwag, OBQA, PIQA.
TASKS: dict[str, TaskSpec] = {
    spec.name: spec
    for spec in (
        TaskSpec("arc_challenge", "ldp_arc_challenge", 25, "acc_norm"),
        TaskSpec("boolq", "ldp_boolq", 0, "acc"),
        TaskSpec("hellaswag", "ldp_hellaswag", 10, "acc_norm"),
        TaskSpec("mmlu", "ldp_mmlu", 5, "acc", is_group=True),
        TaskSpec("openbookqa", "ldp_openbookqa", 0, "acc_norm"),
        TaskSpec("piqa", "ldp_piqa", 0, "acc_norm"),
        TaskSpec("rte", "ldp_rte", 0, "acc"),
        TaskSpec("winogrande", "ldp_winogrande", 5, "acc"),
        TaskSpec("gsm8k", "ldp_gsm8k", 5, "exact_match", filter="strict-match"),
        # the "extra" set: not in the paper's Table 1 average
        TaskSpec("arc_easy", "ldp_arc_easy", 0, "acc_norm"),
        TaskSpec("lambada_openai", "ldp_lambada_openai", 0, "acc"),
        TaskSpec("truthfulqa_mc1", "ldp_truthfulqa_mc1", 0, "acc"),
        TaskSpec("truthfulqa_mc2", "ldp_truthfulqa_mc2", 0, "acc"),
    )
}

TASK_SETS: dict[str, tuple[str, ...]] = {
    # the 8 tasks averaged in the paper's Table 1 ("Avg")
    "paper": ("arc_challenge", "boolq", "hellaswag", "mmlu", "openbookqa", "piqa", "rte", "winogrande"),
    # the Open LLM Leaderboard v1 set
    "openllm": ("arc_challenge", "hellaswag", "mmlu", "truthfulqa_mc2", "winogrande", "gsm8k"),
    "extra": ("arc_easy", "lambada_openai", "truthfulqa_mc1", "truthfulqa_mc2"),
}
TASK_SETS["all"] = tuple(TASKS)

ALIASES = {"arc_c": "arc_challenge", "arc_e": "arc_easy", "obqa": "openbookqa", "lambada": "lambada_openai",
           "truthfulqa": "truthfulqa_mc2"}


def resolve_tasks(tasks: str | list[str] | tuple[str, ...]) -> list[TaskSpec]:
    """Task set name or list of task names -> TaskSpecs (order kept, duplicates removed).

    Raises ValueError naming the known tasks and sets when a name is unknown.
    """
    if isinstance(tasks, str):
        names = list(TASK_SETS[tasks]) if tasks in TASK_SETS else [t.strip() for t in tasks.split(",") if t.strip()]
    else:
        names = []
        for t in tasks:
            names.extend(TASK_SETS[t] if t in TASK_SETS else [t])
    if not names:
        raise ConfigError("No tasks given; pass a task set (" + ", ".join(TASK_SETS) + ") or task names.")
    specs: list[TaskSpec] = []
    for raw in names:
        key = ALIASES.get(raw, raw)
        key = key[len("ldp_"):] if key.startswith("ldp_") else key
        if key not in TASKS:
            raise ConfigError(
                f"Unknown task {raw!r}. Known tasks: {', '.join(TASKS)}; task sets: {', '.join(TASK_SETS)}; "
                f"aliases: {', '.join(f'{a}={b}' for a, b in ALIASES.items())}."
            )
        if TASKS[key] not in specs:
            specs.append(TASKS[key])
    return specs


def offline_requested() -> bool:
    """True when the environment says not to touch the hub (HF_HUB_OFFLINE / HF_DATASETS_OFFLINE truthy)."""
    return any(os.environ.get(var, "").strip().lower() in ("1", "true", "yes", "on")
               for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))


def hub_reachable(timeout: float = 3.0) -> bool:
    """Cheap reachability probe of the Hugging Face hub (HEAD request, short timeout)."""
    import urllib.request

    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    try:
        urllib.request.urlopen(urllib.request.Request(endpoint, method="HEAD"), timeout=timeout)
        return True
    except Exception:
        return False
