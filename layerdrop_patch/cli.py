"""`layerdrop` command line: a thin Typer layer over the library API (one command per job)."""

from __future__ import annotations

import json
from pathlib import Path

import typer

app = typer.Typer(
    help="Drop redundant attention/MLP sublayers from pretrained LLMs.\n\n"
    "Model arguments accept a hub id, a local directory or `smollm2-135m` (the embedded default).",
    no_args_is_help=True,
    add_completion=False,
)


@app.callback()
def _main() -> None:
    """layerdrop: score, drop, evaluate, benchmark, quantise, recover, export and publish pruned LLMs."""


@app.command()
def demo(
    model: str = typer.Option("smollm2-135m", help="Hub id, local dir or embedded model name."),
    out: Path = typer.Option(Path("demo_out"), help="Directory for the demo's artifacts."),
    fraction: float = typer.Option(0.5, help="Fraction of attention layers to drop."),
    new_tokens: int = typer.Option(32, help="Tokens to generate for the speed measurement."),
):
    """Run the end-to-end demo on the embedded model.

    Example: layerdrop demo --fraction 0.5
    """
    from layerdrop_patch.demo import run_demo

    result = run_demo(model, out, fraction=fraction, new_tokens=new_tokens)
    (out / "demo_result.json").write_text(json.dumps(result, indent=2, default=str))


if __name__ == "__main__":
    app()
