"""`LayerScorer`: the hooks that observe one decoder layer's residual stream and sum every metric over tokens.

Shared by the streaming pass (every layer at once, `streaming.py`) and the offloaded one (one layer at a time,
`offload.py`). The hooks only observe; they work on stock layers and on layers patched by `apply_drop` alike.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from layerdrop_patch.architectures import drop_of
from layerdrop_patch.errors import ConfigError, DataError
from layerdrop_patch.scoring.metrics import METRICS, metric_sums, token_stats
from layerdrop_patch.scoring.scores import KINDS, ImportanceScores

__all__ = ["LayerScorer", "assemble", "batches_of"]


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
        self.sums: torch.Tensor | None = None  # (3 kinds, len(METRICS)), fp32, on the layer's device
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
        nan = torch.full((len(METRICS),), math.nan, device=y.device)
        rows = []
        if self.has["attn"]:  # Y_A is the MLP pre-norm input, or the layer output when the MLP is gone
            y_attn = s["mlp_in"] if self.has["mlp"] else y
            rows.append(metric_sums(token_stats(x, y_attn, s["attn_normed"], s["attn_out"])))
        else:
            rows.append(nan)
        rows.append(metric_sums(token_stats(s["mlp_in"], y, s["mlp_normed"], s["mlp_out"])) if self.has["mlp"]
                    else nan)
        if self.has["attn"] or self.has["mlp"]:  # a block's "module" is the whole layer: input vs its update
            rows.append(metric_sums(token_stats(x, y, x, y.float() - x.float())))
        else:
            rows.append(nan)
        batch = torch.stack(rows)
        self.sums = batch if self.sums is None else self.sums + batch.to(self.sums.device)
        self.tokens += y.numel() // y.shape[-1]

    def means(self) -> torch.Tensor:
        if self.sums is None:
            raise DataError("no calibration tokens reached a decoder layer: the calibration set is empty.")
        return (self.sums / self.tokens).cpu()

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []


def assemble(model: Any, means: list[torch.Tensor], description: str, tokens: int, metric: str) -> ImportanceScores:
    """ImportanceScores from per-layer (3 kinds, len(METRICS)) mean tensors."""
    metrics = {m: {k: [float(means[i][ki, mi]) for i in range(len(means))] for ki, k in enumerate(KINDS)}
               for mi, m in enumerate(METRICS)}
    drop = drop_of(model)
    name = getattr(model.config, "_name_or_path", None) or getattr(model, "name_or_path", None) or None
    return ImportanceScores(metrics, metric, name, description, tokens,
                            {"attn": sorted(drop.attn), "mlp": sorted(drop.mlp)})


def batches_of(ids: torch.Tensor, batch_size: int) -> list[torch.Tensor]:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}")
    return list(ids.split(batch_size))
