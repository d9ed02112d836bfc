"""`layerdrop demo`: the whole story on the embedded SmolLM2-135M, in minutes on a laptop CPU.

Loads the model, drops attention sublayers, and shows what that buys (KV-cache bytes, decode tokens/s)
and what it costs (the generated text side by side). Every number in the final table is measured in
this run, baseline and pruned side by side.
"""

from __future__ import annotations

import copy
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from layerdrop_patch.config import DropConfig
from layerdrop_patch.patch import apply_drop, kv_cache_bytes, parameter_bytes

PROMPT = "The three most important things to know about the water cycle are"


@dataclass
class GenerationStats:
    text: str
    tokens_per_s: float
    kv_bytes: int
    param_bytes: int
    extra: dict = field(default_factory=dict)


def timed_generation(model, tokenizer, prompt: str = PROMPT, new_tokens: int = 32, repeats: int = 3) -> GenerationStats:
    """Greedy generation with the KV cache; tokens/s is the median over `repeats` runs."""
    inputs = tokenizer(prompt, return_tensors="pt")
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        with torch.no_grad():
            out = model.generate(**inputs, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                                 return_dict_in_generate=True, pad_token_id=tokenizer.eos_token_id)
        times.append(time.perf_counter() - start)
    new_ids = out.sequences[0, inputs["input_ids"].shape[1]:]
    return GenerationStats(
        text=tokenizer.decode(new_ids, skip_special_tokens=True),
        tokens_per_s=new_tokens / statistics.median(times),
        kv_bytes=kv_cache_bytes(out.past_key_values),
        param_bytes=parameter_bytes(model),
    )


def default_attention_drop(num_layers: int, fraction: float = 0.5) -> DropConfig:
    """Fallback when no scores are available: the deepest attention layers except the last one
    (the paper finds deep attention most redundant; Tyukin et al.'s last-k with keep_last)."""
    k = int(num_layers * fraction)
    return DropConfig(attn=list(range(num_layers - 1 - k, num_layers - 1)), method="last-k(keep_last)")


def run_demo(model_name: str = "smollm2-135m", out_dir: str | Path = "demo_out", fraction: float = 0.5,
             new_tokens: int = 32) -> dict:
    from rich.console import Console
    from rich.table import Table

    from layerdrop_patch.models import load_model

    console = Console()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    console.rule(f"layerdrop demo on {model_name}")
    model, tokenizer = load_model(model_name)
    num_layers = model.config.num_hidden_layers
    drop = default_attention_drop(num_layers, fraction)
    console.print(f"dropping attention of {len(drop.attn)}/{num_layers} layers: {drop.describe()}")

    before = timed_generation(model, tokenizer, new_tokens=new_tokens)
    pruned = apply_drop(copy.deepcopy(model), drop)
    after = timed_generation(pruned, tokenizer, new_tokens=new_tokens)

    table = Table(title=f"{model_name}: baseline vs attention drop ({len(drop.attn)} layers)")
    for col in ("", "baseline", "dropped", "ratio"):
        table.add_column(col, justify="right")
    table.add_row("decode tokens/s", f"{before.tokens_per_s:.1f}", f"{after.tokens_per_s:.1f}",
                  f"{after.tokens_per_s / before.tokens_per_s:.2f}x")
    table.add_row("KV-cache bytes", f"{before.kv_bytes:,}", f"{after.kv_bytes:,}",
                  f"{after.kv_bytes / before.kv_bytes:.3f}")
    table.add_row("parameter bytes", f"{before.param_bytes:,}", f"{after.param_bytes:,}",
                  f"{after.param_bytes / before.param_bytes:.3f}")
    console.print(table)
    console.print(f"[bold]prompt:[/] {PROMPT}")
    console.print(f"[bold]baseline:[/] {before.text}")
    console.print(f"[bold]dropped:[/]  {after.text}")
    return {"drop_config": drop.to_dict(), "baseline": before.__dict__, "dropped": after.__dict__}
