"""`SelectionConfig`: what to drop and how to choose it, the `drop` section of a recipe."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from layerdrop_patch.options import StageConfig, above_one, fraction, non_negative, option, positive
from layerdrop_patch.scoring.metrics import DEFAULT_METRIC, METRICS
from layerdrop_patch.selection.registry import METHODS, SELECT_KINDS

__all__ = ["SelectionConfig"]


def _kind_hint(value: Any) -> str | None:
    if value in METHODS:
        return f"{value} is a selection method: write `method: {value}` and `kind: attn|mlp|block|joint`"
    return None


@dataclass
class SelectionConfig(StageConfig):
    """Which units to drop (kind, n or ratio) and how they are chosen (method, metric, protected layers)."""

    section = "drop"
    kind: str = option("attn", "attn | mlp | block | joint (attention and MLP ranked together).",
                       choices=SELECT_KINDS, hint=_kind_hint)
    n: int | None = option(None, "How many units to drop (layers; sublayers for joint).", check=non_negative,
                           flag=("--n", "-n"))
    ratio: float | None = option(None, "Or: the fraction of units to drop.", check=fraction)
    method: str = option("importance", "How units are chosen: importance (one-shot lowest score first), "
                         "iterative, random, reverse, last-k, ...", choices=lambda: METHODS)
    metric: str = option(DEFAULT_METRIC, "Importance metric that ranks the units.", choices=lambda: METRICS)
    protect: list[int] = option([], "Layers never dropped, e.g. 0,1.")
    keep_last: bool = option(False, "Never drop the final layer.")
    seed: int = option(0, "Seed of the random baseline.")
    objective: str = option("lm", "What greedy selection minimises on the calibration tokens: lm (next-token "
                            "cross-entropy) or kl (divergence from the unpruned model's predictions).",
                            choices=("lm", "kl"))
    shortlist: int | None = option(None, "Greedy selection: try only this many lowest-scoring candidates of each "
                                         "kind per step (faster on deep models; None tries all).", check=positive)
    target_speedup: float | None = option(None, "Plan the drop for this measured speed-up on a workload instead of "
                                                "a count (layerdrop plan; recipes).", check=above_one)
    kv_budget: float | None = option(None, "Plan: keep at most this share of the KV cache (0.5 = half).",
                                     check=fraction)
    param_budget: float | None = option(None, "Plan: keep at most this share of the weights.", check=fraction)
    cost: str = option("params", "What budget selection counts as saved: params (weights) or kv (KV cache).",
                       choices=("params", "kv"))

    @property
    def planned(self) -> bool:
        """A target was given: the drop is planned (`layerdrop_patch.planning`), not counted."""
        return any(v is not None for v in (self.target_speedup, self.kv_budget, self.param_budget))

    def checks(self) -> list[str]:
        problems = []
        if self.planned:
            if self.n is not None or self.ratio is not None:
                problems.append("n / ratio: a planned drop (target_speedup, kv_budget, param_budget) chooses its own "
                                "count; give the target or n / ratio, not both")
        elif (self.n is None) == (self.ratio is None):
            given = "both were given" if self.n is not None else "neither was given"
            problems.append(f"n / ratio: give exactly one of n (how many units) or ratio (what fraction) to drop; "
                            f"{given}")
        if self.method == "last-k" and self.kind == "joint":
            problems.append("kind: last-k drops attn, mlp or block units; 'joint' has no meaning for it")
        return problems

    @classmethod
    def from_mapping(cls, data: Any, prefix: str = "", problems: list[str] | None = None):
        """Also reads 0.1.0's `mode: iterative`, which is now `method: iterative`."""
        if isinstance(data, dict) and "mode" in data:
            data = dict(data)
            mode = data.pop("mode")
            if mode == "iterative":
                if data.get("method") not in (None, "importance", "iterative"):
                    message = (f"{prefix}mode: 'iterative' re-scores by importance; it cannot be used with method "
                               f"{data.get('method')!r} (write method: iterative, or drop `mode`)")
                    if problems is None:
                        from layerdrop_patch.errors import RecipeError

                        raise RecipeError([message], prefix.rstrip(".") or cls.section)
                    problems.append(message)
                    return None
                data["method"] = "iterative"
            elif mode not in (None, "one-shot"):
                data["mode"] = mode  # reported as an unknown value below
        return super().from_mapping(data, prefix, problems)
