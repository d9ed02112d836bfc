"""The pipeline steps that the `layerdrop` CLI, the recipes and the demo share.

Why a module of its own: a CLI command, a recipe step and the demo do the same few jobs (score and plot, choose a
drop and record it, drop and save, sweep a drop count). Each job lives here once, as a function that takes a
loaded model and the stage configs, writes its artifacts atomically and returns a JSON-able summary. The CLI only
parses options and prints; recipes only decide which step runs.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
from pathlib import Path
from typing import Any, Iterable

import torch

from layerdrop_patch.architectures import decoder_layers, drop_of
from layerdrop_patch.checkpoint import save_pretrained
from layerdrop_patch.config import DropConfig
from layerdrop_patch.errors import ConfigError, ResumeError
from layerdrop_patch.evaluation.suite import EvaluationConfig, evaluate_model
from layerdrop_patch.files import atomic_write_json, checkpoint_bytes, digest
from layerdrop_patch.patch import apply_drop, kept_attention_layers, parameter_bytes
from layerdrop_patch.scoring import ImportanceScores, compute_importance, plot_importance
from layerdrop_patch.scoring.calibration import as_token_tensor
from layerdrop_patch.selection import METHODS, Selection, SelectionConfig, choose_drop
from layerdrop_patch.selection.registry import count_for
from layerdrop_patch.selection.plots import plot_drop_order

__all__ = ["score_model", "choose_and_record", "drop_and_save", "drop_sweep", "SELECTION_HISTORY"]

SELECTION_HISTORY = "selection_history.json"


def score_model(model: Any, calibration: Any, out_dir: str | os.PathLike | None = None, *, metric: str = "cosine",
                batch_size: int = 1, offload: bool = False, progress: bool = True, plot_kind: str = "joint",
                model_name: str | None = None) -> ImportanceScores:
    """Importance scores of every sublayer; with `out_dir`, also `scores.json`, `importance.png` and
    `drop_order.png` (the order in which `plot_kind` units would be dropped). `model_name` replaces the
    model's own `_name_or_path` (for an embedded model, a cache path) in the JSON and the plot titles."""
    scores = compute_importance(model, calibration, batch_size=batch_size, metric=metric, offload=offload,
                                progress=progress)
    if model_name:
        scores.model_name = model_name
    if out_dir is not None:
        out = Path(out_dir)
        scores.save(out / "scores.json")
        plot_importance(scores, out / "importance.png")
        plot_drop_order(scores, out / "drop_order.png", kind=plot_kind)
    return scores


def choose_and_record(config: SelectionConfig, *, scores: ImportanceScores | None = None, model: Any = None,
                      calibration: Any = None, progress: bool = True,
                      out_dir: str | os.PathLike | None = None) -> Selection:
    """`choose_drop`; with `out_dir` also `drop_config.json` and, for step-by-step methods, the order in which
    units were really dropped (`drop_order_<method>.png`).

    A method that can resume (greedy, minutes per step on a large model) also records its order in
    `out_dir/selection_history.json` after every step, keyed by everything the order depends on except its length.
    Run again after an interruption, or with a larger `n`, it goes on from the recorded steps (a smaller `n` takes
    their prefix: greedy is deterministic); with any other change it starts again and replaces the record."""
    if scores is not None and scores.metric != config.metric:
        scores = scores.with_metric(config.metric)
    resume = on_step = None
    if out_dir is not None and model is not None and METHODS[config.method].resumable:
        record, key = Path(out_dir) / SELECTION_HISTORY, _selection_key(config, scores, model, calibration)
        recorded = _recorded_order(record, key)
        count = count_for(config.kind, len(decoder_layers(model)), config.n, config.ratio)
        resume = recorded[:count] if recorded and count else None

        def on_step(history: list[dict[str, Any]]) -> None:
            atomic_write_json(record, {"key": key, "history": history})
    try:
        selection = choose_drop(config, scores=scores, model=model, calibration=calibration, resume=resume,
                                on_step=on_step, progress=progress)
    except ResumeError as err:  # the key matched, so only a hand edit makes the recorded steps unusable
        if resume is None:
            raise
        raise ResumeError(f"{record}: the recorded greedy order cannot be resumed ({err}). This file is written by "
                          "layerdrop-patch; move it away (or choose another output directory) to select "
                          "again from the start.") from None
    if out_dir is not None:
        out = Path(out_dir)
        atomic_write_json(out / "drop_config.json", selection.drop_config.to_dict())
        if selection.history:
            num_layers = scores.num_layers if scores is not None else model.config.num_hidden_layers
            plot_drop_order(selection.history, out / f"drop_order_{config.method}.png", kind=config.kind,
                            num_layers=num_layers)
    return selection


