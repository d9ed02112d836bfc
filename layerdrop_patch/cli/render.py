"""Rich tables for results: per-layer scores, a drop, evaluation comparisons, speed comparisons, the demo.

Why separate from the commands: the demo (a library function) prints the same tables the CLI does, and keeping
presentation apart keeps each command a few lines of option parsing plus one library call.
"""

from __future__ import annotations

import math
from typing import Any

from rich.markup import escape
from rich.table import Table

from layerdrop_patch.files import human_bytes


def ratio(new: float | None, old: float | None, fmt: str = "{:.2f}x") -> str:
    if not new or not old:
        return "–"
    return fmt.format(new / old)


def _f(v: Any, digits: int = 4, scale: float = 1.0) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    return f"{v * scale:.{digits}f}"


def scores_table(scores: Any, lowest: int | None = None) -> Table:
    """One row per layer; the `lowest` (default: a sixth of the layers) most redundant attention and MLP
    sublayers are highlighted."""
    lowest = lowest or max(1, scores.num_layers // 6)
    table = Table(title=escape(f"importance ({scores.metric}; lower = more redundant) of {scores.model_name or 'model'}"))
    for col in ("layer", "attn", "mlp", "block"):
        table.add_column(col, justify="right")
    marks = {}
    for kind in ("attn", "mlp"):
        vals = [(v, i) for i, v in enumerate(scores.scores_for(kind)) if not math.isnan(v)]
        marks[kind] = {i for _, i in sorted(vals)[:lowest]}
    for i in range(scores.num_layers):
        cells = []
        for kind in ("attn", "mlp", "block"):
            text = _f(scores.scores_for(kind)[i])
            cells.append(f"[bold green]{text}[/]" if i in marks.get(kind, ()) else text)
        table.add_row(str(i), *cells)
    table.caption = f"green: the {lowest} lowest attention / MLP scores"
    return table


def drop_table(result: dict) -> Table:
    table = Table(title=f"dropped: {result['dropped']}")
    table.add_column("")
    table.add_column("value", justify="right")
    table.add_row("sublayers dropped", str(result["num_dropped"]))
    table.add_row("attention layers kept (KV-cache layers)", f"{result['kept_attention_layers']}/{result['num_layers']}")
    table.add_row("parameter bytes before", human_bytes(result["parameter_bytes_before"]))
    table.add_row("parameter bytes after", human_bytes(result["parameter_bytes_after"]))
    table.add_row("checkpoint weight bytes", human_bytes(result["checkpoint_bytes"]))
    return table


def eval_table(columns: dict[str, dict], title: str = "evaluation", paired: dict | None = None) -> Table:
    """Tasks (accuracy % ± lm-eval's stderr), average and perplexity, one column per model. For exactly two
    models a Δ column and, given `paired` (`evaluation.paired.compare_evaluations`), the paired test's verdict:
    a difference is called only when the test says so."""
    names = list(columns)
    table = Table(title=escape(title))
    table.add_column("task")
    for name in names:
        table.add_column(escape(name), justify="right")
    delta = len(names) == 2
    if delta:
        table.add_column("Δ", justify="right")
        if paired:
            table.add_column("paired test", justify="left")
    tasks: list[str] = []
    for res in columns.values():
        tasks += [t for t in res["tasks"] if t not in tasks]

    def verdict(result: dict | None) -> str:
        if not result:
            return "–"
        def said(test: dict) -> str:
            word = "n.s." if test["verdict"] == "no significant difference" else escape(test["verdict"])
            return f"p={test['p_value']:.3g}: {word}"
        blocks = result.get("blocks")  # perplexity: the test over runs of neighbouring windows, when there is one
        return said(result) + (f"; {blocks['block']}-window blocks: {said(blocks)}" if blocks else "")

    def row(label: str, values: list, digits: int, scale: float, stderrs: list | None = None,
            test: dict | None = None) -> None:
        cells = [_f(v, digits, scale) + (f" ± {_f(e, digits, scale)}" if e is not None and v is not None else "")
                 for v, e in zip(values, stderrs or [None] * len(values))]
        if delta:
            cells.append(_f(values[1] - values[0], digits, scale) if None not in values else "–")
            if paired:
                cells.append(verdict(test))
        table.add_row(escape(label), *cells)

    for t in tasks:
        metric = next(r["tasks"][t]["metric"] for r in columns.values() if t in r["tasks"])
        n = next(r["tasks"][t].get("n") for r in columns.values() if t in r["tasks"])
        row(f"{t} ({metric}, n={n})", [r["tasks"].get(t, {}).get("value") for r in columns.values()], 1, 100.0,
            [r["tasks"].get(t, {}).get("stderr") for r in columns.values()], (paired or {}).get("tasks", {}).get(t))
    if tasks:
        row("average accuracy (%)", [r["average"] for r in columns.values()], 1, 100.0,
            test=(paired or {}).get("pooled"))
    if any(r.get("perplexity") for r in columns.values()):
        p = next(r["perplexity"] for r in columns.values() if r.get("perplexity"))
        row(f"{p['dataset']} perplexity ({p['tokens']} tok)",
            [(r.get("perplexity") or {}).get("value") for r in columns.values()], 2, 1.0,
            test=(paired or {}).get("perplexity"))
    return table


def bench_table(result: dict) -> Table:
    """One row per model: prefill and decode throughput, their speed-ups over the first model, KV-cache bytes.
    The title says which engine ran the models and the workload (results of `evaluation.bench.compare_engine`)."""
    s = result["settings"]
    engine = s.get("engine", "transformers")
    how = "generate()" if engine == "transformers" else escape(f"{s.get('engine_version') or engine} serving exports")
    threads = s.get("threads") or s.get("torch_threads")
    table = Table(title=f"{how}: batch {s['batch_size']}, prompt {s['prompt_len']}, {s['new_tokens']} new tokens, "
                        f"median of {s['repeats']} ({escape(str(s.get('device')))}, {escape(str(s.get('dtype')))}"
                        + (f", {threads} threads" if threads else "") + ")")
    served = any("format" in m for m in result["models"].values()) and engine != "transformers"
    columns = ["model"] + (["served as"] if served else []) + ["prefill tok/s", "decode tok/s", "prefill speed-up",
                                                              "decode speed-up", "KV-cache bytes", "KV ratio"]
    for col in columns:
        table.add_column(col, justify="left" if col in ("model", "served as") else "right")

    def speedup(value: float | None) -> str:
        return f"{value:.2f}x" if value else "–"

    for name, m in result["models"].items():
        r = result["ratios"][name]
        table.add_row(escape(name), *([escape(str(m.get("format", "")))] if served else []), _f(m["prefill_tok_s"], 1),
                      _f(m["decode_tok_s"], 1), speedup(r.get("prefill_speedup")), speedup(r.get("decode_speedup")),
                      human_bytes(m["kv_cache_bytes"]) if m.get("kv_cache_bytes") is not None else "–",
                      _f(r["kv_cache_ratio"], 3))
    return table


def sweep_table(rows: list[dict], kind: str) -> Table:
    table = Table(title=f"quality vs {kind} sublayers dropped")
    for col in ("dropped", "which", "average accuracy (%)", "perplexity"):
        table.add_column(col, justify="right" if col != "which" else "left")
    for r in rows:
        table.add_row(str(r["n"]), r["dropped"], _f(r.get("average"), 1, 100.0), _f(r.get("perplexity"), 2))
    return table


def before_after_table(summary: dict) -> Table:
    """The demo's table: accuracy, perplexity, tokens/s, KV-cache bytes and checkpoint bytes, before and after."""
    b, a = summary["baseline"], summary["dropped"]
    table = Table(title=f"{summary['model']}: baseline vs {summary['drop']['dropped']} dropped")
    for col in ("", "baseline", "dropped", "change"):
        table.add_column(col, justify="right" if col else "left")
    for task, res in b["eval"]["tasks"].items():
        after = a["eval"]["tasks"][task]["value"]
        table.add_row(f"{task} {res['metric']} (%, n={res['n']})", _f(res["value"], 1, 100), _f(after, 1, 100),
                      _f(after - res["value"], 1, 100))
    if b["eval"]["tasks"]:
        table.add_row("average accuracy (%)", _f(b["eval"]["average"], 1, 100), _f(a["eval"]["average"], 1, 100),
                      _f(a["eval"]["average"] - b["eval"]["average"], 1, 100))
    if b["eval"].get("perplexity"):
        pb, pa = b["eval"]["perplexity"], a["eval"]["perplexity"]
        table.add_row(f"{pb['dataset']} perplexity ({pb['tokens']} tok)", _f(pb["value"], 2), _f(pa["value"], 2),
                      ratio(pa["value"], pb["value"]))
    table.add_row("decode tokens/s", _f(b["decode_tok_s"], 1), _f(a["decode_tok_s"], 1),
                  ratio(a["decode_tok_s"], b["decode_tok_s"]))
    table.add_row("KV-cache bytes", human_bytes(b["kv_cache_bytes"]), human_bytes(a["kv_cache_bytes"]),
                  ratio(a["kv_cache_bytes"], b["kv_cache_bytes"]))
    table.add_row("checkpoint bytes", human_bytes(b["checkpoint_bytes"]), human_bytes(a["checkpoint_bytes"]),
                  ratio(a["checkpoint_bytes"], b["checkpoint_bytes"]))
    return table


def robustness_table(result: Any) -> Table:
    """How well importance scores agree across calibration sources and sample counts, per kind: Spearman's rho
    and the overlap of the k lowest (what a user would drop). First the sources against each other at each
    count (worst pair), then each source at each count against itself at the largest count."""
    kinds, counts = ("attn", "mlp", "block"), result.counts
    ks = {kind: result.k(kind) for kind in kinds}
    table = Table(title=escape(f"score robustness ({result.metric}) of {result.model_name or 'model'}: "
                               f"{', '.join(result.labels)} x {', '.join(map(str, counts))} samples of "
                               f"{result.config.seq_len} tokens"))
    table.add_column("comparison")
    for kind in kinds:
        table.add_column(f"{kind} rho", justify="right")
    for kind in kinds:
        table.add_column(f"{kind} overlap@{ks[kind]}", justify="right")
    across = {kind: result.across_sources(kind) for kind in kinds}
    for n in counts if len(result.labels) > 1 else ():
        rows = [across[kind][n] for kind in kinds]
        table.add_row(f"sources, {n} samples (worst pair)", *[_f(r["spearman_min"], 3) for r in rows],
                      *[f"{r['overlap_min']}/{r['k']}" for r in rows])
    if len(result.labels) > 1:
        table.add_section()
    within = {kind: result.across_counts(kind) for kind in kinds}
    for label in result.labels:
        for n in counts[:-1]:
            rows = [within[kind][label][n] for kind in kinds]
            table.add_row(escape(f"{label}: {n} vs {counts[-1]} samples"), *[_f(r["spearman"], 3) for r in rows],
                          *[f"{r['overlap']}/{r['k']}" for r in rows])
    stable = {kind: result.stable_from(kind) for kind in kinds}
    table.caption = escape("lowest-k set equal to the largest count's from then on: " + "; ".join(
        f"{label} {', '.join(f'{kind}-{ks[kind]} from {stable[kind][label]}' for kind in kinds)}"
        for label in result.labels))
    return table
