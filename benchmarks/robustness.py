"""Are importance scores robust to the calibration data and the number of samples? (He et al. Figs. 3 and 10.)

Runs `score_robustness` on the embedded models: three calibration sources of different kinds of text, the bundled
C4 sample (web), WikiText-2 (Wikipedia) and LAMBADA (novels, the bundled `lambada_test.jsonl` passed as a plain
file, the way a user names their own data), each at nested sample counts 1, 2, 4, ..., 256 of 256 tokens (one
scoring pass per source: the smaller sets are prefixes of the largest). Writes, per model,
`benchmarks/results/robustness_<model>.json` (the `layerdrop score --robustness` JSON plus how the answer changes
under the other metrics, relative_magnitude among them) and `robustness_<model>_by_source.png` /
`robustness_<model>_by_samples.png`, and prints a Markdown summary. What a different selection would cost: the
held-out WikiText-2 and C4 perplexity (first --ppl-tokens tokens, windows of 512) of the model with the k lowest
attention layers dropped, for every distinct Attn-k selection the settings made.

    python benchmarks/robustness.py [--models smollm2-135m gemma3-270m] [--sample-counts 1 2 4 ... 256]
                                    [--seq-len 256] [--batch-size 4] [--tiny]
    python benchmarks/robustness.py --redraw benchmarks/results/robustness_smollm2-135m.json   (no scoring)
    python benchmarks/robustness.py --perplexity benchmarks/results/robustness_smollm2-135m.json   (adds perplexity)
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "benchmarks" / "results"
LAMBADA = "layerdrop_patch/data/lambada/lambada_test.jsonl"
KINDS = ("attn", "mlp", "block")


def _summary(result) -> dict:
    """Per kind: worst agreement between sources at the largest count and where each source's set settles."""
    n = result.counts[-1]
    out = {}
    for kind in KINDS:
        across = result.across_sources(kind).get(n, {})
        out[kind] = {"k": result.k(kind), "sources_spearman_min": across.get("spearman_min"),
                     "sources_overlap_min": across.get("overlap_min"), "stable_from": result.stable_from(kind)}
    return out


def _markdown(result) -> str:
    counts, labels = result.counts, result.labels
    lines = [f"### {result.model_name} ({result.metric}; {', '.join(labels)}; samples of {result.config.seq_len} "
             f"tokens)", "", "Sources against each other (worst pair) at each sample count:", "",
             "| samples | " + " | ".join(f"{k} ρ" for k in KINDS) + " | "
             + " | ".join(f"{k} overlap@{result.k(k)}" for k in KINDS) + " |",
             "|---:|" + "---:|" * (2 * len(KINDS))]
    across = {k: result.across_sources(k) for k in KINDS}
    for n in counts:
        rows = [across[k][n] for k in KINDS]
        lines.append(f"| {n} | " + " | ".join(f"{r['spearman_min']:.3f}" for r in rows) + " | "
                     + " | ".join(f"{r['overlap_min']}/{r['k']}" for r in rows) + " |")
    lines += ["", f"Each source against itself at {counts[-1]} samples (ρ / overlap@k):", "",
              "| samples | " + " | ".join(f"{label} {k}" for label in labels for k in KINDS) + " |",
              "|---:|" + "---:|" * (len(labels) * len(KINDS))]
    within = {k: result.across_counts(k) for k in KINDS}
    for n in counts[:-1]:
        cells = [f"{within[k][label][n]['spearman']:.2f} / {within[k][label][n]['overlap']}"
                 for label in labels for k in KINDS]
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    lines += ["", "Lowest-k set equal to the largest count's from (samples): " + "; ".join(
        f"{k}-{result.k(k)}: " + ", ".join(f"{label} {v}" for label, v in result.stable_from(k).items())
        for k in KINDS)]
    return "\n".join(lines)


