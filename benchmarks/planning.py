"""Plans for speed targets against the paper's fixed-k drops (issue 17): quality vs measured speed-up.

For each model: `plan_drop` for every target (transformers engine on this machine, one workload), each plan's
predicted and measured speed-up and its prediction error; beside them the paper's fixed-k drops (Attn-k, MLP-k,
Block-k by one-shot cosine), measured on the same workload; held-out WikiText-2 perplexity for all. Plans are
made with each quality signal (`--quality scores loss`: importance scores, or the calibration loss increase of
each removal alone), so the table says which signal plans better. Perplexities of drops measured by an earlier
run (same model, same tokens) are reused. Writes
benchmarks/results/planning_<model>.json, a Markdown table and a plot (quality against measured speed-up).

    python benchmarks/planning.py --model smollm2-135m --targets 1.1 1.2 1.3
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from layerdrop_patch import DropConfig, apply_drop, load_model  # noqa: E402
from layerdrop_patch.evaluation.bench import BenchConfig, compare_engine  # noqa: E402
from layerdrop_patch.evaluation.perplexity import perplexity  # noqa: E402
from layerdrop_patch.files import atomic_write_json, atomic_write_text, save_figure  # noqa: E402
from layerdrop_patch.planning import PlanConfig, fit_cost_model, loss_quality, measure_profile, plan_drop  # noqa: E402
from layerdrop_patch.plotting import COLORS, pyplot  # noqa: E402
from layerdrop_patch.scoring import CalibrationConfig, compute_importance  # noqa: E402
from layerdrop_patch.selection import SelectionConfig, select  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--targets", nargs="+", type=float, default=[1.1, 1.2, 1.3])
    parser.add_argument("--ks", nargs="+", type=int, default=[4, 8, 12])
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--prompt-len", type=int, default=128)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--ppl-tokens", type=int, default=16384)
    parser.add_argument("--quality", nargs="+", default=["scores", "loss"], choices=["scores", "loss"],
                        help="quality signals to plan with, each planned for every target")
    parser.add_argument("--loss-samples", type=int, default=8, help="256-token calibration samples for quality 'loss'")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model, tok = load_model(args.model)
    workload = BenchConfig(batch_size=args.batch_size, prompt_len=args.prompt_len, new_tokens=args.new_tokens,
                           repeats=args.repeats)
    calibration = CalibrationConfig(n_samples=16, seq_len=256).load(tok)
    scores = compute_importance(model, calibration, progress=False)

    def ppl(m) -> float:
        return perplexity(m, tok, "wikitext2", seq_len=512, stride=512, max_tokens=args.ppl_tokens, progress=False)

    loss_table = loss_quality(model, calibration.input_ids[:args.loss_samples], ("attn", "mlp", "block"),
                              progress=False) if "loss" in args.quality else None
    # timing next (keep the machine otherwise idle until "timing done"), perplexity after
    print("quality ready; timing next", flush=True)
    result = {"model": args.model, "workload": workload.to_dict(), "ppl_tokens": args.ppl_tokens, "plans": [],
              "fixed": []}
    profile = measure_profile(model, tok, workload, model_name=args.model, use_cache=False, progress=False)
    result["profile"] = profile.to_dict()
    result["cost_model"] = fit_cost_model(profile, model.config).to_dict()
    for quality in args.quality:
        for target in args.targets:
            plan = plan_drop(model, tok, SelectionConfig(kind="joint", target_speedup=target), workload,
                             PlanConfig(quality=quality), scores=scores,
                             quality_table=loss_table if quality == "loss" else None,
                             model_name=args.model, progress=False)
            result["plans"].append(plan.to_dict())
            print(f"plan x{target} ({quality}): predicted x{plan.predicted_speedup:.3f}, measured "
                  f"x{plan.measured_speedup:.3f} ({plan.prediction_error:+.1%}), attn {plan.drop_config['attn']} "
                  f"mlp {plan.drop_config['mlp']}", flush=True)
    fixed = {f"{kind.capitalize()}-{k}": select(scores, kind, n=k) for kind in ("attn", "mlp", "block")
             for k in args.ks}
    models = {"baseline": model, **{name: apply_drop(copy.deepcopy(model), cfg) for name, cfg in fixed.items()}}
    speed = compare_engine(models, tok, workload, progress=False)
    for name, cfg in fixed.items():
        result["fixed"].append({"name": name, "attn": cfg.attn, "mlp": cfg.mlp,
                                "measured_speedup": speed["ratios"][name]["total_speedup"],
                                "predicted_speedup": profile.speedup(cfg)})
    print("timing done; perplexity next", flush=True)
    known = _known_perplexities(args.results / f"planning_{args.model}.json", args.ppl_tokens)

    def ppl_of(attn: list[int], mlp: list[int]) -> float:
        key = (tuple(attn), tuple(mlp))
        if key not in known:
            known[key] = ppl(apply_drop(copy.deepcopy(model), DropConfig(attn=attn, mlp=mlp)) if attn or mlp
                             else model)
        return known[key]

    result["baseline_ppl"] = ppl_of([], [])
    for row in result["plans"]:
        row["ppl"] = ppl_of(row["drop_config"]["attn"], row["drop_config"]["mlp"])
    for row in result["fixed"]:
        row["ppl"] = ppl_of(row["attn"], row["mlp"])
    args.results.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.results / f"planning_{args.model}.json", result)
    atomic_write_text(args.results / f"planning_{args.model}.md", table(result))
    plot(result, args.results / f"planning_{args.model}.png")
    print(table(result))


def _known_perplexities(path: Path, tokens: int) -> dict:
    """Perplexities an earlier run measured on the same tokens, by (attn, mlp) drop."""
    if not path.exists():
        return {}
    old = json.loads(path.read_text())
    if old.get("ppl_tokens") != tokens:
        return {}
    known = {((), ()): old["baseline_ppl"]}
    known.update({(tuple(p["drop_config"]["attn"]), tuple(p["drop_config"]["mlp"])): p["ppl"] for p in old["plans"]})
    known.update({(tuple(f["attn"]), tuple(f["mlp"])): f["ppl"] for f in old["fixed"]})
    return known


def table(result: dict) -> str:
    w = result["workload"]
    lines = [f"### {result['model']}: plans vs fixed-k drops (transformers, batch {w['batch_size']}, "
             f"{w['prompt_len']} + {w['new_tokens']} tokens; unpruned WikiText-2 perplexity "
             f"{result['baseline_ppl']:.2f})", "",
             "| drop | target | predicted | measured | prediction error | WikiText-2 | attention / MLP dropped |",
             "|---|---:|---:|---:|---:|---:|---|"]
    for p in result["plans"]:
        d = p["drop_config"]
        lines.append(f"| plan ({p['quality']}) | x{p['target_speedup']:.2f} | x{p['predicted_speedup']:.3f} "
                     f"| x{p['measured_speedup']:.3f} | {100 * p['prediction_error']:+.1f}% | {p['ppl']:.2f} | {d['attn']} / {d['mlp']} |")
    for f in result["fixed"]:
        error = f["predicted_speedup"] / f["measured_speedup"] - 1
        lines.append(f"| {f['name']} (cosine) | – | x{f['predicted_speedup']:.3f} | x{f['measured_speedup']:.3f} | "
                     f"{100 * error:+.1f}% | {f['ppl']:.2f} | {f['attn']} / {f['mlp']} |")
    return "\n".join(lines) + "\n"


def plot(result: dict, path: Path) -> Path:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for kind, color in (("Attn", COLORS["attn"]), ("Mlp", COLORS["mlp"]), ("Block", COLORS["block"])):
        rows = [f for f in result["fixed"] if f["name"].startswith(kind)]
        ax.plot([f["measured_speedup"] for f in rows], [f["ppl"] for f in rows], "o-", color=color, ms=4,
                label=f"{kind}-k (paper, cosine)")
    for quality, marker in (("scores", "*"), ("loss", "P")):
        plans = [p for p in result["plans"] if p["quality"] == quality]
        if plans:
            ax.scatter([p["measured_speedup"] for p in plans], [p["ppl"] for p in plans], marker=marker, s=120,
                       color=COLORS["joint"], label=f"plan for target ({quality})", zorder=3)
    for p in result["plans"]:
        ax.annotate(f"x{p['target_speedup']:.1f}", (p["measured_speedup"], p["ppl"]), textcoords="offset points",
                    xytext=(5, 4), fontsize=8)
    ax.axhline(result["baseline_ppl"], color="#999999", lw=1, label="unpruned")
    ax.set_yscale("log")
    ax.set_xlabel("measured speed-up (generate, CPU)")
    ax.set_ylabel("held-out WikiText-2 perplexity")
    ax.set_title(f"{result['model']}: plans for a speed target vs fixed-k drops", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, frameon=False)
    fig.tight_layout()
    return save_figure(fig, path)


if __name__ == "__main__":
    main()
