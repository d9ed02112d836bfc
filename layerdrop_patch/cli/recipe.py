"""`layerdrop recipe run FILE` and `layerdrop recipe validate FILE`: whole runs described in YAML.

The schema is the typed `Recipe` (`run/recipe.py`, composed of the stage configs), execution and resume live in
`run/runner.py`; this is only the command-line surface.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape
from rich.table import Table

from layerdrop_patch.cli.common import console, handle_errors

recipe_app = typer.Typer(
    help="Run or check a recipe: model, calibration, drop, optional LoRA recovery and AWQ, evaluation, output dir.\n\n"
    "Shipped recipes are in recipes/*.yaml (embedded-model and 7B versions of the paper's settings).",
    no_args_is_help=True,
)

_SET_HELP = "Override a recipe key, e.g. --set evaluate.limit=10 --set drop.n=4 (repeatable; values are YAML)."


def _warnings(recipe) -> list[str]:
    """Things that will fail later on this machine, said before hours are spent on earlier steps."""
    out = []
    if recipe.quantize is not None and recipe.quantize.backend == "gptqmodel" and \
            importlib.util.find_spec("gptqmodel") is None:
        out.append("quantize: GPTQModel is not installed here, so the quantize step will stop the run (the steps "
                   "before it are kept; rerun after `pip install 'layerdrop-patch[awq]'` to resume).")
    if recipe.quantize is not None and recipe.quantize.backend == "autoawq":
        out.append("quantize.backend: autoawq is refused at run time (it produces unusable models on transformers "
                   "5.x); use gptqmodel, which writes the same AutoAWQ GEMM format.")
    if recipe.recover is not None and importlib.util.find_spec("peft") is None:
        out.append("recover: peft is not installed (`pip install peft`).")
    return out


@recipe_app.command()
@handle_errors
def validate(
    file: Path = typer.Argument(..., help="Recipe YAML."),
    set_: Optional[list[str]] = typer.Option(None, "--set", help=_SET_HELP),
):
    """Check a recipe without running it: every bad key is named (with the closest valid one).

    Example:

      layerdrop recipe validate recipes/smollm2-attn-drop.yaml
    """
    from layerdrop_patch.run.recipe import load_recipe
    from layerdrop_patch.run.runner import plan_steps

    recipe, _ = load_recipe(file, set_ or [])
    steps = plan_steps(recipe)
    table = Table(title=escape(f"{file}: valid; {len(steps)} steps -> {recipe.output}"))
    table.add_column("step")
    table.add_column("settings")
    sections = {"score": "calibration", "evaluate_baseline": "evaluate", "drop": "drop", "recover": "recover",
                "quantize": "quantize", "evaluate": "evaluate"}
    for step in steps:
        section = getattr(recipe, sections[step]) if step in sections else None
        settings = ", ".join(f"{k}={v}" for k, v in section.to_dict().items() if v not in (None, [], "")) \
            if section is not None else ""
        table.add_row(step, escape(settings))
    console.print(f"model: {escape(recipe.model)} (dtype {recipe.load.dtype})", highlight=False)
    console.print(table)
    for w in _warnings(recipe):
        console.print(f"[yellow]warning:[/] {escape(w)}")


@recipe_app.command()
@handle_errors
def run(
    file: Path = typer.Argument(..., help="Recipe YAML."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Output directory (overrides the recipe's `output`)."),
    resume: bool = typer.Option(True, "--resume/--restart", help="Skip steps already finished in OUT (default), or redo all."),
    set_: Optional[list[str]] = typer.Option(None, "--set", help=_SET_HELP),
    overwrite: bool = typer.Option(False, help="Use OUT even if it holds files no recipe run wrote."),
):
    """Execute a recipe; every artifact goes to its output directory, and an interrupted run resumes.

    Examples:

      layerdrop recipe run recipes/smollm2-attn-drop.yaml

      layerdrop recipe run recipes/smollm2-joint-drop.yaml --set evaluate.limit=20 -o runs/quick
    """
    from layerdrop_patch.run.recipe import load_recipe
    from layerdrop_patch.run.runner import run_recipe

    recipe, _ = load_recipe(file, set_ or [])
    for w in _warnings(recipe):
        console.print(f"[yellow]warning:[/] {escape(w)}")
    summary = run_recipe(file, resume=resume, out=out, overrides=set_ or [], overwrite=overwrite,
                         log=lambda line: console.print(line, highlight=False, markup=False))
    console.print(f"finished: artifacts in {summary['output']} (final checkpoint: {summary['final_checkpoint']}/)",
                  highlight=False, markup=False)
