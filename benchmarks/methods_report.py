"""The method benchmark's report (`benchmarks/methods.py --stages report`): Markdown tables and the plot of quality
against measured speed-up, read from the results JSON alone, so a report needs no model.

Every verdict is a paired test: perplexity window by window and, where the corpus has enough windows, over runs of
ARTICLE_WINDOWS neighbouring windows (consecutive windows share an article); accuracy by McNemar's test.
"""

from __future__ import annotations

import math
from pathlib import Path

from layerdrop_patch.evaluation.paired import ARTICLE_WINDOWS, compare_accuracy, compare_perplexity_with_blocks
from layerdrop_patch.files import save_figure
from layerdrop_patch.plotting import pyplot
from layerdrop_patch.selection.registry import SELECT_KINDS

TASKS = ["arc_easy", "piqa", "winogrande"]  # the accuracy stage's tasks, in table order


def drop_label(kind: str) -> str:
    """The drop's name as the paper writes it: Attn, MLP, Block, Joint."""
    return kind.upper() if kind == "mlp" else kind.title()


def recovery_name(key: str, loss: str, steps: int, lr: float) -> str:
    """Recovery runs with other settings sit beside each other instead of being skipped as done."""
    return f"{key}+lora-{loss}@{steps} lr {lr:g}"


def _fmt(value: float) -> str:
    return f"{value:.2f}" if value < 1000 else f"{value:.0f}"


def _versus_cosine(rows: dict, key: str, field: str) -> str:
    """The paired verdict against the same drop's cosine row, and the block verdict where there are windows enough
    (`compare_perplexity_with_blocks`)."""
    r = rows[key]
    cosine = rows.get(f"{r['kind']}-{r['k']}-cosine")
    if not cosine or cosine is r or field not in cosine or field not in r:
        return "–"
    test = compare_perplexity_with_blocks(r[field], cosine[field], names=(r["method"], "cosine"))

    def verdict(result: dict) -> str:
        return "n.s." if result["verdict"].startswith("no ") else ("better" if result["verdict"].startswith(
            r["method"]) else "worse")
    text = verdict(test) + f" (x{test['difference']:.2f}, p={test['p_value']:.2g}"
    if "blocks" in test:
        blocks = test["blocks"]
        changed = "" if verdict(blocks) == verdict(test) else f"{verdict(blocks)}, "
        text += f"; {blocks['block']}-window blocks: {changed}p={blocks['p_value']:.2g}"
    return text + ")"


def _per_document(result: dict) -> dict:
    """Every task's documents in one pool, so McNemar compares two models over all paired documents at once."""
    return {f"{task}:{doc}": hit for task in TASKS for doc, hit in result["tasks"][task]["per_doc"].items()}


def _table_order(rows: dict, methods: list[str], keys) -> list[str]:
    """The unpruned row first, then by kind, k and method: runs add rows in any order."""
    def rank(key: str) -> tuple:
        if key == "baseline":
            return (-1, 0, 0)
        r = rows[key]
        return (SELECT_KINDS.index(r["kind"]), r["k"], methods.index(r["method"]))

    return sorted(keys, key=rank)


