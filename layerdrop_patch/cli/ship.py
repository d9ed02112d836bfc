"""`layerdrop quantize | recover | export | push`: turn a pruned model into something to ship.

Thin wrappers: AWQ lives in `quantize.py`, LoRA recovery in `recovery.py`, serving exports in `export/`, Hub
publishing in `hub.py`; the commands parse options, call those, and print what happened.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from layerdrop_patch.cli.common import DTYPE_HELP, MODEL_HELP, console, handle_errors, human_bytes


def _kv_table(title: str, rows: dict) -> Table:
    table = Table(title=title)
    table.add_column("")
    table.add_column("value", justify="right")
    for k, v in rows.items():
        table.add_row(k, v if isinstance(v, str) else f"{v:.2f}" if isinstance(v, float) else str(v))
    return table


@handle_errors
def quantize(
    model: str = typer.Argument(..., help=MODEL_HELP),
    out: Path = typer.Option(..., "--out", "-o", help="Directory for the AWQ checkpoint."),
    backend: str = typer.Option("gptqmodel", help="gptqmodel (default; AutoAWQ GEMM format) | autoawq (refused, with why)."),
    bits: int = typer.Option(4, help="Weight bits (AWQ: 4)."),
    group_size: int = typer.Option(64, help="Quantisation group size; must divide every input width."),
    sym: bool = typer.Option(True, "--sym/--asym", help="Symmetric (no zero points) or asymmetric."),
    calibration: str = typer.Option("c4", help="Calibration source."),
    n_samples: int = typer.Option(128, help="Calibration chunks."),
    seq_len: int = typer.Option(512, help="Tokens per chunk."),
    max_ppl_ratio: float = typer.Option(3.0, help="Refuse to save if WikiText-2 perplexity grows by more than this factor."),
    dtype: Optional[str] = typer.Option(None, help=DTYPE_HELP),
):
    """AWQ 4-bit quantisation of a (dropped) model, with a perplexity gate before anything is saved.

    Needs `pip install 'layerdrop-patch[awq]'` (GPTQModel).

    Example:

      layerdrop quantize smol-attn4 -o smol-attn4-awq --group-size 64 --asym
    """
    from layerdrop_patch import pipeline
    from layerdrop_patch.quantize import quantize_awq

    m, tok = pipeline.load_any(model, dtype)
    _, res = quantize_awq(m, tok, calibration, out, backend=backend, bits=bits, group_size=group_size, sym=sym,
                          n_samples=n_samples, seq_len=seq_len, max_ppl_ratio=max_ppl_ratio, inplace=True)
    console.print(_kv_table(f"AWQ {bits}-bit ({backend}, group {group_size}, {'sym' if sym else 'asym'})", {
        "WikiText-2 perplexity before": res.ppl_before, "WikiText-2 perplexity after": res.ppl_after,
        "seconds": res.seconds, "checkpoint bytes": human_bytes(res.checkpoint_bytes)}))
    console.print(f"saved {out}")


@handle_errors
def recover(
    model: str = typer.Argument(..., help=MODEL_HELP),
    out: Path = typer.Option(..., "--out", "-o", help="Directory for the recovered checkpoint (or adapter)."),
    steps: int = typer.Option(200, help="Training steps."),
    lr: float = typer.Option(2e-4, help="Learning rate (AdamW, warm-up + cosine)."),
    rank: int = typer.Option(8, help="LoRA rank."),
    alpha: int = typer.Option(16, help="LoRA alpha."),
    batch_size: int = typer.Option(4, help="Sequences per step."),
    seq_len: int = typer.Option(256, help="Tokens per sequence."),
    data: str = typer.Option("c4", help="Training text: c4 | a local file or dir | hub dataset."),
    merge: bool = typer.Option(True, "--merge/--keep-adapter", help="Merge adapters into the weights, or save them apart."),
    eval_tokens: int = typer.Option(8192, help="WikiText-2 tokens for perplexity before/after (0 = skip)."),
    seed: int = typer.Option(0, help="Seed for data order."),
    dtype: Optional[str] = typer.Option(None, help=DTYPE_HELP),
):
    """LoRA recovery: fine-tune adapters on the kept projections of a dropped model, then merge or keep them.

    Writes the checkpoint, OUT/loss.png (loss curve) and OUT/recovery.json.

    Example:

      layerdrop recover smol-block4 -o smol-block4-lora --steps 100 --lr 3e-4
    """
    from layerdrop_patch import pipeline
    from layerdrop_patch.recovery import recover_lora

    m, tok = pipeline.load_any(model, dtype)
    _, res = recover_lora(m, tok, data, steps=steps, batch_size=batch_size, seq_len=seq_len, lr=lr, rank=rank,
                          alpha=alpha, merge=merge, out_dir=out, eval_tokens=eval_tokens or None, seed=seed)
    console.print(_kv_table(f"LoRA recovery (rank {rank}, {steps} steps)", {
        "WikiText-2 perplexity before": res.ppl_before if res.ppl_before is not None else "–",
        "WikiText-2 perplexity after": res.ppl_after if res.ppl_after is not None else "–",
        "final loss": res.losses[-1], "trainable parameters": f"{res.trainable_params:,}", "seconds": res.seconds,
        "adapters": "merged" if merge else "kept (adapter/)"}))
    console.print(f"saved {out} (loss curve: {res.loss_plot})")


@handle_errors
def export(
    model: str = typer.Argument(..., help="A pruned checkpoint directory (or any model argument)."),
    out: Path = typer.Option(..., "--out", "-o", help="Output directory (standard, decilm) or .gguf file."),
    format: str = typer.Option(..., "--format", "-f", help="standard (block drops) | decilm (vLLM) | gguf (llama.cpp)."),
    dtype: Optional[str] = typer.Option(None, help=DTYPE_HELP),
):
    """Export a pruned model to a format serving engines run natively.

    Examples:

      layerdrop export smol-block4 --format standard -o smol-block4-std

      layerdrop export smol-attn4 --format decilm -o smol-attn4-vllm

      layerdrop export smol-attn4 --format gguf -o smol-attn4.gguf
    """
    try:
        from layerdrop_patch.export import export as export_fn
    except ImportError as err:
        raise ImportError(f"the export module is not available in this installation ({err}); update layerdrop-patch.")
    from layerdrop_patch import pipeline
    from layerdrop_patch.models import resolve_model

    path = resolve_model(model)
    source = Path(path) if Path(path).is_dir() else pipeline.load_any(model, dtype)[0]
    written = export_fn(source, format=format, out=out)
    console.print(f"exported {model} as {format}: {written or out}")


def _eval_for_card(path: Optional[Path]):
    """{task: value} from an eval.json written by `layerdrop eval` / a recipe, for the model card."""
    if path is None:
        return None
    data = json.loads(Path(path).read_text())
    if "tasks" not in data and len(data) >= 1:  # `layerdrop eval` writes {model: result}; take the last model
        data = list(data.values())[-1]
    table = {t: r["value"] for t, r in data.get("tasks", {}).items()}
    if data.get("perplexity"):
        table[f"{data['perplexity']['dataset']}_perplexity"] = data["perplexity"]["value"]
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
    from layerdrop_patch.hub import push_to_hub

    url = push_to_hub(checkpoint, repo_id, private=private or None, token=token, revision=revision,
                      commit_message=message, eval_results=_eval_for_card(eval_json),
                      scores=str(scores) if scores else None, create_pr=create_pr)
    console.print(f"pushed: {url}")


def register(app: typer.Typer) -> None:
    for fn in (quantize, recover, export, push):
        app.command()(fn)
