"""Importance scores of every attention, MLP and whole block, from one pass over calibration tokens.

He et al. (2024) call a sublayer redundant when its output is nearly parallel to its input: for attention,
S_A = 1 - cos(X_A, Y_A) with X_A the residual stream entering the attention pre-norm and
Y_A = X_A + PostNorm(Attention(Norm(X_A))) (PostNorm only in Gemma-style layers); likewise S_M for the MLP and
S_B for the whole decoder layer. The lower the score, the less the sublayer changes the hidden state and the
safer it is to drop. Four metrics are kept for every (layer, kind), so one pass serves every experiment:

- ``cosine``               1 - cos(X, Y), residual included (the paper's default);
- ``angular``              arccos(cos(X, Y)) / pi (Gromov et al.'s angular distance), residual included;
- ``cosine_no_residual``   1 - cos(Norm(X), F(Norm(X))): the sublayer's own input vs its output (the paper's
                           Table 6 ablation); for a block, 1 - cos(X_B, Y_B - X_B) (its total update vs its input);
- ``angular_no_residual``  arccos of the same cosine / pi.

How it is measured without storing hidden states (the reference code keeps them all: ~8.6 GB per side at
256 x 2048 x 4096): forward hooks see X and Y for one batch at a time, and per-token cosines are reduced at once
into fp32 running sums. The hooks only *observe* the residual stream (inputs of the MLP pre-norm and of the
decoder layer, outputs of the layer and of the sublayers), so they work on stock layers and on layers patched by
`apply_drop` alike. A sublayer already removed from the model has no score: it is reported as NaN and selection
never picks it; a block whose attention and MLP are both gone is NaN too.

Large models: ``offload=True`` streams one decoder layer at a time (see `scoring_offload.py`).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from layerdrop_patch.architectures import get_architecture
from layerdrop_patch.calibration import as_token_tensor

__all__ = ["METRICS", "KINDS", "ImportanceScores", "compute_importance", "LayerScorer"]

METRICS = ("cosine", "angular", "cosine_no_residual", "angular_no_residual")
KINDS = ("attn", "mlp", "block")
_EPS = 1e-12


# ----------------------------------------------------------------------------------------------- result
def _nan_to_none(values: list[float]) -> list[float | None]:
    return [None if (v is None or math.isnan(v)) else float(v) for v in values]


@dataclass
class ImportanceScores:
    """Per-layer importance (lower = more redundant) of attention, MLP and blocks, for every metric.

    `attn`, `mlp`, `block` are the lists for `metric`; `metrics[name][kind]` holds all of them. NaN marks a
    sublayer that was already absent from the scored model (see `dropped`).
    """

    metrics: dict[str, dict[str, list[float]]]
    metric: str = "cosine"
    model_name: str | None = None
    calibration: str = ""
    tokens: int = 0
    dropped: dict[str, list[int]] = field(default_factory=lambda: {"attn": [], "mlp": []})

    def __post_init__(self) -> None:
        if self.metric not in self.metrics:
            raise ValueError(f"unknown metric {self.metric!r}; available: {sorted(self.metrics)}")

    @property
    def num_layers(self) -> int:
        return len(self.metrics[self.metric]["attn"])

    @property
    def attn(self) -> list[float]:
        return self.metrics[self.metric]["attn"]

    @property
    def mlp(self) -> list[float]:
        return self.metrics[self.metric]["mlp"]

    @property
    def block(self) -> list[float]:
        return self.metrics[self.metric]["block"]

    def scores_for(self, kind: str) -> list[float]:
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        return self.metrics[self.metric][kind]

    def with_metric(self, metric: str) -> "ImportanceScores":
        """The same measurements viewed through another metric (no re-scoring needed)."""
        return ImportanceScores(self.metrics, metric, self.model_name, self.calibration, self.tokens, self.dropped)

    def select(self, kind: str, n: int | None = None, ratio: float | None = None, **options: Any):
        """Choose what to drop; see `layerdrop_patch.selection.select` for every option."""
        from layerdrop_patch.selection import select

        return select(self, kind, n=n, ratio=ratio, **options)

    # ------------------------------------------------------------------------------------------- JSON
    def to_dict(self) -> dict[str, Any]:
        return {
            "format": "layerdrop-importance-scores/1",
            "metric": self.metric,
            "model_name": self.model_name,
            "calibration": self.calibration,
            "tokens": self.tokens,
            "num_layers": self.num_layers,
            "dropped": self.dropped,
            "metrics": {m: {k: _nan_to_none(v) for k, v in kinds.items()} for m, kinds in self.metrics.items()},
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ImportanceScores":
        if not str(data.get("format", "")).startswith("layerdrop-importance-scores/"):
            raise ValueError("not an importance-scores file written by layerdrop-patch (missing 'format').")
        metrics = {
            m: {k: [math.nan if v is None else float(v) for v in vals] for k, vals in kinds.items()}
            for m, kinds in data["metrics"].items()
        }
        return cls(metrics, data["metric"], data.get("model_name"), data.get("calibration", ""),
                   int(data.get("tokens", 0)), data.get("dropped") or {"attn": [], "mlp": []})

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=1) + "\n")
        return path

    @classmethod
    def load(cls, path: str | Path) -> "ImportanceScores":
        return cls.from_dict(json.loads(Path(path).read_text()))

    def table(self) -> str:
        """A plain-text table of the chosen metric, one row per layer."""
        rows = [f"{'layer':>5} {'attn':>9} {'mlp':>9} {'block':>9}   ({self.metric})"]
        for i in range(self.num_layers):
            rows.append(f"{i:>5} {self.attn[i]:>9.5f} {self.mlp[i]:>9.5f} {self.block[i]:>9.5f}")
        return "\n".join(rows)


# ----------------------------------------------------------------------------------------------- hooks
def _cos(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-token cosine of (..., hidden) tensors, in fp32, flattened to (tokens,)."""
    x = x.float().reshape(-1, x.shape[-1])
    y = y.float().reshape(-1, y.shape[-1])
    dot = (x * y).sum(-1)
    norms = (x.square().sum(-1) * y.square().sum(-1)).sqrt().clamp_min(_EPS)
    return (dot / norms).clamp(-1.0, 1.0)


