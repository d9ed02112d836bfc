"""`EvalResult`: the scores of one model on a set of tasks, with the settings that produced them.

Why a dataclass and not lm-eval's raw dict: comparison tables (baseline vs. dropped, SDR) need one number
per task under a fixed metric, its standard error, the average, and enough of the settings (shots, limit,
subsample, local vs. hub data) to tell whether two results are comparable at all.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class TaskScore:
    """The reported score of one task (value and stderr in [0, 1] for accuracies)."""

    task: str
    metric: str
    value: float
    stderr: float | None
    num_fewshot: int
    lm_eval_task: str
    n_samples: int | None = None
    other_metrics: dict[str, float] = field(default_factory=dict)
    # "<leaf task>/<doc id>" -> the metric on that document (0/1 for accuracies): what paired comparisons use
    per_doc: dict[str, float] = field(default_factory=dict)


@dataclass
class EvalResult:
    """Per-task scores + their unweighted mean (`average`, the paper's "Avg") + settings.

    `average` is the plain mean over the tasks in `scores` (each task weighs the same, as in the paper's
    tables), or NaN when there are no scores.
    """

    scores: dict[str, TaskScore]
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def average(self) -> float:
        values = [s.value for s in self.scores.values()]
        return sum(values) / len(values) if values else math.nan

    def __getitem__(self, task: str) -> float:
        if task not in self.scores:
            raise KeyError(f"No score for task {task!r}; this result has {', '.join(self.scores)}.")
        return self.scores[task].value

    def to_dict(self) -> dict[str, Any]:
        return {
            "average": self.average,
            "scores": {name: asdict(score) for name, score in self.scores.items()},
            "settings": self.settings,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "EvalResult":
        return cls(scores={k: TaskScore(**v) for k, v in data["scores"].items()}, settings=data.get("settings", {}))

    def save_json(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2, default=str))
        return path

    def to_markdown(self, percent: bool = True) -> str:
        """A Markdown table: task, shots, metric, value ± stderr, n, then the average."""
        scale, unit = (100.0, "%") if percent else (1.0, "")

        def fmt(v: float | None) -> str:
            return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v * scale:.2f}"

        lines = ["| task | shots | metric | value" + (f" ({unit})" if unit else "") + " | ± stderr | n |",
                 "|---|---:|---|---:|---:|---:|"]
        for s in self.scores.values():
            lines.append(f"| {s.task} | {s.num_fewshot} | {s.metric} | {fmt(s.value)} | {fmt(s.stderr)} | "
                         f"{s.n_samples if s.n_samples is not None else '–'} |")
        lines.append(f"| **average** | | | **{fmt(self.average)}** | | |")
        notes = []
        if self.settings.get("offline"):
            notes.append("local task copies on bundled data (see layerdrop_patch/data/SOURCES.md)")
        if self.settings.get("limit") is not None:
            notes.append(f"limit={self.settings['limit']} (first documents of each task)")
        if self.settings.get("subsample") is not None:
            notes.append(f"subsample={self.settings['subsample']} per task, seed={self.settings.get('seed')}")
        if notes:
            lines.append("")
            lines.append("_" + "; ".join(notes) + "_")
        return "\n".join(lines)
