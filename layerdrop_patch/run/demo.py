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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from layerdrop_patch.checkpoint import run_without_package
from layerdrop_patch.evaluation.bench import compare_generate
from layerdrop_patch.evaluation.suite import EvaluationConfig, evaluate_model
from layerdrop_patch.files import atomic_write_json, checkpoint_bytes, claim_directory
from layerdrop_patch.models import DEFAULT_MODEL, load_model, resolve_model
from layerdrop_patch.options import StageConfig, option, positive
from layerdrop_patch.patch import parameter_bytes
from layerdrop_patch.run import pipeline
from layerdrop_patch.run.plots import plot_sweep
from layerdrop_patch.scoring import CalibrationConfig
from layerdrop_patch.selection import SelectionConfig

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
    path = Path(resolve_model(model_name))
    return checkpoint_bytes(path) if path.is_dir() else parameter_bytes(model)


@dataclass
class DemoConfig(StageConfig):
    """The demo's knobs: the options of `layerdrop demo`."""

    model: str = option(DEFAULT_MODEL, "Hub id, local directory or embedded model name.")
    n_attn: int = option(DEMO_N_ATTN, "Attention layers to drop (4: measured on SmolLM2-135M, see the module "
                         "docstring).", check=positive)
    tasks: list[str] = option(["arc_easy", "piqa", "lambada_openai"], "Tasks evaluated (first --limit documents each).")
    limit: int = option(100, "Documents per task.", check=positive)
    calibration_samples: int = option(16, "C4 calibration chunks for scoring.", check=positive)
    calibration_seq_len: int = option(256, "Tokens per calibration chunk.", check=positive)
    ppl_tokens: int = option(4096, "Tokens scored for perplexity.", check=positive)
    ppl_dataset: str = option("wikitext2", "Perplexity text: wikitext2 | c4 | a UTF-8 text file.")
    new_tokens: int = option(32, "Tokens generated per speed measurement.", check=positive)
    prompt_len: int = option(64, "Prompt tokens per speed measurement.", check=positive)
    repeats: int = option(3, "Timed generate() runs per model.", check=positive)
    sweep: bool = option(True, "Also plot perplexity against the number of attention layers dropped.")


class Reporter:
    """Where the demo's progress goes: plain text here; the CLI passes one that draws tables."""

    def stage(self, name: str) -> None:
        print(f"== {name}", flush=True)

    def line(self, text: str) -> None:
        print(text, flush=True)

    def show(self, what: str, data: Any) -> None:
        """A result worth a table: "sweep", "drop", "bench", "result" (the CLI renders these)."""
        if what == "result":
            b, a = data["baseline"], data["dropped"]
            self.line(f"baseline vs dropped: decode tok/s {b['decode_tok_s']:.1f} -> {a['decode_tok_s']:.1f}, "
                      f"KV bytes {b['kv_cache_bytes']} -> {a['kv_cache_bytes']}")


