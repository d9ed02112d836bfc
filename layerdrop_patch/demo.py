"""`layerdrop demo`: the whole story on the embedded SmolLM2-135M, in minutes on a laptop CPU.

Score every sublayer on a small C4 sample, drop the most redundant attention layers, then measure what that
costs (task accuracy on a fixed small subset, WikiText-2 perplexity) and what it buys (decode tokens/s and
KV-cache bytes, baseline and dropped timed side by side in one run; checkpoint bytes). The pruned model is
saved and reloaded in a subprocess where `layerdrop_patch` cannot be imported, through plain
`AutoModelForCausalLM.from_pretrained(dir, trust_remote_code=True)`, and must give the same logits and
greedy tokens. Every number in the final table is measured in this run.

Why 4 attention layers by default: measured on SmolLM2-135M (see DEMO_N_ATTN), dropping the 4 lowest-scoring
attention layers keeps the model usable while halving attention would wreck a model this small (the paper's
"half the attention is redundant" holds for 13B-70B models, not 135M ones). The optional sweep plots
perplexity against the number dropped so the user sees where it breaks.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Any

import torch

from layerdrop_patch import pipeline
from layerdrop_patch.portability import run_without_package

DEMO_N_ATTN = 4
SWEEP_COUNTS = (0, 2, 4, 6, 8, 12)
PROMPT = "The three most important things to know about the water cycle are"

_RELOAD_SCRIPT = """
import torch
from transformers import AutoModelForCausalLM
model = AutoModelForCausalLM.from_pretrained({ckpt!r}, trust_remote_code=True, dtype=torch.float32).eval()
ids = torch.tensor({ids!r})
with torch.no_grad():
    logits = model(ids).logits[0, -1]
    gen = model.generate(ids, max_new_tokens={new}, min_new_tokens={new}, do_sample=False, pad_token_id=0)
print(json.dumps({{"last_logits": logits.tolist(), "tokens": gen[0, ids.shape[1]:].tolist(),
                  "class": type(model).__name__}}))
