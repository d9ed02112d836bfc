"""Which selection method loses least at equal speed-up, by how much, and how sure are we? (issue 16)

Stages, each resumable (every finished row is written to the results JSON at once, and a rerun skips it):
  1. grid: for every kind (attn, mlp, block, joint), k and selection method, the drop it chooses and its
     perplexity on the first `--screen-tokens` held-out WikiText-2 tokens (never calibration tokens;
     `layerdrop_patch.corpora`); a drop two methods agree on is measured once; greedy orders are saved after
     every step and resumed (`choose_drop(resume=, on_step=)`), so an interruption or a larger k costs no
     step twice;
  2. confirm: the headline rows (unpruned; per `--confirm-kinds` at k = 8 the paper's cosine and the
     best-screened method; or the rows `--confirm-rows` names) on `--ppl-tokens` held-out tokens of WikiText-2
     and of C4, paired tests against cosine;
  3. speed: the measured speed-up of each drop shape (number of attention and MLP sublayers dropped), through
     generate() with the KV cache, baseline and pruned interleaved in one run; rows of one shape share it;
  4. accuracy (k = 8, `--accuracy-kinds`): tasks on `--docs` documents each, with lm-eval's stderr, for the
     unpruned model, the paper's cosine and the best confirmed method (or the rows `--accuracy-rows` names), and a
     paired McNemar test of each against cosine;
  5. recovery: the best confirmed k = 8 drop per `--recover-kinds` (Attn-8 and Block-8 by default) recovered with
     LoRA on the LM loss and with LoRA distillation from the unpruned model, same steps and data (or the rows
     `--recover-rows` names; `baseline` there is the control: the same LoRA on the unpruned model);
  6. report: the tables (Markdown) and a plot of quality against measured speed-up with the Pareto front
     (`methods_report.py`; from the JSON alone, no model loaded).

Why a screen: on a 2-core CPU one 64k-token perplexity costs ~6 minutes per corpus, and the grid has ~100 drops
per model; the screen ranks them, the confirm stage measures the rows a conclusion rests on with full power.

    python benchmarks/methods.py --model smollm2-135m
    python benchmarks/methods.py --model gemma3-270m --ks 8 --stages grid confirm speed report
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from layerdrop_patch import DropConfig, apply_drop, load_model  # noqa: E402
from layerdrop_patch.evaluation import EvaluationConfig, compare_generate, evaluate_model  # noqa: E402
from layerdrop_patch.evaluation.perplexity import perplexity  # noqa: E402
from layerdrop_patch.files import atomic_write_json, atomic_write_text  # noqa: E402
from layerdrop_patch.recover.distill import LOSSES  # noqa: E402
from layerdrop_patch.scoring import CalibrationConfig, compute_importance  # noqa: E402
from layerdrop_patch.selection import METHODS as METHODS_REGISTRY, SelectionConfig, choose_drop  # noqa: E402
from layerdrop_patch.selection.registry import SELECT_KINDS, to_drop_config  # noqa: E402
from methods_report import TASKS, plot, recovery_name, report  # noqa: E402  (beside this script)

RESULTS = Path(__file__).resolve().parent / "results"
METHODS = {  # name -> SelectionConfig fields (the paper's one-shot cosine is the baseline to beat)
    "cosine": {"method": "importance", "metric": "cosine"},
    "angular": {"method": "importance", "metric": "angular"},
    "no-residual": {"method": "importance", "metric": "cosine_no_residual"},
    "relative-magnitude": {"method": "importance", "metric": "relative_magnitude"},
    "iterative": {"method": "iterative"},
    "greedy-lm": {"method": "greedy", "objective": "lm"},
    "greedy-kl": {"method": "greedy", "objective": "kl"},
    "budget": {"method": "budget", "cost": "params"},
    "random": {"method": "random", "seed": 0},
    "reverse": {"method": "reverse"},
    "last-k": {"method": "last-k"},
}
STEPWISE = {"iterative", "greedy-lm", "greedy-kl"}  # their Attn-12 order starts with their Attn-4 and Attn-8


def _load_state(path: Path) -> dict:
    if path.is_file():
        state = json.loads(path.read_text())
        for row in state["rows"].values():  # results written before `max_tokens` was recorded
            for field in ("ppl_wikitext2", "ppl_c4"):
                if field in row and "max_tokens" not in row[field]:
                    row[field]["max_tokens"] = 512 * len(row[field]["window_nll"])
        for r in state["recovery"].values():  # rows written before the lr was recorded were all trained at 1e-3
            r.setdefault("lr", 1e-3)
        state["recovery"] = {recovery_name(r["from"], r["loss"], r["steps"], r["lr"]): r
                             for r in state["recovery"].values()}
        return state
    return {"rows": {}, "speed": {}, "accuracy": {}, "recovery": {}}


def _save(path: Path, state: dict) -> None:
    atomic_write_json(path, state)


def _ppl(model, tok, dataset: str, tokens: int) -> dict:
    d = perplexity(model, tok, dataset, seq_len=512, stride=512, max_tokens=tokens, progress=False,
                   return_details=True)
    return {"max_tokens": tokens, **{k: d[k] for k in ("perplexity", "scored_tokens", "window_nll", "window_tokens")}}


def _prefix(result: dict, tokens: int) -> dict | None:
    """The first `tokens` of a longer run: windows are disjoint and in order, so a prefix is exactly a shorter run."""
    n = tokens // 512
    if len(result["window_nll"]) < n:
        return None
    nll, count = result["window_nll"][:n], result["window_tokens"][:n]
    return {"max_tokens": tokens, "perplexity": math.exp(sum(nll) / sum(count)), "scored_tokens": sum(count),
            "window_nll": nll, "window_tokens": count}


def _same_drop(rows: dict, row: dict) -> list[str]:
    """The keys of the rows that drop exactly what `row` drops: methods often agree (Joint-k often chooses Attn-k's
    drop), and every stage measures a drop once."""
    return [key for key, other in rows.items() if (other["attn"], other["mlp"]) == (row["attn"], row["mlp"])]


def _screen(model, tok, row: dict, rows: dict, tokens: int) -> dict:
    """WikiText-2 perplexity on the first `tokens` held-out tokens; a drop already measured is not measured again."""
    for other in [row, *(rows[key] for key in _same_drop(rows, row))]:
        for field in ("screen_wikitext2", "ppl_wikitext2"):
            if field in other and (found := _prefix(other[field], tokens)):
                return found
    return _ppl(_pruned(model, row), tok, "wikitext2", tokens)


def _pruned(model, row: dict):
    return model if not (row["attn"] or row["mlp"]) else apply_drop(copy.deepcopy(model),
                                                                    DropConfig(attn=row["attn"], mlp=row["mlp"]))


def grid(args, model, tok, calibration, scores, state, path) -> None:
    """Every kind x k x method, screened on `--screen-tokens` held-out WikiText-2 tokens."""
    rows = state["rows"]
    rows.setdefault("baseline", {"kind": "none", "k": 0, "method": "none", "attn": [], "mlp": []})
    for kind in args.kinds:
        for k in args.ks:
            for name in args.methods:
                key = f"{kind}-{k}-{name}"
                if (name == "last-k" and kind == "joint") or (name == "budget" and kind != "joint"):
                    continue
                if key not in rows:
                    rows[key] = _select(args, model, calibration, scores, state, path, kind, k, name)
                    _save(path, state)
    for key, row in rows.items():
        if "screen_wikitext2" not in row:
            start = time.perf_counter()
            row["screen_wikitext2"] = _screen(model, tok, row, rows, args.screen_tokens)
            _save(path, state)
            print(f"{key:28s} attn {row['attn']} mlp {row['mlp']}: WikiText-2 "
                  f"{row['screen_wikitext2']['perplexity']:.2f} ({time.perf_counter() - start:.0f} s)", flush=True)


def _select(args, model, calibration, scores, state, path, kind: str, k: int, name: str) -> dict:
    fields = dict(METHODS[name])
    if name.startswith("greedy"):
        fields["shortlist"] = args.greedy_shortlist
    start = time.perf_counter()
    if name in STEPWISE:  # one run to the largest k; each k is a prefix of its order
        orders = state.setdefault("orders", {})
        # an order from a run with smaller --ks is too short for this k: extend it (never truncate silently)
        saved = orders.get(f"{kind}-{name}", {"history": [], "seconds": 0.0})
        if len(saved["history"]) < k:
            config = SelectionConfig(kind=kind, n=max(k, *args.ks), **fields)
            resumable = METHODS_REGISTRY[config.method].resumable

            def record(history: list) -> None:  # after every greedy step: an interruption loses at most one
                orders[f"{kind}-{name}"] = {"history": history,
                                            "seconds": round(saved["seconds"] + time.perf_counter() - start, 1)}
                _save(path, state)
            # greedy goes on from the saved (perhaps partial) order, not from scratch; iterative starts again
            resume = saved["history"] if saved["history"] and resumable else None
            record(choose_drop(config, scores=scores, model=model, calibration=calibration, resume=resume,
                               on_step=record if resumable else None, progress=True).history)
        history = orders[f"{kind}-{name}"]["history"][:k]
        cfg = to_drop_config([(h["kind"], h["layer"]) for h in history], {"attn": [], "mlp": []})
    else:
        if name == "budget":  # the parameter share of the paper's Joint-k, allocated by score per weight
            fields["ratio"] = state["rows"][f"joint-{k}-cosine"]["param_share"]
        else:
            fields["n"] = k
        cfg = choose_drop(SelectionConfig(kind=kind, **fields), scores=scores, model=model,
                          calibration=calibration, progress=False).drop_config
    seconds = time.perf_counter() - start
    pruned = _pruned(model, {"attn": cfg.attn, "mlp": cfg.mlp})
    removed = sum(p.numel() for p in model.parameters()) - sum(p.numel() for p in pruned.parameters())
    return {"kind": kind, "k": k, "method": name, "attn": cfg.attn, "mlp": cfg.mlp,
            "select_seconds": round(seconds, 1), "param_share": removed / _droppable_params(model)}


def _best(rows: dict, kind: str, k: int, field: str = "screen_wikitext2") -> str | None:
    candidates = [key for key, r in rows.items() if r["kind"] == kind and r["k"] == k and field in r]
    return min(candidates, key=lambda key: rows[key][field]["perplexity"]) if candidates else None


def confirm(args, model, tok, state, path) -> None:
    """The headline rows on `--ppl-tokens` of WikiText-2 and C4: unpruned, and per kind (`--confirm-kinds`) at k=8
    the paper's cosine and the best-screened method."""
    rows = state["rows"]
    headline = ["baseline"] + [key for kind in args.confirm_kinds
                               for key in dict.fromkeys([f"{kind}-8-cosine", _best(rows, kind, 8)]) if key in rows]
    keys = args.confirm_rows or headline
    for key in keys:
        row = rows[key]
        for dataset in ("wikitext2", "c4"):
            field = f"ppl_{dataset}"
            if row.get(field, {}).get("max_tokens") == args.ppl_tokens:
                continue
            twin = next((rows[o][field] for o in _same_drop(rows, row)
                         if rows[o].get(field, {}).get("max_tokens") == args.ppl_tokens), None)
            row[field] = twin or _ppl(_pruned(model, row), tok, dataset, args.ppl_tokens)
            _save(path, state)
            print(f"confirm {key:28s} {dataset}: {row[field]['perplexity']:.2f}", flush=True)