def report(args, state, model_name: str, methods: list[str]) -> str:
    """The Markdown tables; `methods` orders the rows of one drop (the benchmark's method list)."""
    rows, speedups = state["rows"], state["speed"]
    base = rows["baseline"]
    lines = [f"### {model_name}: every kind x k x method, screened on {args.screen_tokens:,} held-out WikiText-2 "
             f"tokens (unpruned {_fmt(base['screen_wikitext2']['perplexity'])})", "",
             "| drop | method | WikiText-2 (screen) | vs cosine (paired) | speed-up | attention / MLP dropped |",
             "|---|---|---:|---|---:|---|"]
    screened = (key for key, r in rows.items() if key != "baseline" and "screen_wikitext2" in r)
    for key in _table_order(rows, methods, screened):
        r = rows[key]
        shape = speedups.get(f"{len(r['attn'])}a{len(r['mlp'])}m", {})
        lines.append(f"| {drop_label(r['kind'])}-{r['k']} | {r['method']} | "
                     f"{_fmt(r['screen_wikitext2']['perplexity'])} | {_versus_cosine(rows, key, 'screen_wikitext2')} | "
                     f"{('x%.2f' % shape['total_speedup']) if shape else '–'} | {r['attn']} / {r['mlp']} |")
    confirmed = _table_order(rows, methods, (key for key, r in rows.items()
                                             if r.get("ppl_c4", {}).get("max_tokens") == args.ppl_tokens))
    if confirmed:
        lines += ["", f"Headline rows on {args.ppl_tokens:,} held-out tokens of each corpus (paired bootstrap over "
                  f"512-token windows, and over runs of {ARTICLE_WINDOWS} consecutive windows):", "",
                  "| drop | method | WikiText-2 | C4 | vs cosine (paired, WikiText-2) | vs cosine (paired, C4) |",
                  "|---|---|---:|---:|---|---|"]
        for key in confirmed:
            r = rows[key]
            name = "unpruned" if key == "baseline" else f"{drop_label(r['kind'])}-{r['k']}"
            lines.append(f"| {name} | {r['method']} | {_fmt(r['ppl_wikitext2']['perplexity'])} | "
                         f"{_fmt(r['ppl_c4']['perplexity'])} | "
                         f"{_versus_cosine(rows, key, 'ppl_wikitext2')} | {_versus_cosine(rows, key, 'ppl_c4')} |")
    if state["recovery"]:
        lines += ["", "| recovered | loss | steps | lr | WikiText-2 | C4 | vs LM-loss LoRA (paired) "
                  "| x the control (WikiText-2 / C4) |", "|---|---|---:|---:|---:|---:|---|---:|"]
        recovered = list(state["recovery"].values())
        drops = list(dict.fromkeys(r["from"] for r in recovered))  # in first-recovered order
        for r in sorted(recovered, key=lambda r: (r["from"] == "baseline", drops.index(r["from"]))):  # control last
            other = state["recovery"].get(recovery_name(r["from"], "lm", r["steps"], r["lr"]))
            # The same LoRA on the unpruned model: what training alone gains, so the fair yardstick for recovery.
            control = state["recovery"].get(recovery_name("baseline", "lm", r["steps"], r["lr"]))
            ratio = "–" if control is None or r["from"] == "baseline" else " / ".join(
                f"x{r[c]['perplexity'] / control[c]['perplexity']:.2f}" for c in ("ppl_wikitext2", "ppl_c4"))
            verdict = "–"
            if r["loss"] != "lm" and other:
                test = compare_perplexity_with_blocks(r["ppl_wikitext2"], other["ppl_wikitext2"],
                                                      names=(r["loss"], "lm"))
                verdict = f"{test['verdict']} (p={test['p_value']:.2g}"
                if "blocks" in test:
                    blocks = test["blocks"]
                    verdict += f"; {blocks['block']}-window blocks: {blocks['verdict']}, p={blocks['p_value']:.2g}"
                verdict += ")"
            source = "unpruned (control)" if r["from"] == "baseline" else r["from"]
            lines.append(f"| {source} | {r['loss']} | {r['steps']} | {r['lr']:g} | "
                         f"{_fmt(r['ppl_wikitext2']['perplexity'])} | "
                         f"{_fmt(r['ppl_c4']['perplexity'])} | {verdict} | {ratio} |")
    if state["accuracy"]:
        acc = state["accuracy"]
        lines += ["", "| model | " + " | ".join(TASKS) + " | average | vs cosine (paired McNemar) |",
                  "|---|" + "---:|" * (len(TASKS) + 1) + "---|"]
        for key in _table_order(rows, methods, acc):
            result = acc[key]
            cells = [f"{100 * result['tasks'][t]['value']:.1f} ± {100 * (result['tasks'][t]['stderr'] or 0):.1f}"
                     for t in TASKS]
            verdict = "–"
            kind = rows.get(key, {}).get("kind")
            cosine = acc.get(f"{kind}-8-cosine")
            if cosine is not None and key != f"{kind}-8-cosine":
                test = compare_accuracy(_per_document(result), _per_document(cosine),
                                        names=(rows[key]["method"], "cosine"))
                verdict = f"{test.verdict} (Δ {100 * test.difference:+.1f}, p={test.p_value:.2g})"
            lines.append(f"| {key} | " + " | ".join(cells) + f" | {100 * result['average']:.1f} | {verdict} |")
    return "\n".join(lines) + "\n"


def plot(state, model_name: str, out: Path) -> Path:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    points = []
    for key, r in state["rows"].items():
        shape = state["speed"].get(f"{len(r['attn'])}a{len(r['mlp'])}m")
        if key == "baseline" or not shape:
            continue
        points.append((shape["total_speedup"], r["screen_wikitext2"]["perplexity"], r["method"]))
    methods = sorted({m for _, _, m in points})
    cmap = plt.get_cmap("tab20")
    for i, method in enumerate(methods):
        xs = [x for x, _, m in points if m == method]
        ys = [y for _, y, m in points if m == method]
        ax.scatter(xs, ys, s=22, color=cmap(i % 20), label=method, alpha=0.85)
    front, best = [], math.inf
    # fastest first, and at one speed (rows of one shape) the best first: keep points better than all faster ones
    for x, y, _ in sorted(points, key=lambda p: (-p[0], p[1])):
        if y < best:
            front.append((x, y))
            best = y
    front.sort()
    ax.plot([x for x, _ in front], [y for _, y in front], color="black", lw=1.2, ls="--", label="Pareto front")
    ax.axhline(state["rows"]["baseline"]["screen_wikitext2"]["perplexity"], color="#999999", lw=1, label="unpruned")
    ax.set_yscale("log")
    ax.set_xlabel("measured speed-up (generate, batch 1, 128 + 64 tokens, CPU)")
    ax.set_ylabel("held-out WikiText-2 perplexity")
    ax.set_title(f"{model_name}: quality vs speed-up by selection method", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2, frameon=False)
    fig.tight_layout()
    return save_figure(fig, out)