"""


def reload_without_package(checkpoint: str | Path, model: Any, tokenizer: Any, new_tokens: int = 12) -> dict:
    """Load `checkpoint` in a fresh Python where `import layerdrop_patch` fails; compare with `model` in-process."""
    ids = tokenizer(PROMPT, return_tensors="pt")["input_ids"]
    checkpoint = Path(checkpoint).resolve()
    start = time.perf_counter()
    theirs = run_without_package(_RELOAD_SCRIPT.format(ckpt=str(checkpoint), ids=ids.tolist(), new=new_tokens),
                                 cwd=checkpoint.parent)
    with torch.no_grad():
        ours = model(ids).logits[0, -1]
        gen = model.generate(ids, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, pad_token_id=0)
    ours_tokens = gen[0, ids.shape[1]:].tolist()
    return {"seconds": time.perf_counter() - start, "class": theirs["class"],
            "max_abs_logit_diff": float((torch.tensor(theirs["last_logits"]) - ours).abs().max()),
            "same_greedy_tokens": theirs["tokens"] == ours_tokens, "text": tokenizer.decode(theirs["tokens"]),
            "layerdrop_modules_imported": theirs["layerdrop_modules"]}


def _base_checkpoint_bytes(model_name: str, model: Any) -> int:
    from layerdrop_patch.models import resolve_model
    from layerdrop_patch.patch import parameter_bytes

    path = Path(resolve_model(model_name))
    return pipeline.checkpoint_bytes(path) if path.is_dir() else parameter_bytes(model)


def run_demo(model_name: str = "smollm2-135m", out_dir: str | Path = "demo_out", *, n_attn: int | None = None,
             tasks: list[str] | None = ("arc_easy", "piqa", "lambada_openai"), limit: int = 100,
             calibration_samples: int = 16, calibration_seq_len: int = 256, ppl_tokens: int = 4096,
             ppl_dataset: str = "wikitext2",
             new_tokens: int = 32, prompt_len: int = 64, repeats: int = 3, sweep: bool = True,
             sweep_counts: tuple[int, ...] = SWEEP_COUNTS, progress: bool = True) -> dict:
    """Run the demo; returns the summary that is also written to `out_dir/demo_summary.json`."""
    from rich.console import Console
    from rich.markup import escape

    from layerdrop_patch.cli import render

    console = Console()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    timings: dict[str, float] = {}

    def stage(name: str):
        timings[name] = time.perf_counter()
        console.rule(f"[bold]{name}")

    def done(name: str):
        timings[name] = round(time.perf_counter() - timings[name], 1)

    stage("load")
    model, tok = pipeline.load_any(model_name)
    console.print(f"{model_name}: {model.config.num_hidden_layers} layers, {sum(p.numel() for p in model.parameters()):,} parameters")
    done("load")

    stage("score")
    calibration = pipeline.calibration_for(tok, "c4", calibration_samples, calibration_seq_len, seed=0)
    console.print(f"calibration: {calibration.description}")
    scores = pipeline.score_model(model, calibration, out, progress=progress, plot_kind="attn", model_name=model_name)
    k = DEMO_N_ATTN if n_attn is None else n_attn
    cfg, _ = pipeline.choose_drop(scores, "attn", n=k, model=model, out_dir=out)
    cfg.base_model = model_name
    console.print(f"the {k} most redundant attention layers: {sorted(cfg.attn)} "
                  f"(scores {[round(scores.attn[i], 4) for i in sorted(cfg.attn)]}); plots: importance.png, drop_order.png")
    done("score")

    eval_kwargs = dict(tasks=list(tasks) if tasks else None, limit=limit, perplexity_tokens=ppl_tokens,
                       perplexity_dataset=ppl_dataset, progress=progress)
    sweep_rows = None
    if sweep:
        stage("perplexity sweep")
        sweep_rows = pipeline.drop_sweep(model, tok, scores, "attn", sweep_counts, tasks=None,
                                         perplexity_dataset=ppl_dataset, perplexity_tokens=min(ppl_tokens, 2048),
                                         progress=progress)
        pipeline.plot_sweep(sweep_rows, out / "perplexity_vs_attn_dropped.png", kind="attention", chosen=k,
                            title=f"{model_name}: {ppl_dataset} perplexity vs attention layers dropped")
        console.print(render.sweep_table(sweep_rows, "attention"))
        done("perplexity sweep")

    stage("evaluate baseline")
    base_eval = pipeline.evaluate_model(model, tok, **eval_kwargs)
    done("evaluate baseline")

    stage("drop + save")
    pruned = copy.deepcopy(model)
    drop = pipeline.drop_and_save(pruned, tok, cfg, out / "checkpoint", overwrite=True,
                                  scores_plot=out / "importance.png")
    console.print(render.drop_table(drop))
    done("drop + save")

    stage("evaluate dropped")
    dropped_eval = pipeline.evaluate_model(pruned, tok, **eval_kwargs)
    done("evaluate dropped")

    stage("benchmark (side by side)")
    speed = pipeline.compare_speed({"baseline": model, "dropped": pruned}, tok, prompt_len=prompt_len,
                                   new_tokens=new_tokens, repeats=repeats, progress=progress)
    console.print(render.bench_table(speed))
    done("benchmark (side by side)")

    stage("reload without layerdrop_patch")
    reload = reload_without_package(out / "checkpoint", pruned, tok)
    console.print(f"loaded as {reload['class']} in a process without layerdrop_patch: max |Δlogit| = "
                  f"{reload['max_abs_logit_diff']:.2e}, same greedy tokens: {reload['same_greedy_tokens']}")
    console.print(f"[bold]prompt:[/] {PROMPT}\n[bold]dropped model (reloaded):[/] {escape(reload['text'])}")
    done("reload without layerdrop_patch")

    summary = {
        "model": model_name, "drop": drop, "scores": "scores.json", "calibration": calibration.description,
        "baseline": {"eval": base_eval, "decode_tok_s": speed["models"]["baseline"]["decode_tok_s"],
                     "kv_cache_bytes": speed["models"]["baseline"]["kv_cache_bytes"],
                     "checkpoint_bytes": _base_checkpoint_bytes(model_name, model)},
        "dropped": {"eval": dropped_eval, "decode_tok_s": speed["models"]["dropped"]["decode_tok_s"],
                    "kv_cache_bytes": speed["models"]["dropped"]["kv_cache_bytes"],
                    "checkpoint_bytes": drop["checkpoint_bytes"]},
        "bench": speed, "reload_without_package": reload, "sweep": sweep_rows, "stage_seconds": timings,
    }
    summary["wall_seconds"] = round(time.perf_counter() - started, 1)
    pipeline.atomic_write_json(out / "demo_summary.json", summary)
    console.rule("[bold]result")
    console.print(render.before_after_table(summary))
    console.print(f"wall time {summary['wall_seconds']:.0f} s; artifacts in {out}/: scores.json, importance.png, "
                  f"drop_order.png{', perplexity_vs_attn_dropped.png' if sweep else ''}, checkpoint/, demo_summary.json")
    if not reload["same_greedy_tokens"] or reload["max_abs_logit_diff"] > 1e-3:
        raise RuntimeError(f"the checkpoint reloaded without layerdrop_patch does not reproduce the model: {reload}")
    return summary
