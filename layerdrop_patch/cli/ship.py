"""`layerdrop quantize | recover | export | push`: turn a pruned model into something to ship.

Thin wrappers over the `quantize`, `recover`, `export` and `publish` stages; options come from their configs and
are validated before any model is loaded; outputs are refused if they exist, unless `--overwrite`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from layerdrop_patch.cli.common import MODEL_HELP, check_output, console, handle_errors
from layerdrop_patch.cli.options import with_configs
from layerdrop_patch.files import human_bytes
from layerdrop_patch.models import LoadConfig
from layerdrop_patch.quantize.awq import QuantizeConfig
from layerdrop_patch.recover.lora import RecoveryConfig
from layerdrop_patch.scoring.calibration import CalibrationConfig


def _kv_table(title: str, rows: dict) -> Table:
    table = Table(title=title)
    table.add_column("")
    table.add_column("value", justify="right")
    for k, v in rows.items():
        table.add_row(k, v if isinstance(v, str) else f"{v:.2f}" if isinstance(v, float) else str(v))
    return table


@handle_errors
@with_configs(quantize=QuantizeConfig, calibration=(CalibrationConfig, {"only": ("source",), "partial": True}),
              load=(LoadConfig, {"only": ("dtype",)}))
def quantize(
    model: str = typer.Argument(..., help=MODEL_HELP),
    out: Path = typer.Option(..., "--out", "-o", help="Directory for the AWQ checkpoint."),
    overwrite: bool = typer.Option(False, help="Replace OUT if it exists."),
    quantize=None, calibration=None, load=None,
):
    """AWQ 4-bit quantisation of a (dropped) model, with a perplexity gate before anything is saved.

    Needs `pip install 'layerdrop-patch[awq]'` (GPTQModel).

    Example:

      layerdrop quantize smol-attn4 -o smol-attn4-awq --group-size 64 --asym
    """
    from layerdrop_patch.models import load_model
    from layerdrop_patch.quantize import quantize_awq

    check_output(out, model, overwrite)
    m, tok = load_model(model, load)
    q = quantize
    _, res = quantize_awq(m, tok, calibration.source, out, q, inplace=True, overwrite=overwrite)
    console.print(_kv_table(f"AWQ {q.bits}-bit ({q.backend}, group {q.group_size}, {'sym' if q.sym else 'asym'})", {
        "WikiText-2 perplexity before": res.ppl_before, "WikiText-2 perplexity after": res.ppl_after,
        "seconds": res.seconds, "checkpoint bytes": human_bytes(res.checkpoint_bytes)}))
    console.print(f"saved {out}", highlight=False)


@handle_errors
@with_configs(recovery=RecoveryConfig, load=(LoadConfig, {"only": ("dtype",)}))
def recover(
    model: str = typer.Argument(..., help=MODEL_HELP),
    out: Path = typer.Option(..., "--out", "-o", help="Directory for the recovered checkpoint (or adapter)."),
    overwrite: bool = typer.Option(False, help="Replace OUT if it exists."),
    teacher: Optional[str] = typer.Option(None, help="The unpruned model for --loss distill / lm+distill (default: "
                                                     "the base model recorded in MODEL's drop_config)."),
    recovery=None, load=None,
):
    """LoRA recovery: fine-tune adapters on the kept projections of a dropped model, then merge or keep them.

    Writes the checkpoint, OUT/loss.png (loss curve) and OUT/recovery.json.

    Examples:

      layerdrop recover smol-block4 -o smol-block4-lora --steps 100 --lr 3e-4

      layerdrop recover smol-block4 -o smol-block4-kd --loss distill --teacher smollm2-135m
    """
    from layerdrop_patch.errors import ConfigError
    from layerdrop_patch.models import load_model
    from layerdrop_patch.recover import recover_lora

    check_output(out, model, overwrite)
    m, tok = load_model(model, load)
    teacher_model = None
    if recovery.loss != "lm":
        teacher = teacher or (getattr(m.config, "drop_config", None) or {}).get("base_model")
        if not teacher:
            raise ConfigError(f"--loss {recovery.loss} needs --teacher MODEL (the unpruned model); {model} records "
                              "no base model.")
        teacher_model, _ = load_model(teacher, load, tokenizer=False)
    _, res = recover_lora(m, tok, config=recovery, teacher=teacher_model, out_dir=out, overwrite=overwrite)
    console.print(_kv_table(f"LoRA recovery (rank {recovery.rank}, {recovery.steps} steps)", {
        "WikiText-2 perplexity before": res.ppl_before if res.ppl_before is not None else "–",
        "WikiText-2 perplexity after": res.ppl_after if res.ppl_after is not None else "–",
        "final loss": res.losses[-1], "trainable parameters": f"{res.trainable_params:,}", "seconds": res.seconds,
        "adapters": "merged" if recovery.merge else "kept (adapter/)"}))
    console.print(f"saved {out} (loss curve: {res.loss_plot})", highlight=False)


def _format_help() -> str:
    from layerdrop_patch.export import FORMATS

    return " | ".join(f"{f.name} ({f.engines})" for f in FORMATS.values()) + "."


def _gguf_types() -> list[str]:
    from layerdrop_patch.export.gguf import GGUF_TYPES

    return list(GGUF_TYPES)


@handle_errors
def export(
    model: str = typer.Argument(..., help="A pruned checkpoint directory (or any model argument)."),
    out: Path = typer.Option(..., "--out", "-o", help="Output directory (standard, decilm) or .gguf file."),
    format: str = typer.Option(..., "--format", "-f", help=_format_help()),
    overwrite: bool = typer.Option(False, help="Replace OUT if it exists."),
    gguf_dtype: str = typer.Option("f32", help="GGUF weights: " + ", ".join(_gguf_types()) + " (f32 is exact)."),
    tokenizer_pre: Optional[str] = typer.Option(None, help="GGUF: llama.cpp's pre-tokenizer name, for a tokenizer "
                                                "it does not recognise (default: detected; unknown is refused)."),
    allow_no_tokenizer: bool = typer.Option(False, help="GGUF: write the file even without a tokenizer "
                                                         "(llama.cpp cannot run it, but tools can read it)."),
):
    """Export a pruned model to a format serving engines run natively.

    Examples:

      layerdrop export smol-block4 --format standard -o smol-block4-std

      layerdrop export smol-attn4 --format decilm -o smol-attn4-vllm

      layerdrop export smol-attn4 --format gguf -o smol-attn4.gguf
    """
    from layerdrop_patch.errors import ConfigError
    from layerdrop_patch.export import FORMATS, export as export_fn

    if format not in FORMATS:
        raise ConfigError(f"--format {format!r} is not one of {', '.join(FORMATS)}")
    check_output(out, model, overwrite)
    options = {"overwrite": overwrite}
    if format == "gguf":
        options.update(dtype=gguf_dtype, allow_no_tokenizer=allow_no_tokenizer, tokenizer_pre=tokenizer_pre)
    elif tokenizer_pre is not None:
        raise ConfigError("--tokenizer-pre only applies to --format gguf")
    written = export_fn(model, format=format, out=out, **options)
    console.print(f"exported {model} as {format}: {written}", highlight=False)


def _eval_for_card(path: Optional[Path]):
    """{task: value} from an eval.json written by `layerdrop eval` / a recipe, for the model card."""
    import json

    from layerdrop_patch.errors import DataError

    if path is None:
        return None
    try:
        data = json.loads(Path(path).read_text())
        if "tasks" not in data and len(data) >= 1:  # `layerdrop eval` writes {model: result}; take the last model
            data = list(data.values())[-1]
        table = {t: r["value"] for t, r in data.get("tasks", {}).items()}
        if data.get("perplexity"):
            table[f"{data['perplexity']['dataset']}_perplexity"] = data["perplexity"]["value"]
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        raise DataError(f"--eval {path}: not an eval.json written by `layerdrop eval` or a recipe ({err}).") from None
    return table


@handle_errors
def push(
    checkpoint: Path = typer.Argument(..., help="A pruned checkpoint directory written by layerdrop."),
    repo_id: str = typer.Argument(..., help="owner/name on the Hugging Face Hub (created if missing)."),
    private: bool = typer.Option(False, help="Create the repository as private."),
    token: Optional[str] = typer.Option(None, help="Write token (default: the logged-in one / HF_TOKEN)."),
    revision: Optional[str] = typer.Option(None, help="Branch to commit to."),
    create_pr: bool = typer.Option(False, help="Open a pull request instead of committing."),
    eval_json: Optional[Path] = typer.Option(None, "--eval", help="eval.json to show in the model card."),
    scores: Optional[Path] = typer.Option(None, help="scores.json (plotted) or a PNG for the model card."),
    message: Optional[str] = typer.Option(None, help="Commit message."),
):
    """Upload a pruned checkpoint with a generated model card, in one commit.

    Example:

      layerdrop push smol-attn4 me/SmolLM2-135M-attn4 --eval eval/eval.json --scores scores/scores.json
    """
    from layerdrop_patch.publish import push_to_hub

    url = push_to_hub(checkpoint, repo_id, private=private or None, token=token, revision=revision,
                      commit_message=message, eval_results=_eval_for_card(eval_json),
                      scores=str(scores) if scores else None, create_pr=create_pr)
    console.print(f"pushed: {url}", highlight=False)


def register(app: typer.Typer) -> None:
    for fn in (quantize, recover, export, push):
        app.command()(fn)
