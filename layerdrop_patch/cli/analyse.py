"""`layerdrop score | drop | eval | bench`: decide what to drop, drop it, and measure what that costs and buys.

Each command's options come from the stage configs (`cli/options.py`); the command loads, calls one library
function and prints a table. Files (JSON, PNG, checkpoints) are written by the library, atomically. Options are
validated before the model is loaded.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from layerdrop_patch.cli import render
from layerdrop_patch.cli.common import MODEL_HELP, check_output, console, handle_errors
from layerdrop_patch.cli.options import int_list, with_configs
from layerdrop_patch.evaluation.bench import BenchConfig
from layerdrop_patch.evaluation.suite import EvaluationConfig
from layerdrop_patch.models import LoadConfig
from layerdrop_patch.scoring.calibration import CalibrationConfig
from layerdrop_patch.scoring.robustness import RobustnessConfig
from layerdrop_patch.selection.config import SelectionConfig

_CALIBRATION_FOR_DROP = (CalibrationConfig, {"exclude": ("batch_size", "seed")})  # --seed is the selection's


@handle_errors
@with_configs(calibration=CalibrationConfig, load=LoadConfig,
              selection=(SelectionConfig, {"only": ("metric",), "partial": True}),
              robustness=(RobustnessConfig, {"only": ("sources", "sample_counts", "k_attn", "k_mlp", "k_block"),
                                             "partial": True}))
def score(
    model: str = typer.Argument("smollm2-135m", help=MODEL_HELP),
    out: Path = typer.Option(Path("layerdrop_scores"), "--out", "-o", help="Directory for scores.json and the PNGs."),
    offload: bool = typer.Option(False, help="Stream one decoder layer at a time (models larger than memory)."),
    plot_kind: str = typer.Option("joint", help="Which drop order drop_order.png shows: attn | mlp | block | joint."),
    robustness_run: bool = typer.Option(False, "--robustness", help="Score on every --sources x --sample-counts "
                                        "setting instead (--seq-len, --seed, --batch-size, --metric apply; "
                                        "--calibration and --n-samples do not) and report how well they agree."),
    calibration=None, load=None, selection=None, robustness=None,
):
    """Score every attention, MLP and block by how little it changes its input (1 - cos, one pass).

    Writes OUT/scores.json, OUT/importance.png (per-layer scores) and OUT/drop_order.png. With --robustness:
    OUT/robustness.json (rank correlations and overlap of the k lowest, every pair of settings),
    OUT/robustness_by_source.png and OUT/robustness_by_samples.png (He et al. Figs. 3 and 10).

    Examples:

      layerdrop score smollm2-135m --n-samples 16 --seq-len 256 -o scores/

      layerdrop score mistralai/Mistral-7B-v0.1 --n-samples 256 --seq-len 2048 --dtype bfloat16 --device-map auto

      layerdrop score smollm2-135m --robustness --sources c4,wikitext2,my_text.jsonl --sample-counts 4,16,64
      --seq-len 256 --k-attn 8 -o robustness/
    """
    from layerdrop_patch.models import load_model
    from layerdrop_patch.run import pipeline

    if robustness_run:  # options are checked before the model is loaded
        config = RobustnessConfig(**vars(robustness), seq_len=calibration.seq_len, seed=calibration.seed,
                                  batch_size=calibration.batch_size, metric=selection.metric)
    m, tok = load_model(model, load)
    if robustness_run:
        from layerdrop_patch.scoring.robustness import score_robustness

        result = score_robustness(m, tok, config, offload=offload, model_name=model)
        result.save(out)
        console.print(render.robustness_table(result))
        console.print(f"wrote {out}/robustness.json, robustness_by_source.png, robustness_by_samples.png",
                      highlight=False)
        return
    cal = calibration.load(tok)
    console.print(f"calibration: {cal.description}", highlight=False)
    scores = pipeline.score_model(m, cal, out, metric=selection.metric, batch_size=calibration.batch_size,
                                  offload=offload, plot_kind=plot_kind, model_name=model)
    console.print(render.scores_table(scores))
    console.print(f"wrote {out}/scores.json, importance.png, drop_order.png", highlight=False)


@handle_errors
@with_configs(selection=(SelectionConfig, {"lazy": True}), calibration=_CALIBRATION_FOR_DROP, load=LoadConfig)
def drop(
    model: str = typer.Argument(..., help=MODEL_HELP),
    out: Path = typer.Option(..., "--out", "-o", help="Directory for the pruned checkpoint."),
    scores: Optional[Path] = typer.Option(None, help="scores.json from `layerdrop score` (else computed here)."),
    mode: Optional[str] = typer.Option(None, hidden=True, help="0.1.0 spelling: --mode iterative = --method iterative."),
    attn: Optional[str] = typer.Option(None, help="Manual: attention layers to drop, e.g. 20,22,24 (skips selection)."),
    mlp: Optional[str] = typer.Option(None, help="Manual: MLP layers to drop."),
    blocks: Optional[str] = typer.Option(None, help="Manual: whole layers to drop."),
    overwrite: bool = typer.Option(False, help="Replace OUT if it exists."),
    selection=None, calibration=None, load=None,
):
    """Drop sublayers and save a portable checkpoint (loads with plain transformers + trust_remote_code).

    --method greedy records its order in OUT-selection/ after every step: run the same command again after an
    interruption, or with a larger -n, and it goes on from there.

    Examples:

      layerdrop drop smollm2-135m --kind attn -n 4 --scores scores/scores.json -o smol-attn4

      layerdrop drop smollm2-135m --kind joint --ratio 0.1 --method iterative -o smol-joint

      layerdrop drop smollm2-135m --attn 25,26 --blocks 28 -o smol-manual
    """
    from layerdrop_patch.config import DropConfig
    from layerdrop_patch.files import claim_directory
    from layerdrop_patch.models import load_model
    from layerdrop_patch.run import pipeline
    from layerdrop_patch.scoring import ImportanceScores
    from layerdrop_patch.selection import METHODS

    manual = [int_list(attn, "--attn"), int_list(mlp, "--mlp"), int_list(blocks, "--blocks")]
    config = None if any(manual) else selection(**({"method": "iterative"} if mode == "iterative" else {}))
    loaded = ImportanceScores.load(scores) if scores else None
    check_output(out, model, overwrite)  # before the model is loaded, as are the directories beside OUT:
    method = METHODS[config.method] if config is not None else None
    scores_dir = out.parent / f"{out.name}-scores"  # scores computed here
    if method is not None and "scores" in method.needs and loaded is None:
        claim_directory(scores_dir, "drop", overwrite)
    # a resumable method (greedy) records each step beside OUT, so an interrupted run goes on where it stopped
    record_dir = out.parent / f"{out.name}-selection" if method is not None and method.resumable else None
    if record_dir is not None:
        claim_directory(record_dir, "drop", overwrite)
    m, tok = load_model(model, load)
    if config is None:
        cfg = DropConfig(attn=sorted(set(manual[0]) | set(manual[2])), mlp=sorted(set(manual[1]) | set(manual[2])))
    else:
        cal = calibration.load(tok) if ("scores" in method.needs and loaded is None) or "calibration" in method.needs \
            else None
        if cal is not None:
            console.print(f"calibration: {cal.description}", highlight=False)
        if "scores" in method.needs and loaded is None:
            loaded = pipeline.score_model(m, cal, scores_dir, metric=config.metric, model_name=model)
        cfg = pipeline.choose_and_record(config, scores=loaded, model=m, calibration=cal,
                                         out_dir=record_dir).drop_config
    result = pipeline.drop_and_save(m, tok, cfg, out, base_model=model, overwrite=overwrite)
    console.print(render.drop_table(result))
    console.print(f"saved {out}", highlight=False)


@handle_errors
@with_configs(evaluation=(EvaluationConfig, {"exclude": ("baseline",)}), load=(LoadConfig, {"only": ("dtype",)}))
def eval_(
    models: list[str] = typer.Argument(..., help="One or more models (first = baseline). " + MODEL_HELP),
    sweep: Optional[str] = typer.Option(None, help="Counts to sweep, e.g. 0,2,4,8: drop that many KIND units of the "
                                                   "first model by --scores and evaluate each (plots the curve)."),
    kind: str = typer.Option("attn", help="What --sweep drops: attn | mlp | block | joint."),
    scores: Optional[Path] = typer.Option(None, help="scores.json for --sweep."),
    out: Path = typer.Option(Path("layerdrop_eval"), "--out", "-o", help="Directory for JSON, Markdown and PNG."),
    evaluation=None, load=None,
):
    """Evaluate models with the paper's per-task settings (lm-eval) plus WikiText-2 perplexity.

    Examples:

      layerdrop eval smollm2-135m smol-attn4 --tasks arc_easy,piqa --limit 100

      layerdrop eval smollm2-135m --sweep 0,2,4,8 --scores scores/scores.json -o sweep/
    """
    from layerdrop_patch.errors import ConfigError
    from layerdrop_patch.evaluation.suite import eval_table_markdown, evaluate_model
    from layerdrop_patch.files import atomic_write_json, atomic_write_text
    from layerdrop_patch.models import load_model
    from layerdrop_patch.run import pipeline
    from layerdrop_patch.run.plots import plot_sweep
    from layerdrop_patch.scoring import ImportanceScores

    if sweep:
        if scores is None:
            raise ConfigError("--sweep needs --scores scores.json (from `layerdrop score`).")
        counts, loaded = int_list(sweep, "--sweep"), ImportanceScores.load(scores)
        m, tok = load_model(models[0], load)
        rows = pipeline.drop_sweep(m, tok, loaded, kind, counts, evaluation=evaluation)
        atomic_write_json(out / "sweep.json", rows)
        y = "average" if evaluation.tasks else "perplexity"
        plot_sweep(rows, out / f"{'accuracy' if y == 'average' else 'perplexity'}_vs_dropped.png", y=y, kind=kind,
                   log_y=y == "perplexity")
        console.print(render.sweep_table(rows, kind))
        console.print(f"wrote {out}/sweep.json and the plot", highlight=False)
        return
    columns = {}
    for name in models:
        m, tok = load_model(name, load)
        columns[name] = evaluate_model(m, tok, evaluation)
        del m
    atomic_write_json(out / "eval.json", columns)
    atomic_write_text(out / "eval_table.md", eval_table_markdown(columns))
    paired = None
    if len(columns) == 2:  # is the second model really better or worse, on these documents?
        from layerdrop_patch.evaluation.paired import compare_evaluations

        paired = compare_evaluations(*columns.values(), names=tuple(columns))
        atomic_write_json(out / "paired.json", paired)
    console.print(render.eval_table(columns, paired=paired))
    console.print(f"wrote {out}/eval.json, eval_table.md{', paired.json' if paired else ''}", highlight=False)


@handle_errors
@with_configs(bench=BenchConfig, load=(LoadConfig, {"only": ("dtype",)}))
def bench(
    models: list[str] = typer.Argument(..., help="Models to compare (first = baseline). " + MODEL_HELP),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Write bench.json here."),
    bench=None, load=None,
):
    """Prefill and decode throughput and KV-cache bytes, models side by side (interleaved) in one engine.

    --engine transformers times generate() of the patched models; vllm and llama.cpp serve each model's export
    (standard or DeciLM; GGUF) in a worker process of the Python that has the engine (--engine-python).
    --dtype is the dtype the models are loaded, exported and served in.

    Examples:

      layerdrop bench smollm2-135m smol-attn4 --new-tokens 64 --repeats 5

      layerdrop bench smollm2-135m smol-attn8 --engine vllm --engine-python .cache/engines/bin/python
      --batch-size 16 --prompt-len 200 --new-tokens 64 --threads 1 -o bench-vllm/

      layerdrop bench smollm2-135m smol-attn8 --engine llama.cpp --gguf-type q8_0 --batch-size 4
    """
    from layerdrop_patch.evaluation.bench import compare_engine
    from layerdrop_patch.files import atomic_write_json
    from layerdrop_patch.models import load_model

    loaded, tok = {}, None
    for name in models:
        loaded[name], t = load_model(name, load, tokenizer="optional")
        tok = tok or t
    result = compare_engine(loaded, tok, bench)
    result["settings"]["models"] = list(models)
    console.print(render.bench_table(result))
    if out is not None:
        atomic_write_json(Path(out) / "bench.json", result)
        console.print(f"wrote {out}/bench.json", highlight=False)


def register(app: typer.Typer) -> None:
    app.command()(score)
    app.command()(drop)
    app.command("eval")(eval_)
    app.command()(bench)


__all__ = ["register"]