def by_k(result, kind: str = "attn") -> dict:
    """The attention answer for every k up to half the layers (same scores, no re-scoring): whether the sources
    agree and from how many samples each source's set settles depends on where the k-th score sits."""
    out = {}
    for k in range(1, result.num_layers // 2 + 1):
        r = result.with_metric(result.metric)
        r.config = r.config.replace(**{f"k_{kind}": k})
        within = r.across_counts(kind)
        out[str(k)] = {"sources_overlap_min": r.across_sources(kind).get(result.counts[-1], {}).get("overlap_min"),
                       "stable_from": r.stable_from(kind),
                       "overlap_min_vs_largest": {str(n): min(within[label][n]["overlap"] for label in r.labels)
                                                  for n in r.counts}}
    return out


def selection_perplexity(result, model, tok, tokens: int, kind: str = "attn") -> list[dict]:
    """Held-out WikiText-2 and C4 perplexity of the model with the k lowest `kind` sublayers dropped, for every
    distinct selection the settings made (and with nothing dropped): what a different choice costs."""
    import copy

    from layerdrop_patch import DropConfig, apply_drop
    from layerdrop_patch.evaluation import perplexity

    chosen: dict[tuple[int, ...], list[str]] = {(): ["nothing dropped"]}
    for label in result.labels:
        for n in result.counts:
            chosen.setdefault(tuple(result.lowest(kind, (label, n))), []).append(f"{label}@{n}")
    rows = []
    for layers, settings in chosen.items():
        pruned = copy.deepcopy(model)
        if layers:
            apply_drop(pruned, DropConfig(**{"attn" if kind == "attn" else "mlp": list(layers)}))
        ppl = {data: perplexity(pruned, tok, data, seq_len=512, stride=512, max_tokens=tokens, progress=False)
               for data in ("wikitext2", "c4")}
        rows.append({"dropped": list(layers), "chosen_by": settings, "ppl_wikitext2": round(ppl["wikitext2"], 3),
                     "ppl_c4": round(ppl["c4"], 3)})
        print(f"  {kind} {list(layers)}: WikiText-2 {ppl['wikitext2']:.2f}, C4 {ppl['c4']:.2f} "
              f"(chosen by {', '.join(settings)})", flush=True)
    return rows


def add_perplexity(path: Path, tokens: int) -> None:
    """Perplexity of each distinct Attn-k selection of a saved result (and the per-k summary), into its JSON."""
    import json

    from layerdrop_patch.files import atomic_write_json
    from layerdrop_patch.models import load_model
    from layerdrop_patch.scoring.robustness import RobustnessResult

    data = json.loads(path.read_text())
    result = RobustnessResult.from_dict(data, str(path))
    model, tok = load_model(result.model_name)
    start = time.perf_counter()
    rows = selection_perplexity(result, model, tok, tokens)
    data["benchmark"]["perplexity"] = {"tokens": tokens, "seq_len": 512, "kind": "attn", "k": result.k("attn"),
                                       "wall_s": round(time.perf_counter() - start, 1), "selections": rows}
    data["benchmark"]["attn_by_k"] = by_k(result)
    atomic_write_json(path, data)


def redraw(path: Path) -> None:
    """Figures and summary again from a saved JSON (no scoring)."""
    import json

    from layerdrop_patch.scoring.robustness import RobustnessResult
    from layerdrop_patch.scoring.robustness_plots import plot_scores_by_samples, plot_scores_by_source

    result = RobustnessResult.from_dict(json.loads(path.read_text()), str(path))
    plot_scores_by_source(result, path.with_name(f"{path.stem}_by_source.png"))
    plot_scores_by_samples(result, path.with_name(f"{path.stem}_by_samples.png"))
    print(_markdown(result), "\n", flush=True)


def run_model(name: str, args: argparse.Namespace) -> dict:
    from layerdrop_patch.files import atomic_write_json
    from layerdrop_patch.scoring import METRICS, RobustnessConfig, score_robustness
    from layerdrop_patch.scoring.robustness_plots import plot_scores_by_samples, plot_scores_by_source

    if args.tiny:
        from layerdrop_patch.evaluation.toy import byte_tokenizer, tiny_llama

        model, tok = tiny_llama(num_layers=8), byte_tokenizer()
    else:
        from layerdrop_patch.models import load_model

        model, tok = load_model(name)
    config = RobustnessConfig(sources=args.sources, sample_counts=args.sample_counts, seq_len=args.seq_len,
                              batch_size=args.batch_size, seed=args.seed)
    start = time.perf_counter()
    result = score_robustness(model, tok, config, model_name=name, progress=not args.quiet)
    wall = time.perf_counter() - start
    data = result.to_dict()
    data["benchmark"] = {
        "command": "python " + " ".join(sys.argv), "wall_s": round(wall, 1), "torch_threads": torch.get_num_threads(),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads, fp32, CPU",
        "by_metric": {metric: _summary(result.with_metric(metric)) for metric in METRICS},
        "attn_by_k": by_k(result),
    }
    if args.ppl_tokens:
        start = time.perf_counter()
        rows = selection_perplexity(result, model, tok, args.ppl_tokens)
        data["benchmark"]["perplexity"] = {"tokens": args.ppl_tokens, "seq_len": 512, "kind": "attn",
                                           "k": result.k("attn"), "wall_s": round(time.perf_counter() - start, 1),
                                           "selections": rows}
    stem = f"robustness_{name}" + ("_tiny" if args.tiny else "")
    out = Path(args.out)
    atomic_write_json(out / f"{stem}.json", data)
    plot_scores_by_source(result, out / f"{stem}_by_source.png")
    plot_scores_by_samples(result, out / f"{stem}_by_samples.png")
    print(_markdown(result), flush=True)
    print(f"\n{name}: {wall:.0f} s scoring ({', '.join(f'{k} {v:.0f} s' for k, v in result.seconds.items())}); "
          f"wrote {out / stem}.json and the two PNGs\n", flush=True)
    for metric in METRICS:
        s = data["benchmark"]["by_metric"][metric]["attn"]
        print(f"  {metric:>20}: attn-{s['k']} sources min ρ {s['sources_spearman_min']:.3f}, min overlap "
              f"{s['sources_overlap_min']}/{s['k']}, stable from {s['stable_from']}", flush=True)
    return data


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["smollm2-135m", "gemma3-270m"])
    p.add_argument("--sources", nargs="+", default=["c4", "wikitext2", LAMBADA])
    p.add_argument("--sample-counts", nargs="+", type=int, default=[1, 2, 4, 8, 16, 32, 64, 128, 256])
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(RESULTS))
    p.add_argument("--tiny", action="store_true", help="a tiny random model and the byte tokenizer (smoke test)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--redraw", nargs="+", type=Path, help="saved robustness_<model>.json files: draw and print again")
    p.add_argument("--ppl-tokens", type=int, default=4096,
                   help="held-out tokens for the perplexity of each distinct Attn-k selection (0: skip)")
    p.add_argument("--perplexity", nargs="+", type=Path, help="saved robustness_<model>.json files: add the "
                   "perplexity of each distinct Attn-k selection (no scoring)")
    args = p.parse_args()
    if args.perplexity:
        for path in args.perplexity:
            add_perplexity(path, args.ppl_tokens)
        return
    if args.redraw:
        for path in args.redraw:
            redraw(path)
        return
    for name in args.models:
        run_model(name, args)


if __name__ == "__main__":
    main()