def _droppable_params(model) -> int:
    from layerdrop_patch.selection.budget import unit_costs

    return int(sum(unit_costs(model, "params").values()))


def speed(args, model, tok, state, path) -> None:
    for key, row in state["rows"].items():
        shape = f"{len(row['attn'])}a{len(row['mlp'])}m"
        if shape in state["speed"] or key == "baseline":
            continue
        result = compare_generate({"baseline": model, "pruned": _pruned(model, row)}, tok, batch_size=1, prompt_len=128,
                                  new_tokens=64, repeats=args.speed_repeats, measure_memory=False, progress=False)
        state["speed"][shape] = {**result["ratios"]["pruned"], "from": key}
        _save(path, state)
        print(f"speed {shape}: total x{result['ratios']['pruned']['total_speedup']:.3f}", flush=True)


def accuracy(args, model, tok, state, path) -> None:
    config = EvaluationConfig(tasks=TASKS, subsample=args.docs, perplexity=False)
    rows, acc = state["rows"], state["accuracy"]
    headline = ["baseline"] + [key for kind in args.accuracy_kinds if kind in args.kinds
                               for key in dict.fromkeys([f"{kind}-8-cosine", _best(rows, kind, 8, "ppl_wikitext2")])
                               if key]
    for key in args.accuracy_rows or headline:
        if key in acc or key not in rows:
            continue
        twin = next((acc[o] for o in _same_drop(rows, rows[key]) if o in acc), None)
        acc[key] = twin or evaluate_model(_pruned(model, rows[key]), tok, config, progress=False)
        _save(path, state)
        print(f"accuracy {key}: {acc[key]['average']:.4f}", flush=True)