def _selection_key(config: SelectionConfig, scores: ImportanceScores | None, model: Any, calibration: Any) -> str:
    """A digest of what a greedy order depends on: the selection settings but n and ratio (each n is a prefix of
    the order), the model (name, weights, dtype, sublayers already dropped), the calibration token ids and the
    scores that rank a shortlist."""
    ids, _ = as_token_tensor(calibration) if calibration is not None else (None, None)
    drop = drop_of(model)
    settings = {k: v for k, v in config.to_dict().items() if k not in ("n", "ratio")}
    parts = {"config": settings, "model": str(getattr(model.config, "_name_or_path", "")),
             "weights": _weights_fingerprint(model),
             "dtype": str(next(model.parameters()).dtype), "dropped": [list(drop.attn), list(drop.mlp)],
             "calibration": None if ids is None else hashlib.sha256(ids.cpu().numpy().tobytes()).hexdigest(),
             "scores": None if scores is None else [scores.scores_for(k) for k in ("attn", "mlp")]}
    return digest(parts)


@torch.no_grad()
def _weights_fingerprint(model: Any) -> str:
    """Tells checkpoints of one name apart without hashing every byte (minutes on a 70B model): per tensor its
    first, last and 64 evenly spaced values, and its float64 sum and sum of squares, which move with any single
    changed value (a fine-tune, a merged adapter, new embedding rows at the end)."""
    weights = hashlib.sha256()
    for tensor in (t for t in model.parameters() if t.device.type != "meta"):
        flat = tensor.detach().reshape(-1)
        stride = max(1, flat.numel() // 64)
        where = "cpu" if flat.device.type == "mps" else flat.device  # MPS has no float64
        total = torch.zeros(2, dtype=torch.float64, device=where)
        for chunk in flat.split(1 << 22):  # float64 a chunk at a time: no full-size copy of a large embedding
            chunk = chunk.to(where).double()
            total += torch.stack([chunk.sum(), chunk.square().sum()])
        samples = torch.cat([flat[:64], flat[-64:], flat[::stride][:64]]).to(where).double()
        weights.update(torch.cat([samples, total]).cpu().numpy().tobytes())
    return weights.hexdigest()


def _recorded_order(record: Path, key: str) -> list[dict[str, Any]] | None:
    """The steps recorded under `key`, or None to start again: no record, another run's, or one that cannot be
    read (written atomically, so only a hand edit makes one unreadable)."""
    try:
        saved = json.loads(record.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(saved, dict) or saved.get("key") != key or not isinstance(saved.get("history"), list):
        return None
    return saved["history"]


def drop_and_save(model: Any, tokenizer: Any, drop_config: DropConfig, out_dir: str | os.PathLike, *,
                  base_model: str | None = None, scores_plot: str | os.PathLike | None = None,
                  overwrite: bool = False) -> dict[str, Any]:
    """Apply `drop_config` to `model` in place and save it as a portable checkpoint (atomic); returns the
    parameter bytes before/after, the checkpoint's weight bytes and the kept attention layers."""
    if drop_config.is_empty():
        raise ConfigError("the drop is empty (n=0, or a ratio that rounds to 0 units): the checkpoint would be the "
                          "unpruned model under a pruned name. Drop at least one unit (-n 1 or more).")
    if base_model and (drop_config.base_model is None or str(drop_config.base_model).startswith("/")):
        drop_config.base_model = base_model
    before = parameter_bytes(model)
    apply_drop(model, drop_config)
    save_pretrained(model, out_dir, tokenizer=tokenizer, overwrite=overwrite, scores_plot=scores_plot)
    return {"drop_config": drop_config.to_dict(), "dropped": drop_config.describe(),
            "num_dropped": drop_config.num_dropped, "parameter_bytes_before": before,
            "parameter_bytes_after": parameter_bytes(model), "checkpoint_bytes": checkpoint_bytes(out_dir),
            "kept_attention_layers": len(kept_attention_layers(model)), "num_layers": model.config.num_hidden_layers}


def drop_sweep(model: Any, tokenizer: Any, scores: ImportanceScores, kind: str, counts: Iterable[int], *,
               method: str = "importance", evaluation: EvaluationConfig | None = None,
               progress: bool = True) -> list[dict[str, Any]]:
    """Evaluate the model after dropping each count of `kind` units (one-shot order of `scores`, or a baseline
    `method`). The model is deep-copied per count, so `model` is untouched.
    Returns [{"n", "dropped", "average", "perplexity", "tasks"}]."""
    from tqdm.auto import tqdm

    rows = []
    for n in tqdm(list(counts), desc=f"evaluate vs {kind} dropped", disable=not progress):
        config = SelectionConfig(kind=kind, n=n, method=method, metric=scores.metric)
        cfg = choose_drop(config, scores=scores, model=model).drop_config
        work = apply_drop(copy.deepcopy(model), cfg) if n else model
        res = evaluate_model(work, tokenizer, evaluation, progress=False)
        rows.append({"n": n, "dropped": cfg.describe(), "average": res["average"],
                     "perplexity": (res["perplexity"] or {}).get("value"), "tasks": res["tasks"]})
        del work
    return rows