def run_demo(config: DemoConfig | None = None, out_dir: str | Path = "demo_out", *, overwrite: bool = False,
             reporter: Reporter | None = None, progress: bool = True, sweep_counts: tuple[int, ...] = SWEEP_COUNTS,
             **overrides: Any) -> dict:
    """Run the demo; returns the summary that is also written to `out_dir/demo_summary.json`. `out_dir` must be
    new, empty, or an earlier demo's output (else `overwrite=True`)."""
    c = DemoConfig.build(config, **overrides)
    report = reporter or Reporter()
    out = claim_directory(out_dir, "demo", overwrite)
    started = time.perf_counter()
    timings: dict[str, float] = {}

    def stage(name: str):
        timings[name] = time.perf_counter()
        report.stage(name)

    def done(name: str):
        timings[name] = round(time.perf_counter() - timings[name], 1)

    stage("load")
    model, tok = load_model(c.model)
    report.line(f"{c.model}: {model.config.num_hidden_layers} layers, {sum(p.numel() for p in model.parameters()):,} "
                "parameters")
    done("load")

    stage("score")
    calibration = CalibrationConfig(n_samples=c.calibration_samples, seq_len=c.calibration_seq_len).load(tok)
    report.line(f"calibration: {calibration.description}")
    scores = pipeline.score_model(model, calibration, out, progress=progress, plot_kind="attn", model_name=c.model)
    cfg = pipeline.choose_and_record(SelectionConfig(kind="attn", n=c.n_attn), scores=scores, model=model,
                                     out_dir=out).drop_config
    cfg.base_model = c.model
    report.line(f"the {c.n_attn} most redundant attention layers: {sorted(cfg.attn)} "
                f"(scores {[round(scores.attn[i], 4) for i in sorted(cfg.attn)]}); plots: importance.png, "
                "drop_order.png")
    done("score")

    evaluation = EvaluationConfig(tasks=c.tasks, limit=c.limit, perplexity_tokens=c.ppl_tokens,
                                  perplexity_dataset=c.ppl_dataset)
    sweep_rows = None
    if c.sweep:
        stage("perplexity sweep")
        sweep_rows = pipeline.drop_sweep(model, tok, scores, "attn", sweep_counts, progress=progress,
                                         evaluation=evaluation.replace(tasks=[], perplexity_tokens=min(c.ppl_tokens,
                                                                                                        2048)))
        plot_sweep(sweep_rows, out / "perplexity_vs_attn_dropped.png", kind="attention", chosen=c.n_attn,
                   title=f"{c.model}: {c.ppl_dataset} perplexity vs attention layers dropped")
        report.show("sweep", sweep_rows)
        done("perplexity sweep")

    stage("evaluate baseline")
    base_eval = evaluate_model(model, tok, evaluation, progress=progress)
    done("evaluate baseline")

    stage("drop + save")
    pruned = copy.deepcopy(model)
    drop = pipeline.drop_and_save(pruned, tok, cfg, out / "checkpoint", overwrite=True,
                                  scores_plot=out / "importance.png")
    report.show("drop", drop)
    done("drop + save")

    stage("evaluate dropped")
    dropped_eval = evaluate_model(pruned, tok, evaluation, progress=progress)
    done("evaluate dropped")

    stage("benchmark (side by side)")
    speed = compare_generate({"baseline": model, "dropped": pruned}, tok, prompt_len=c.prompt_len,
                             new_tokens=c.new_tokens, repeats=c.repeats, measure_memory=False, progress=progress)
    report.show("bench", speed)
    done("benchmark (side by side)")

    stage("reload without layerdrop_patch")
    reload = reload_without_package(out / "checkpoint", pruned, tok)
    report.line(f"loaded as {reload['class']} in a process without layerdrop_patch: max |Δlogit| = "
                f"{reload['max_abs_logit_diff']:.2e}, same greedy tokens: {reload['same_greedy_tokens']}")
    report.line(f"prompt: {PROMPT}\ndropped model (reloaded): {reload['text']}")
    done("reload without layerdrop_patch")

    summary = {
        "model": c.model, "drop": drop, "scores": "scores.json", "calibration": calibration.description,
        "baseline": {"eval": base_eval, "decode_tok_s": speed["models"]["baseline"]["decode_tok_s"],
                     "kv_cache_bytes": speed["models"]["baseline"]["kv_cache_bytes"],
                     "checkpoint_bytes": _base_checkpoint_bytes(c.model, model)},
        "dropped": {"eval": dropped_eval, "decode_tok_s": speed["models"]["dropped"]["decode_tok_s"],
                    "kv_cache_bytes": speed["models"]["dropped"]["kv_cache_bytes"],
                    "checkpoint_bytes": drop["checkpoint_bytes"]},
        "bench": speed, "reload_without_package": reload, "sweep": sweep_rows, "stage_seconds": timings,
    }
    summary["wall_seconds"] = round(time.perf_counter() - started, 1)
    atomic_write_json(out / "demo_summary.json", summary)
    report.stage("result")
    report.show("result", summary)
    report.line(f"wall time {summary['wall_seconds']:.0f} s; artifacts in {out}/: scores.json, importance.png, "
                f"drop_order.png{', perplexity_vs_attn_dropped.png' if c.sweep else ''}, checkpoint/, "
                "demo_summary.json")
    if not reload["same_greedy_tokens"] or reload["max_abs_logit_diff"] > 1e-3:
        raise RuntimeError(f"the checkpoint reloaded without layerdrop_patch does not reproduce the model: {reload}")
    return summary