def _stats(c_res: torch.Tensor, c_nores: torch.Tensor) -> torch.Tensor:
    """Sums over tokens of the four metrics, in METRICS order."""
    return torch.stack([
        (1.0 - c_res).sum(), torch.arccos(c_res).sum() / math.pi,
        (1.0 - c_nores).sum(), torch.arccos(c_nores).sum() / math.pi,
    ])


def _first(output: Any) -> torch.Tensor:
    return output[0] if isinstance(output, (tuple, list)) else output


class LayerScorer:
    """Hooks one decoder layer and accumulates its attention / MLP / block statistics.

    Captured per batch: X_B (layer input), Norm(X_A) and the attention branch output F_A, X_M and Norm(X_M)
    (the MLP pre-norm's input is exactly Y_A = X_A + F_A), F_M, and Y_B (layer output). X_A is X_B: the
    residual stream enters a decoder layer straight into the attention pre-norm. Everything is reduced when
    the layer returns, then dropped, so only one layer's tensors for one batch are alive.
    """

    def __init__(self, layer: torch.nn.Module, arch: Any) -> None:
        self.layer = layer
        self.sums: torch.Tensor | None = None  # (3 kinds, 4 metrics), fp32, on the layer's device
        self.tokens = 0
        self._seen: dict[str, torch.Tensor] = {}
        self.has = {}
        self.handles = [layer.register_forward_pre_hook(self._on_layer_input, with_kwargs=True),
                        layer.register_forward_hook(self._on_layer_output)]
        for kind, part in (("attn", arch.attn), ("mlp", arch.mlp)):
            module = getattr(layer, part.module, None)
            pre = getattr(layer, part.pre_norm, None)
            self.has[kind] = module is not None and pre is not None
            if not self.has[kind]:
                continue
            self.handles.append(pre.register_forward_hook(self._recorder(kind, "pre")))
            post = getattr(layer, part.post_norm, None) if part.post_norm else None
            self.handles.append((post or module).register_forward_hook(self._recorder(kind, "out")))

    def _recorder(self, kind: str, where: str):
        def hook(module, args, output):
            if where == "pre":
                self._seen[f"{kind}_in"] = args[0]
                self._seen[f"{kind}_normed"] = _first(output)
            else:
                self._seen[f"{kind}_out"] = _first(output)
        return hook

    def _on_layer_input(self, module, args, kwargs):
        self._seen = {"x": args[0] if args else kwargs["hidden_states"]}

    def _on_layer_output(self, module, args, output):
        s, self._seen = self._seen, {}
        x, y = s["x"], _first(output)
        nan = torch.full((4,), math.nan, device=y.device)
        rows = []
        if self.has["attn"]:  # Y_A is the MLP pre-norm input, or the layer output when the MLP is gone
            y_attn = s["mlp_in"] if self.has["mlp"] else y
            rows.append(_stats(_cos(x, y_attn), _cos(s["attn_normed"], s["attn_out"])))
        else:
            rows.append(nan)
        if self.has["mlp"]:
            rows.append(_stats(_cos(s["mlp_in"], y), _cos(s["mlp_normed"], s["mlp_out"])))
        else:
            rows.append(nan)
        if self.has["attn"] or self.has["mlp"]:
            rows.append(_stats(_cos(x, y), _cos(x, y.float() - x.float())))
        else:
            rows.append(nan)
        batch = torch.stack(rows)
        self.sums = batch if self.sums is None else self.sums + batch.to(self.sums.device)
        self.tokens += y.numel() // y.shape[-1]

    def means(self) -> torch.Tensor:
        if self.sums is None:
            raise RuntimeError("the layer never ran: no calibration tokens reached it.")
        return (self.sums / self.tokens).cpu()

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []


