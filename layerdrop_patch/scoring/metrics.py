"""Importance metrics, registered by name: how much a sublayer changes the residual stream it sits on.

Every metric is a per-token function of a few quantities measured around one residual branch (or a whole decoder
layer), reduced at once into fp32 running sums, so one pass over the calibration tokens computes every metric
for every layer without storing hidden states. With X the residual stream entering the branch and
Y = X + F(X) the stream leaving it (F includes the branch's norms):

    cos_res     cos(X, Y)
    cos_nores   cos(Norm(X), F_module): the module's own input vs its output (for a block: cos(X, Y - X))
    update      ||Y - X|| = ||F(X)||
    output      ||Y||

Lower means more redundant for every metric. Adding one is a single `@register_metric` function here; the
scorers, the selection options, the CLI and the recipe schema all read `METRICS`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

__all__ = ["METRICS", "DEFAULT_METRIC", "Metric", "TokenStats", "register_metric", "token_stats", "metric_sums"]

_EPS = 1e-12


@dataclass(frozen=True)
class TokenStats:
    """Per-token quantities of one branch for one batch, each a 1-D fp32 tensor over tokens."""

    cos_res: torch.Tensor
    cos_nores: torch.Tensor
    update: torch.Tensor
    output: torch.Tensor


@dataclass(frozen=True)
class Metric:
    name: str
    per_token: Callable[[TokenStats], torch.Tensor]
    description: str


METRICS: dict[str, Metric] = {}
DEFAULT_METRIC = "cosine"


def register_metric(name: str, description: str):
    """Register `fn(stats: TokenStats) -> per-token scores` under `name` (lower = more redundant)."""
    def decorate(fn: Callable[[TokenStats], torch.Tensor]) -> Callable[[TokenStats], torch.Tensor]:
        METRICS[name] = Metric(name, fn, description)
        return fn
    return decorate


@register_metric("cosine", "1 - cos(X, Y) with the residual included (He et al. 2024; the default)")
def _cosine(t: TokenStats) -> torch.Tensor:
    return 1.0 - t.cos_res


@register_metric("angular", "arccos(cos(X, Y)) / pi, residual included (Gromov et al.'s angular distance)")
def _angular(t: TokenStats) -> torch.Tensor:
    return torch.arccos(t.cos_res) / math.pi


@register_metric("cosine_no_residual", "1 - cos(Norm(X), F(Norm(X))): the module alone (He et al. Table 6)")
def _cosine_no_residual(t: TokenStats) -> torch.Tensor:
    return 1.0 - t.cos_nores


@register_metric("angular_no_residual", "arccos of the no-residual cosine / pi")
def _angular_no_residual(t: TokenStats) -> torch.Tensor:
    return torch.arccos(t.cos_nores) / math.pi


@register_metric("relative_magnitude", "||F(X)|| / ||X + F(X)|| (ShortGPT's Relative Magnitude; He et al. Table 7)")
def _relative_magnitude(t: TokenStats) -> torch.Tensor:
    return t.update / t.output.clamp_min(_EPS)


def _flat(x: torch.Tensor) -> torch.Tensor:
    return x.float().reshape(-1, x.shape[-1])


def _cos(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    dot = (x * y).sum(-1)
    norms = (x.square().sum(-1) * y.square().sum(-1)).sqrt().clamp_min(_EPS)
    return (dot / norms).clamp(-1.0, 1.0)


def token_stats(x: torch.Tensor, y: torch.Tensor, module_in: torch.Tensor, module_out: torch.Tensor) -> TokenStats:
    """The per-token quantities for residual input `x`, output `y`, and the module's own input and output."""
    x, y = _flat(x), _flat(y)
    update = y - x
    return TokenStats(cos_res=_cos(x, y), cos_nores=_cos(_flat(module_in), _flat(module_out)),
                      update=update.norm(dim=-1), output=y.norm(dim=-1))


def metric_sums(stats: TokenStats) -> torch.Tensor:
    """Sums over tokens of every registered metric, in `METRICS` order (one fp32 value each)."""
    return torch.stack([metric.per_token(stats).sum() for metric in METRICS.values()])