def recovery(args, model, tok, state, path) -> None:
    from layerdrop_patch.recover import recover_lora

    keys = args.recover_rows or [_best(state["rows"], kind, 8, "ppl_wikitext2") for kind in args.recover_kinds
                                 if kind in args.kinds]
    for key in filter(None, keys):
        for loss in args.recover_losses:
            name = recovery_name(key, loss, args.recover_steps, args.recover_lr)
            if name in state["recovery"]:
                continue
            row = state["rows"][key]
            student = _pruned(model, row)
            if student is model:  # the control: its LoRA must touch neither the teacher nor the next run's start
                student = copy.deepcopy(model)
            start = time.perf_counter()
            student, res = recover_lora(student, tok, "c4", steps=args.recover_steps, batch_size=4, seq_len=256,
                                        lr=args.recover_lr, rank=8, alpha=16, loss=loss, temperature=2.0,
                                        eval_tokens=0, teacher=None if loss == "lm" else model, progress=True)
            state["recovery"][name] = {"from": key, "loss": loss, "steps": args.recover_steps, "lr": args.recover_lr,
                                       "seconds": round(time.perf_counter() - start, 1),
                                       "final_train_loss": sum(res.losses[-10:]) / len(res.losses[-10:]),
                                       **{f"ppl_{d}": _ppl(student, tok, d, args.ppl_tokens)
                                          for d in ("wikitext2", "c4")}}
            _save(path, state)
            print(f"recovery {name}: WikiText-2 {state['recovery'][name]['ppl_wikitext2']['perplexity']:.2f}",
                  flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--kinds", nargs="+", default=list(SELECT_KINDS), choices=SELECT_KINDS)
    parser.add_argument("--ks", nargs="+", type=int, default=[4, 8, 12])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--calibration-samples", type=int, default=8)
    parser.add_argument("--calibration-seq-len", type=int, default=256)
    parser.add_argument("--screen-tokens", type=int, default=8192, help="WikiText-2 tokens per grid row")
    parser.add_argument("--ppl-tokens", type=int, default=65536, help="tokens per corpus for the headline rows")
    parser.add_argument("--confirm-kinds", nargs="+", default=["attn", "block"], choices=SELECT_KINDS,
                        help="kinds of the headline rows")
    parser.add_argument("--confirm-rows", nargs="+", metavar="ROW", help="confirm these rows (e.g. baseline "
                        "attn-8-greedy-kl) instead of the headline set, to choose the order or split the stage")
    parser.add_argument("--accuracy-kinds", nargs="+", default=["attn", "block"], choices=SELECT_KINDS)
    parser.add_argument("--accuracy-rows", nargs="+", metavar="ROW", help="evaluate these rows instead of the "
                        "headline set, e.g. to split the stage across processes")
    parser.add_argument("--recover-kinds", nargs="+", default=["attn", "block"], choices=SELECT_KINDS,
                        help="kinds whose best confirmed k = 8 drop is recovered")
    parser.add_argument("--recover-rows", nargs="+", metavar="ROW", help="recover these rows instead; 'baseline' "
                        "trains the same LoRA on the unpruned model, the control that tells recovery from adaptation "
                        "to the training text")
    parser.add_argument("--docs", type=int, default=500, help="documents per task for the accuracy stage")
    parser.add_argument("--speed-repeats", type=int, default=3)
    parser.add_argument("--greedy-shortlist", type=int, default=10,
                        help="candidates of each kind tried per greedy step")
    parser.add_argument("--recover-steps", type=int, default=100)
    parser.add_argument("--recover-lr", type=float, default=1e-3)
    parser.add_argument("--recover-losses", nargs="+", default=["lm", "distill"],
                        choices=LOSSES,
                        help="recovery objectives, each trained for the same steps on the same data")
    parser.add_argument("--stages", nargs="+", default=["grid", "confirm", "speed", "accuracy", "recovery", "report"],
                        choices=["grid", "confirm", "speed", "accuracy", "recovery", "report"])
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--results", type=Path, default=RESULTS, help="where the JSON, Markdown and PNG go")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    path = args.results / f"methods_{args.model}.json"
    state = _load_state(path)
    for option, keys in (("--confirm-rows", args.confirm_rows), ("--accuracy-rows", args.accuracy_rows),
                         ("--recover-rows", args.recover_rows)):
        unknown = [key for key in keys or () if key not in state["rows"]]
        if unknown:  # before the model loads
            parser.error(f"{option}: {', '.join(unknown)} not in {path}; screen them with the grid stage first.")
    if "report" in args.stages and "grid" not in args.stages and "screen_wikitext2" not in state["rows"].get(
            "baseline", {}):
        parser.error(f"{path} has no screened rows yet; run the grid stage first (--stages grid ...).")
    state["settings"] = {k: v for k, v in vars(args).items() if k != "stages"}
    if set(args.stages) - {"report"}:  # a report reads the JSON alone
        model, tok = load_model(args.model)
    if "grid" in args.stages:
        calibration = CalibrationConfig(n_samples=args.calibration_samples, seq_len=args.calibration_seq_len).load(tok)
        scores = compute_importance(model, calibration, progress=False)
        state["calibration"] = calibration.description
        grid(args, model, tok, calibration, scores, state, path)
    if "confirm" in args.stages:
        confirm(args, model, tok, state, path)
    if "speed" in args.stages:
        speed(args, model, tok, state, path)
    if "accuracy" in args.stages:
        accuracy(args, model, tok, state, path)
    if "recovery" in args.stages:
        recovery(args, model, tok, state, path)
    if "report" in args.stages:
        table = report(args, state, args.model, list(METHODS))
        atomic_write_text(args.results / f"methods_{args.model}.md", table)
        plot(state, args.model, args.results / f"methods_{args.model}.png")
        print(table)


if __name__ == "__main__":
    main()