def assemble(model: Any, means: list[torch.Tensor], description: str, tokens: int, metric: str) -> ImportanceScores:
    """Build ImportanceScores from per-layer (3, 4) mean tensors."""
    metrics = {m: {k: [float(means[i][ki, mi]) for i in range(len(means))] for ki, k in enumerate(KINDS)}
               for mi, m in enumerate(METRICS)}
    drop = getattr(model.config, "drop_config", None) or {}
    name = getattr(model.config, "_name_or_path", None) or getattr(model, "name_or_path", None) or None
    return ImportanceScores(metrics, metric, name, description, tokens,
                            {"attn": sorted(drop.get("attn", [])), "mlp": sorted(drop.get("mlp", []))})


def decoder_layers(model: Any) -> torch.nn.ModuleList:
    layers = getattr(getattr(model, "model", None), "layers", None)
    if not isinstance(layers, torch.nn.ModuleList):
        raise TypeError(f"expected a *ForCausalLM with decoder layers at model.model.layers, got {type(model).__name__}")
    return layers


def batches_of(ids: torch.Tensor, batch_size: int) -> list[torch.Tensor]:
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    return list(ids.split(batch_size))


# ----------------------------------------------------------------------------------------------- entry point
def compute_importance(
    model: Any,
    calibration: Any,
    batch_size: int = 1,
    metric: str = "cosine",
    offload: bool = False,
    progress: bool = True,
    *,
    device: str | torch.device | None = None,
    checkpoint: str | Path | None = None,
) -> ImportanceScores:
    """Score every decoder layer's attention, MLP and block on `calibration` (one pass over the tokens).

    Args:
        model: a transformers *ForCausalLM (stock, patched by `apply_drop`, or dispatched with `device_map`).
        calibration: a `Calibration` from `load_calibration`, or a LongTensor (n_samples, seq_len).
        batch_size: calibration samples per forward.
        metric: which metric `.attn/.mlp/.block` report (all four are kept; see METRICS).
        offload: stream one decoder layer at a time through stored activations (models larger than memory).
        progress: show a tqdm progress bar.
        device: offloaded mode only: where each layer runs (default: cuda if available, else cpu).
        checkpoint: offloaded mode only: safetensors directory to load meta-device weights from (default: the
            model's own `name_or_path` when that is a local directory).
    """
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    ids, description = as_token_tensor(calibration)
    arch = get_architecture(model)
    if offload:
        from layerdrop_patch.scoring_offload import score_offloaded

        means = score_offloaded(model, ids, arch, batch_size, progress, device=device, checkpoint=checkpoint)
    else:
        means = _score_streaming(model, ids, arch, batch_size, progress)
    return assemble(model, means, description, int(ids.numel()), metric)


@torch.no_grad()
def _score_streaming(model: Any, ids: torch.Tensor, arch: Any, batch_size: int, progress: bool) -> list[torch.Tensor]:
    from tqdm.auto import tqdm

    layers = decoder_layers(model)
    base = model.model
    if any(p.device.type == "meta" for p in base.parameters()) and not hasattr(model, "hf_device_map"):
        raise ValueError("model weights are on the meta device; use compute_importance(..., offload=True, checkpoint=...).")
    scorers = [LayerScorer(layer, arch) for layer in layers]
    was_training = model.training
    model.eval()
    embed = base.get_input_embeddings()
    target = embed.weight.device if embed.weight.device.type != "meta" else torch.device("cpu")
    try:
        for batch in tqdm(batches_of(ids, batch_size), desc="importance", unit="batch", disable=not progress):
            base(input_ids=batch.to(target), use_cache=False)
    finally:
        for s in scorers:
            s.remove()
        model.train(was_training)
    return [s.means() for s in scorers]
