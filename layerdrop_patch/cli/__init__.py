"""`layerdrop` command line: a thin Typer layer over the library (one command per job).

Commands (each `--help` has examples):
    score, drop, eval, bench           decide what to drop, drop it, measure it      (cli/analyse.py)
    quantize, recover, export, push    AWQ, LoRA recovery, serving formats, the Hub  (cli/ship.py)
    recipe run|validate                whole runs from YAML, resumable                (cli/recipe.py)
    demo                               the end-to-end story on the embedded model     (demo.py)
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from layerdrop_patch.cli import analyse, ship
from layerdrop_patch.cli.common import handle_errors, str_list
from layerdrop_patch.cli.recipe import recipe_app

app = typer.Typer(
    help="Drop redundant attention/MLP sublayers from pretrained LLMs (He et al. 2024).\n\n"
    "Model arguments accept a hub id, a local directory or `smollm2-135m` (the embedded default).\n\n"
    "Start with: layerdrop demo",
    no_args_is_help=True,
    add_completion=False,
)


@app.callback()
def _main() -> None:
    """layerdrop: score, drop, evaluate, benchmark, quantise, recover, export and publish pruned LLMs."""


analyse.register(app)
ship.register(app)
app.add_typer(recipe_app, name="recipe")


@app.command()
@handle_errors
def demo(
    model: str = typer.Option("smollm2-135m", help="Hub id, local dir or embedded model name."),
    out: Path = typer.Option(Path("demo_out"), "--out", "-o", help="Directory for the demo's artifacts."),
    n_attn: Optional[int] = typer.Option(None, help="Attention layers to drop (default: the demo's measured choice)."),
    tasks: str = typer.Option("arc_easy,piqa,lambada_openai", help="Tasks evaluated (first --limit documents each)."),
    limit: int = typer.Option(100, help="Documents per task."),
    calibration_samples: int = typer.Option(16, help="C4 calibration chunks for scoring."),
    ppl_tokens: int = typer.Option(4096, help="Tokens scored for perplexity."),
    ppl_dataset: str = typer.Option("wikitext2", help="Perplexity text: wikitext2 | c4 | a UTF-8 text file."),
    new_tokens: int = typer.Option(32, help="Tokens generated per speed measurement."),
    sweep: bool = typer.Option(True, help="Also plot perplexity against the number of attention layers dropped."),
):
    """The end-to-end demo on the embedded SmolLM2-135M (minutes on a laptop CPU).

    Scores, drops attention, evaluates a small fixed subset, benchmarks baseline and dropped side by side, saves,
    reloads without the package and prints a before/after table; plots and a JSON summary go to OUT.

    Example:

      layerdrop demo -o demo_out
    """
    from layerdrop_patch.demo import run_demo

    run_demo(model, out, n_attn=n_attn, tasks=str_list(tasks), limit=limit, calibration_samples=calibration_samples,
             ppl_tokens=ppl_tokens, ppl_dataset=ppl_dataset, new_tokens=new_tokens, sweep=sweep)


def main() -> None:
    app()


__all__ = ["app", "main"]
