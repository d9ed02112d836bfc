"""The pipeline steps that the `layerdrop` CLI, the recipes and the demo share.

Why a module of its own: a CLI command, a recipe step and the demo all do the same few jobs (load whatever the
user named, score, choose a drop, evaluate, benchmark, measure checkpoint bytes). Each job lives here once, as
a function that takes a loaded model or plain options, writes its artifacts atomically (a temp file renamed
into place, so an interrupted run never leaves a half-written JSON or PNG that looks finished) and returns a
JSON-able summary. The CLI only parses options and prints; recipes only decide which step runs.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable

__all__ = ["atomic_write_text", "atomic_write_json", "read_checkpoint_config", "load_any", "calibration_for",
           "score_model", "choose_drop", "drop_and_save", "evaluate_model", "checkpoint_bytes", "compare_speed",
           "drop_sweep", "plot_sweep"]


# ----------------------------------------------------------------------------------------------- files
def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write `text` to `path` through a temp file in the same directory and `os.replace` (atomic on POSIX)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_json(path: str | os.PathLike, data: Any) -> Path:
    return atomic_write_text(path, json.dumps(data, indent=2, default=_json_default) + "\n")


def _json_default(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return None
    if hasattr(value, "to_dict"):
        return value.to_dict()
    return str(value)


def _atomic_png(plot_fn, path: Path, *args: Any, **kwargs: Any) -> Path:
    """Draw a plot into a temp PNG next to `path`, then rename it into place."""
    tmp = path.with_name(f".{path.stem}.partial.png")
    try:
        plot_fn(*args, path=tmp, **kwargs)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def checkpoint_bytes(path: str | os.PathLike) -> int:
    """Bytes of the weight files (safetensors / bin) in a checkpoint directory."""
    files = [p for p in Path(path).glob("*") if p.suffix in (".safetensors", ".bin") and p.is_file()]
    return sum(p.stat().st_size for p in files)


# ----------------------------------------------------------------------------------------------- loading
def read_checkpoint_config(name_or_path: str) -> dict | None:
    """config.json of a local model directory, or None for hub ids and embedded names."""
    config = Path(name_or_path) / "config.json"
    if not config.is_file():
        return None
    return json.loads(config.read_text())


def load_any(name_or_path: str, dtype: str | None = None, device_map: str | None = None):
    """(model, tokenizer) for an embedded name (`smollm2-135m`), a hub id, a plain local directory, a pruned
    checkpoint written by layerdrop-patch, or an AWQ checkpoint written by `layerdrop quantize`.

    `dtype`: None/"float32" (default on CPU), "bfloat16", "float16" or "auto" (the checkpoint's own).
    """
    import torch
    from transformers import AutoTokenizer

    from layerdrop_patch.models import load_model, resolve_model

    dtypes = {None: torch.float32, "float32": torch.float32, "bfloat16": torch.bfloat16,
              "float16": torch.float16, "auto": "auto"}
    if dtype not in dtypes:
        raise ValueError(f"dtype {dtype!r} is not one of float32, bfloat16, float16, auto.")
    kwargs: dict[str, Any] = {"dtype": dtypes[dtype]}
    if device_map:
        kwargs["device_map"] = device_map
    path = resolve_model(str(name_or_path))
    if not Path(path).exists() and (path.startswith(("/", ".", "~")) or path.count("/") > 1):
        raise FileNotFoundError(f"model directory {path} does not exist (a hub id looks like `owner/name`; the "
                                "embedded model is `smollm2-135m`).")
    config = read_checkpoint_config(path)
    if config is None and Path(path).exists():
        raise FileNotFoundError(f"{path} exists but has no config.json; pass a model directory written by "
                                "save_pretrained, a hub id, or `smollm2-135m`.")
    if config and (config.get("quantization_config") or {}).get("quant_method") == "awq":
        from layerdrop_patch.quantize import load_quantized

        kwargs.pop("dtype")
        return load_quantized(path, **kwargs), AutoTokenizer.from_pretrained(path)
    if config and config.get("drop_config"):
        from layerdrop_patch.checkpoint import from_pretrained

        return from_pretrained(path, **kwargs).eval(), AutoTokenizer.from_pretrained(path)
    try:
        return load_model(path, **kwargs)
    except OSError as err:  # transformers' "not a local folder and not a valid model identifier" & co.
        if Path(path).exists():
            raise
        raise FileNotFoundError(f"could not load {path!r}: it is not a local directory and the hub did not provide "
                                f"it ({err}). Offline? Pass a local directory or `smollm2-135m`.") from None


def calibration_for(tokenizer: Any, source: str = "c4", n_samples: int = 32, seq_len: int = 512, seed: int = 0):
    from layerdrop_patch.calibration import load_calibration

    return load_calibration(source, tokenizer, n_samples=n_samples, seq_len=seq_len, seed=seed)


# ----------------------------------------------------------------------------------------------- scoring
def score_model(model: Any, calibration: Any, out_dir: str | os.PathLike | None = None, *, metric: str = "cosine",
                batch_size: int = 1, offload: bool = False, progress: bool = True, plot_kind: str = "joint",
                model_name: str | None = None):
    """Importance scores of every sublayer; with `out_dir`, also `scores.json`, `importance.png` and
    `drop_order.png` (the order in which `plot_kind` units would be dropped). `model_name` replaces the
    model's own `_name_or_path` (for the embedded model a cache path) in the JSON and the plot titles."""
    from layerdrop_patch.plots import plot_drop_order, plot_importance
    from layerdrop_patch.scoring import compute_importance

    scores = compute_importance(model, calibration, batch_size=batch_size, metric=metric, offload=offload,
                                progress=progress)
    if model_name:
        scores.model_name = model_name
    if out_dir is not None:
        out = Path(out_dir)
        atomic_write_json(out / "scores.json", scores.to_dict())
        _atomic_png(lambda path: plot_importance(scores, path), out / "importance.png")
        _atomic_png(lambda path: plot_drop_order(scores, path, kind=plot_kind), out / "drop_order.png")
    return scores


def choose_drop(scores: Any, kind: str, *, n: int | None = None, ratio: float | None = None,
                method: str = "importance", mode: str = "one-shot", protect: Iterable[int] = (),
                keep_last: bool = False, seed: int = 0, model: Any = None, calibration: Any = None,
                metric: str = "cosine", progress: bool = True, out_dir: str | os.PathLike | None = None):
    """A DropConfig from scores (importance), a layer count (baselines) or iterative re-scoring of `model`.

    Returns (DropConfig, history or None); with `out_dir` writes `drop_config.json` (and for the iterative mode
    `drop_order_iterative.png`, the order in which units were really dropped).
    """
    from layerdrop_patch.selection import iterative_select, select

    if mode not in ("one-shot", "iterative"):
        raise ValueError(f"mode must be 'one-shot' or 'iterative', got {mode!r}")
    history = None
    if mode == "iterative":
        if method != "importance":
            raise ValueError(f"mode 'iterative' re-scores by importance; it cannot be combined with method {method!r}.")
        if model is None or calibration is None:
            raise ValueError("mode 'iterative' needs the model and calibration data to re-score after each drop.")
        cfg, history = iterative_select(model, calibration, kind, n=n, ratio=ratio, metric=metric, protect=protect,
                                        keep_last=keep_last, progress=progress, return_history=True)
    else:
        source = scores
        if source is None:
            if method == "importance":
                raise ValueError("method 'importance' needs importance scores: run `layerdrop score` first and pass "
                                 "--scores, or give calibration options so they are computed.")
            source = model.config.num_hidden_layers
        elif metric and getattr(source, "metric", metric) != metric:
            source = source.with_metric(metric)
        cfg = select(source, kind, n=n, ratio=ratio, method=method, protect=protect, keep_last=keep_last, seed=seed)
    if model is not None and cfg.base_model is None:
        cfg.base_model = getattr(model.config, "_name_or_path", None)
    if out_dir is not None:
        out = Path(out_dir)
        atomic_write_json(out / "drop_config.json", cfg.to_dict())
        if history:
            from layerdrop_patch.plots import plot_drop_order

            _atomic_png(lambda path: plot_drop_order(history, path, kind=kind,
                                                     num_layers=model.config.num_hidden_layers),
                        out / "drop_order_iterative.png")
    return cfg, history


# ----------------------------------------------------------------------------------------------- evaluation
def evaluate_model(model: Any, tokenizer: Any, *, tasks: str | list[str] | None = None, limit: int | float | None = None,
                   num_fewshot: int | None = None, batch_size: int = 8, perplexity_dataset: str | None = "wikitext2",
                   perplexity_tokens: int | None = 8192, perplexity_seq_len: int = 512, seed: int = 1234,
                   progress: bool = True) -> dict[str, Any]:
    """Task accuracies (lm-eval with the paper's settings, or `num_fewshot` for all) and a perplexity slice.

    Returns {"tasks": {task: {"metric", "value", "stderr", "n", "shots"}}, "average", "perplexity": {...}}.
    Tasks None/[] skips lm-eval; perplexity_dataset None skips perplexity.
    """
    out: dict[str, Any] = {"tasks": {}, "average": None, "perplexity": None, "settings": {}}
    if tasks:
        from layerdrop_patch.evaluation import evaluate

        result = evaluate(model, tokenizer, tasks=tasks, limit=limit, num_fewshot=num_fewshot, batch_size=batch_size,
                          seed=seed)
        out["tasks"] = {name: {"metric": s.metric, "value": s.value, "stderr": s.stderr, "n": s.n_samples,
                               "shots": s.num_fewshot} for name, s in result.scores.items()}
        out["average"] = result.average
        out["settings"] = {k: v for k, v in result.settings.items() if k != "drop_config"}
    if perplexity_dataset:
        from layerdrop_patch.evaluation.perplexity import perplexity

        dataset = Path(perplexity_dataset) if Path(perplexity_dataset).is_file() else perplexity_dataset
        details = perplexity(model, tokenizer, dataset, seq_len=perplexity_seq_len, stride=perplexity_seq_len,
                             max_tokens=perplexity_tokens, progress=progress, return_details=True)
        out["perplexity"] = {"dataset": Path(perplexity_dataset).name, "value": details["perplexity"],
                             "tokens": details["scored_tokens"], "seq_len": details["seq_len"]}
    return out


def compare_speed(models: dict[str, Any], tokenizer: Any, *, prompt_len: int = 64, new_tokens: int = 32,
                  repeats: int = 3, batch_size: int = 1, warmup: int = 1, progress: bool = True) -> dict[str, Any]:
    """Decode speed and KV-cache bytes of several models in one run (first = baseline); see `bench.compare_generate`."""
    from layerdrop_patch.bench import compare_generate

    return compare_generate(models, tokenizer, batch_size=batch_size, prompt_len=prompt_len, new_tokens=new_tokens,
                            repeats=repeats, warmup=warmup, measure_memory=False, progress=progress)


def drop_and_save(model: Any, tokenizer: Any, drop_config: Any, out_dir: str | os.PathLike, *,
                  base_model: str | None = None, scores_plot: str | os.PathLike | None = None,
                  overwrite: bool = False) -> dict[str, Any]:
    """Apply `drop_config` to `model` in place and save it as a portable checkpoint (atomic); returns the
    parameter bytes before/after, the checkpoint's weight bytes and the kept attention layers."""
    from layerdrop_patch.checkpoint import save_pretrained
    from layerdrop_patch.patch import apply_drop, kept_attention_layers, parameter_bytes

    if base_model and (drop_config.base_model is None or str(drop_config.base_model).startswith("/")):
        drop_config.base_model = base_model
    before = parameter_bytes(model)
    apply_drop(model, drop_config)
    save_pretrained(model, out_dir, tokenizer=tokenizer, overwrite=overwrite, scores_plot=scores_plot)
    return {"drop_config": drop_config.to_dict(), "dropped": drop_config.describe(),
            "num_dropped": drop_config.num_dropped, "parameter_bytes_before": before,
            "parameter_bytes_after": parameter_bytes(model), "checkpoint_bytes": checkpoint_bytes(out_dir),
            "kept_attention_layers": len(kept_attention_layers(model)), "num_layers": model.config.num_hidden_layers}


def drop_sweep(model: Any, tokenizer: Any, scores: Any, kind: str, counts: Iterable[int], *, method: str = "importance",
               progress: bool = True, **eval_kwargs: Any) -> list[dict[str, Any]]:
    """Evaluate the model after dropping each count of `kind` units (one-shot order of `scores`, or a baseline
    `method`). The model is deep-copied per count, so `model` is untouched. `eval_kwargs` go to `evaluate_model`
    (tasks, limit, perplexity_tokens, ...). Returns [{"n", "dropped", "average", "perplexity", "tasks"}]."""
    import copy

    from tqdm.auto import tqdm

    from layerdrop_patch.patch import apply_drop

    eval_kwargs.setdefault("progress", False)
    rows = []
    for n in tqdm(list(counts), desc=f"evaluate vs {kind} dropped", disable=not progress):
        cfg, _ = choose_drop(scores, kind, n=n, method=method, model=model)
        work = apply_drop(copy.deepcopy(model), cfg) if n else model
        res = evaluate_model(work, tokenizer, **eval_kwargs)
        rows.append({"n": n, "dropped": cfg.describe(), "average": res["average"],
                     "perplexity": (res["perplexity"] or {}).get("value"), "tasks": res["tasks"]})
        del work
    return rows


def plot_sweep(rows: list[dict[str, Any]], path: str | os.PathLike, *, y: str = "perplexity", kind: str = "attn",
               title: str | None = None, chosen: int | None = None, log_y: bool = True) -> Path:
    """Line plot of `y` against the number of `kind` units dropped (e.g. the perplexity sweep)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    path = Path(path)
    fig, ax = plt.subplots(figsize=(6, 3.6))
    xs, ys = [r["n"] for r in rows], [r[y] for r in rows]
    ax.plot(xs, ys, marker="o", color="#d1495b")
    if chosen is not None and chosen in xs:
        ax.axvline(chosen, color="#777777", ls="--", lw=1, label=f"chosen: {chosen}")
        ax.legend(frameon=False)
    if log_y and all(v > 0 for v in ys):
        ax.set_yscale("log")
    ax.set_xlabel(f"{kind} sublayers dropped")
    ax.set_ylabel(y)
    ax.set_title(title or f"{y} vs {kind} sublayers dropped", fontsize=10)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    tmp = path.with_name(f".{path.stem}.partial.png")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(tmp, dpi=130)
    plt.close(fig)
    os.replace(tmp, path)
    return path
