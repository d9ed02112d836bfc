"""`layerdrop score | drop | eval | bench`: decide what to drop, drop it, and measure what that costs and buys.

Each command parses options, calls one `layerdrop_patch.pipeline` function and prints a rich table; files
(JSON, PNG, checkpoints) are written by the library, atomically.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from layerdrop_patch.cli import render
from layerdrop_patch.cli.common import (DEVICE_MAP_HELP, DTYPE_HELP, MODEL_HELP, console, handle_errors, int_list,
                                        str_list)


def _calibration(tok, source: str, n_samples: int, seq_len: int, seed: int):
    from layerdrop_patch import pipeline

    cal = pipeline.calibration_for(tok, source, n_samples, seq_len, seed)
    console.print(f"calibration: {cal.description}")
    return cal


@handle_errors
def score(
    model: str = typer.Argument("smollm2-135m", help=MODEL_HELP),
    out: Path = typer.Option(Path("layerdrop_scores"), "--out", "-o", help="Directory for scores.json and the PNGs."),
    calibration: str = typer.Option("c4", help="c4 | wikitext2 | a local JSON/JSONL/Parquet/text file or dir | hub dataset."),
    n_samples: int = typer.Option(32, help="Calibration chunks (the paper: 256)."),
    seq_len: int = typer.Option(512, help="Tokens per chunk (the paper: 2048)."),
    seed: int = typer.Option(0, help="Seed for the document shuffle."),
    batch_size: int = typer.Option(1, help="Chunks per forward pass."),
    metric: str = typer.Option("cosine", help="cosine | angular | cosine_no_residual | angular_no_residual."),
    offload: bool = typer.Option(False, help="Stream one decoder layer at a time (models larger than memory)."),
    plot_kind: str = typer.Option("joint", help="Which drop order drop_order.png shows: attn | mlp | block | joint."),
    dtype: Optional[str] = typer.Option(None, help=DTYPE_HELP),
    device_map: Optional[str] = typer.Option(None, help=DEVICE_MAP_HELP),
):
    """Score every attention, MLP and block by how little it changes its input (1 - cos, one pass).

    Writes OUT/scores.json, OUT/importance.png (per-layer scores) and OUT/drop_order.png.

    Examples:

      layerdrop score smollm2-135m --n-samples 16 --seq-len 256 -o scores/

      layerdrop score mistralai/Mistral-7B-v0.1 --n-samples 256 --seq-len 2048 --dtype bfloat16 --device-map auto
    """
    from layerdrop_patch import pipeline

    m, tok = pipeline.load_any(model, dtype, device_map)
    cal = _calibration(tok, calibration, n_samples, seq_len, seed)
    scores = pipeline.score_model(m, cal, out, metric=metric, batch_size=batch_size, offload=offload,
                                  plot_kind=plot_kind, model_name=model)
    console.print(render.scores_table(scores))
    console.print(f"calibration: {scores.calibration}", highlight=False)
    console.print(f"wrote {out}/scores.json, importance.png, drop_order.png")


@handle_errors
def drop(
    model: str = typer.Argument(..., help=MODEL_HELP),
    out: Path = typer.Option(..., "--out", "-o", help="Directory for the pruned checkpoint."),
    kind: str = typer.Option("attn", help="attn | mlp | block | joint (attention and MLP ranked together)."),
    n: Optional[int] = typer.Option(None, "--n", "-n", help="How many units to drop (layers; sublayers for joint)."),
    ratio: Optional[float] = typer.Option(None, help="Or: the fraction of units to drop."),
    scores: Optional[Path] = typer.Option(None, help="scores.json from `layerdrop score` (else computed here)."),
    method: str = typer.Option("importance", help="importance | random | reverse | last-k (baselines need no scores)."),
    mode: str = typer.Option("one-shot", help="one-shot | iterative (drop one unit, re-score, repeat)."),
    metric: str = typer.Option("cosine", help="Score metric used for the ranking."),
    protect: Optional[str] = typer.Option(None, help="Layers never dropped, e.g. 0,1."),
    keep_last: bool = typer.Option(False, help="Never drop the final layer."),
    seed: int = typer.Option(0, help="Seed of the random baseline."),
    attn: Optional[str] = typer.Option(None, help="Manual: attention layers to drop, e.g. 20,22,24 (skips selection)."),
    mlp: Optional[str] = typer.Option(None, help="Manual: MLP layers to drop."),
    blocks: Optional[str] = typer.Option(None, help="Manual: whole layers to drop."),
    calibration: str = typer.Option("c4", help="Calibration source when scores are computed here."),
    n_samples: int = typer.Option(32, help="Calibration chunks when scores are computed here."),
    seq_len: int = typer.Option(512, help="Tokens per calibration chunk."),
    overwrite: bool = typer.Option(False, help="Replace OUT if it exists."),
    dtype: Optional[str] = typer.Option(None, help=DTYPE_HELP),
    device_map: Optional[str] = typer.Option(None, help=DEVICE_MAP_HELP),
):
    """Drop sublayers and save a portable checkpoint (loads with plain transformers + trust_remote_code).

    Examples:

      layerdrop drop smollm2-135m --kind attn -n 4 --scores scores/scores.json -o smol-attn4

      layerdrop drop smollm2-135m --kind joint --ratio 0.1 --mode iterative -o smol-joint

      layerdrop drop smollm2-135m --attn 25,26 --blocks 28 -o smol-manual
    """
    from layerdrop_patch import pipeline
    from layerdrop_patch.config import DropConfig
    from layerdrop_patch.scoring import ImportanceScores

    m, tok = pipeline.load_any(model, dtype, device_map)
    manual = [int_list(attn, "--attn"), int_list(mlp, "--mlp"), int_list(blocks, "--blocks")]
    if any(manual):
        cfg = DropConfig(attn=sorted(set(manual[0]) | set(manual[2])), mlp=sorted(set(manual[1]) | set(manual[2])))
    else:
        loaded = ImportanceScores.load(scores) if scores else None
        cal = None
        if method == "importance" and (loaded is None or mode == "iterative"):
            cal = _calibration(tok, calibration, n_samples, seq_len, 0)
            if loaded is None and mode == "one-shot":
                loaded = pipeline.score_model(m, cal, out.parent / f"{out.name}-scores", metric=metric,
                                              model_name=model)
        cfg, _ = pipeline.choose_drop(loaded, kind, n=n, ratio=ratio, method=method, mode=mode,
                                      protect=int_list(protect, "--protect"), keep_last=keep_last, seed=seed, model=m,
                                      calibration=cal, metric=metric)
    result = pipeline.drop_and_save(m, tok, cfg, out, base_model=model, overwrite=overwrite)
    console.print(render.drop_table(result))
    console.print(f"saved {out}")


@handle_errors
def eval_(
    models: list[str] = typer.Argument(..., help="One or more models (first = baseline). " + MODEL_HELP),
    tasks: str = typer.Option("arc_easy,piqa", help="Comma-separated lm-eval tasks or a set: paper | openllm | extra | ''."),
    limit: Optional[float] = typer.Option(None, help="First N documents per task (or a fraction < 1)."),
    num_fewshot: Optional[int] = typer.Option(None, help="Shots for every task (default: the paper's per task)."),
    batch_size: int = typer.Option(8, help="lm-eval batch size."),
    perplexity: bool = typer.Option(True, help="Also measure perplexity (WikiText-2 by default)."),
    ppl_tokens: int = typer.Option(8192, help="Tokens scored for perplexity."),
    ppl_dataset: str = typer.Option("wikitext2", help="Perplexity text: wikitext2 | c4 | a UTF-8 text file."),
    sweep: Optional[str] = typer.Option(None, help="Counts to sweep, e.g. 0,2,4,8: drop that many KIND units of the "
                                                   "first model by --scores and evaluate each (plots the curve)."),
    kind: str = typer.Option("attn", help="What --sweep drops: attn | mlp | block | joint."),
    scores: Optional[Path] = typer.Option(None, help="scores.json for --sweep."),
    out: Path = typer.Option(Path("layerdrop_eval"), "--out", "-o", help="Directory for JSON, Markdown and PNG."),
    dtype: Optional[str] = typer.Option(None, help=DTYPE_HELP),
):
    """Evaluate models with the paper's per-task settings (lm-eval) plus WikiText-2 perplexity.

    Examples:

      layerdrop eval smollm2-135m smol-attn4 --tasks arc_easy,piqa --limit 100

      layerdrop eval smollm2-135m --sweep 0,2,4,8 --scores scores/scores.json --tasks '' -o sweep/
    """
    from layerdrop_patch import pipeline
    from layerdrop_patch.recipe_steps import eval_table_markdown
    from layerdrop_patch.scoring import ImportanceScores

    settings = dict(tasks=str_list(tasks) or None, limit=int(limit) if limit and limit >= 1 else limit,
                    num_fewshot=num_fewshot, batch_size=batch_size,
                    perplexity_dataset=ppl_dataset if perplexity else None, perplexity_tokens=ppl_tokens)
    if sweep:
        if scores is None:
            raise ValueError("--sweep needs --scores scores.json (from `layerdrop score`).")
        m, tok = pipeline.load_any(models[0], dtype)
        rows = pipeline.drop_sweep(m, tok, ImportanceScores.load(scores), kind, int_list(sweep, "--sweep"), **settings)
        pipeline.atomic_write_json(out / "sweep.json", rows)
        y = "average" if settings["tasks"] else "perplexity"
        pipeline.plot_sweep(rows, out / f"{'accuracy' if y == 'average' else 'perplexity'}_vs_dropped.png", y=y,
                            kind=kind, log_y=y == "perplexity")
        console.print(render.sweep_table(rows, kind))
        console.print(f"wrote {out}/sweep.json and the plot")
        return
    columns = {}
    for name in models:
        m, tok = pipeline.load_any(name, dtype)
        columns[name] = pipeline.evaluate_model(m, tok, **settings)
        del m
    pipeline.atomic_write_json(out / "eval.json", columns)
    pipeline.atomic_write_text(out / "eval_table.md", eval_table_markdown(columns))
    console.print(render.eval_table(columns))
    console.print(f"wrote {out}/eval.json and eval_table.md")


@handle_errors
def bench(
    models: list[str] = typer.Argument(..., help="Models to compare (first = baseline). " + MODEL_HELP),
    prompt_len: int = typer.Option(64, help="Prompt tokens (random ids)."),
    new_tokens: int = typer.Option(32, help="Generated tokens."),
    batch_size: int = typer.Option(1, help="Sequences per generate() call."),
    repeats: int = typer.Option(3, help="Timed runs per model (median; interleaved across models)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Write bench.json here."),
    dtype: Optional[str] = typer.Option(None, help=DTYPE_HELP),
):
    """Decode speed and KV-cache bytes through generate() with the KV cache, models side by side.

    Example:

      layerdrop bench smollm2-135m smol-attn4 --new-tokens 64 --repeats 5
    """
    from layerdrop_patch import pipeline

    loaded, tok = {}, None
    for name in models:
        loaded[name], t = pipeline.load_any(name, dtype)
        tok = tok or t
    result = pipeline.compare_speed(loaded, tok, prompt_len=prompt_len, new_tokens=new_tokens, repeats=repeats,
                                    batch_size=batch_size)
    console.print(render.bench_table(result))
    if out is not None:
        pipeline.atomic_write_json(Path(out) / "bench.json", result)
        console.print(f"wrote {out}/bench.json")


def register(app: typer.Typer) -> None:
    app.command()(score)
    app.command()(drop)
    app.command("eval")(eval_)
    app.command()(bench)


__all__ = ["register"]
