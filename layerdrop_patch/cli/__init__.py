"""`layerdrop` command line: a thin Typer layer over the library (one command per job).

Commands (each `--help` has examples; options come from the stage configs, see `cli/options.py`):
    score, drop, eval, bench           decide what to drop, drop it, measure it      (cli/analyse.py)
    plan                               the drop for a speed-up / KV / weight target  (cli/plan.py)
    quantize, recover, export, push    AWQ, LoRA recovery, serving formats, the Hub  (cli/ship.py)
    recipe run|validate                whole runs from YAML, resumable                (cli/recipe.py)
    demo                               the end-to-end story on the embedded model     (run/demo.py)
The library never imports this package.
"""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape

from layerdrop_patch.cli import analyse, plan, render, ship
from layerdrop_patch.cli.common import console, handle_errors
from layerdrop_patch.cli.options import with_configs
from layerdrop_patch.cli.recipe import recipe_app
from layerdrop_patch.run.demo import DemoConfig, Reporter

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
plan.register(app)
ship.register(app)
app.add_typer(recipe_app, name="recipe")


class _RichReporter(Reporter):
    """The demo's progress as rules and tables."""

    def stage(self, name: str) -> None:
        console.rule(f"[bold]{escape(name)}")

    def line(self, text: str) -> None:
        console.print(escape(text), highlight=False)

    def show(self, what: str, data) -> None:
        tables = {"sweep": lambda d: render.sweep_table(d, "attention"), "drop": render.drop_table,
                  "bench": render.bench_table, "result": render.before_after_table}
        console.print(tables[what](data))


@app.command()
@handle_errors
@with_configs(demo=DemoConfig)
def demo(
    out: Path = typer.Option(Path("demo_out"), "--out", "-o", help="Directory for the demo's artifacts."),
    overwrite: bool = typer.Option(False, help="Write into OUT even if it holds files no demo wrote."),
    demo=None,
):
    """The end-to-end demo on the embedded SmolLM2-135M (minutes on a laptop CPU).

    Scores, drops attention, evaluates a small fixed subset, benchmarks baseline and dropped side by side, saves,
    reloads without the package and prints a before/after table; plots and a JSON summary go to OUT.

    Example:

      layerdrop demo -o demo_out
    """
    from layerdrop_patch.run.demo import run_demo

    run_demo(demo, out, overwrite=overwrite, reporter=_RichReporter())


def main() -> None:
    app()


__all__ = ["app", "main"]
