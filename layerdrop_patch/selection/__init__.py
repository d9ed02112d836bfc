"""Selection: which sublayers to drop, by the paper's ranking, its baselines, or methods beyond it.

    SelectionConfig      kind (attn / mlp / block / joint), n or ratio, method, metric, protected layers
    choose_drop          any registered method -> Selection (DropConfig + history)
    select, drop_order   one-shot rankings from ImportanceScores (or a layer count for the baselines)
    iterative_select     drop one unit, re-score the pruned model, repeat
    greedy_select        drop the unit whose removal raises the calibration loss least, repeat
    budget_select        attention and MLP by score per unit of cost, until a share of the cost is saved
    METHODS              the registry (`register_method` adds one)
"""

from typing import Any, Callable, Sequence

from layerdrop_patch.errors import ConfigError
from layerdrop_patch.selection import budget as _budget  # noqa: F401  (registers "budget")
from layerdrop_patch.selection import greedy as _greedy  # noqa: F401  (registers "greedy")
from layerdrop_patch.selection import iterative as _iterative  # noqa: F401  (registers "iterative")
from layerdrop_patch.selection.config import SelectionConfig
from layerdrop_patch.selection.budget import budget_select
from layerdrop_patch.selection.greedy import greedy_select
from layerdrop_patch.selection.iterative import iterative_select
from layerdrop_patch.selection.ranking import drop_order, select
from layerdrop_patch.selection.registry import METHODS, SELECT_KINDS, Selection, SelectionInputs, register_method

__all__ = ["SelectionConfig", "choose_drop", "select", "drop_order", "iterative_select", "greedy_select", "budget_select",
           "METHODS",
           "SELECT_KINDS",
           "Selection", "SelectionInputs", "register_method"]


def choose_drop(config: SelectionConfig, *, scores: Any = None, model: Any = None, calibration: Any = None,
                resume: Sequence[Any] | None = None, on_step: Callable[[list[dict[str, Any]]], None] | None = None,
                progress: bool = True) -> Selection:
    """Run the method `config.method` with what it needs (see `METHODS[...].needs`); names what is missing.

    For a step-by-step method registered `resumable` (greedy): `resume` is an earlier run's order (its
    `Selection.history`) to go on from to a larger `n` without paying again for its steps, and `on_step(history)`
    is told the order after each step, so that an interrupted run can be resumed."""
    if config.planned:
        raise ConfigError("a drop with a target (target_speedup, kv_budget, param_budget) is planned, not selected: "
                          "use layerdrop_patch.planning.plan_drop, `layerdrop plan`, or a recipe.")
    method = METHODS[config.method]
    if (resume is not None or on_step is not None) and not method.resumable:
        resumable = sorted(name for name, m in METHODS.items() if m.resumable)
        raise ConfigError(f"resume: method {config.method!r} does not go on from an earlier order; only "
                          f"{', '.join(resumable)} does. Drop resume= and on_step=, or use method={resumable[0]!r}.")
    given = {"scores": scores, "model": model, "calibration": calibration}
    missing = [need for need in method.needs if given[need] is None]
    if missing:
        raise ConfigError(f"method {config.method!r} needs {' and '.join(missing)}: "
                          + ("run `layerdrop score` first and pass --scores, or give calibration options so they are "
                             "computed." if missing == ["scores"] else "pass the model and calibration data."))
    if scores is not None:
        num_layers, dropped = scores.num_layers, scores.dropped
    elif model is not None:
        from layerdrop_patch.architectures import drop_of

        num_layers, drop = model.config.num_hidden_layers, drop_of(model)
        dropped = {"attn": list(drop.attn), "mlp": list(drop.mlp)}
    else:
        raise ConfigError("choose_drop needs importance scores or the model (to know its layers).")
    inputs = SelectionInputs(num_layers, scores, model, calibration, dropped, progress, resume, on_step)
    selection = method.choose(config, inputs)
    if model is not None and selection.drop_config.base_model is None:
        selection.drop_config.base_model = getattr(model.config, "_name_or_path", None)
    return selection
