"""An analytic cost model (FLOPs and bytes moved, KV-cache reads included) fitted to a measured profile.

A profile measures one workload. To estimate one that cannot be run here (a GPU, a 32k context, batch 64), each
sublayer's work is written down analytically for any workload and the machine's speed is fitted to the
measurement:

    seconds(unit, phase) = a * FLOPs + b * bytes + c * calls

FLOPs and bytes follow from the model's shapes: weights are read once per forward call; prefill attends over
the prompt (sliding layers over at most their window); every decode step reads the whole KV cache so far. a, b, c
(seconds per FLOP, per byte, per kernel call) are fitted by non-negative least squares to the measured per-unit
costs. For another device, `scaled(flops_ratio, bandwidth_ratio)` rescales a and b; such estimates are
unverified until measured there, and say so. `errors` reports how far the fitted model is from the measurement.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from layerdrop_patch.planning.profile import PHASES, CostProfile

__all__ = ["unit_work", "CostModel", "fit_cost_model", "estimate_speedup"]


def _shapes(config: Any) -> dict[str, float]:
    heads = config.num_attention_heads
    kv = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    hidden, inter = config.hidden_size, config.intermediate_size
    return {"heads": heads, "kv": kv, "head_dim": head_dim, "attn_params": 2 * hidden * heads * head_dim +
            2 * hidden * kv * head_dim, "mlp_params": 3 * hidden * inter,
            "window": getattr(config, "sliding_window", None) or 0}


def _context_sum(start: int, stop: int, window: int) -> float:
    """Σ_{t=start+1..stop} min(t, window or t): tokens attended over positions start..stop-1."""
    t = np.arange(start + 1, stop + 1, dtype=np.float64)
    return float(np.minimum(t, window).sum() if window else t.sum())


def unit_work(config: Any, workload: dict[str, Any], unit: str, phase: str, element_size: int = 4) -> np.ndarray:
    """[FLOPs, bytes, calls] of one attention ("attn:full" / "attn:sliding"), MLP ("mlp") or the output head with
    the embeddings ("head": logits of the last position per forward, as generate() asks) for one request."""
    s = _shapes(config)
    batch, prompt, new = workload["batch_size"], workload["prompt_len"], workload["new_tokens"]
    steps = max(new - 1, 0)
    if unit == "head":
        calls = 1 if phase == "prefill" else steps
        head = config.hidden_size * config.vocab_size
        return np.array([2.0 * head * batch * calls, head * element_size * calls, float(calls)])
    window = s["window"] if unit == "attn:sliding" else 0
    if unit == "mlp":
        tokens = batch * prompt if phase == "prefill" else batch * steps
        return np.array([2.0 * s["mlp_params"] * tokens, s["mlp_params"] * element_size * (1 if phase == "prefill"
                         else steps), 1.0 if phase == "prefill" else steps])
    if phase == "prefill":
        ctx = _context_sum(0, prompt, window)
        flops = 2.0 * s["attn_params"] * batch * prompt + 4.0 * batch * s["heads"] * s["head_dim"] * ctx
        moved = s["attn_params"] * element_size + 2.0 * batch * s["kv"] * s["head_dim"] * prompt * element_size
        return np.array([flops, moved, 1.0])
    ctx = _context_sum(prompt, prompt + steps, window)
    flops = 2.0 * s["attn_params"] * batch * steps + 4.0 * batch * s["heads"] * s["head_dim"] * ctx
    moved = s["attn_params"] * element_size * steps + 2.0 * batch * s["kv"] * s["head_dim"] * ctx * element_size
    return np.array([flops, moved, float(steps)])


@dataclass
class CostModel:
    """Fitted seconds per FLOP, per byte and per call, per phase, with the fit's relative errors."""

    coefficients: dict[str, list[float]]  # phase -> [a, b, c]
    errors: dict[str, float]  # "<unit>/<phase>" -> (fitted - measured) / measured on the profile
    element_size: int = 4
    note: str = "fitted to a measured profile on this machine"

    def predict_unit(self, config: Any, workload: dict, unit: str, phase: str) -> float:
        return float(unit_work(config, workload, unit, phase, self.element_size) @ np.array(self.coefficients[phase]))

    def scaled(self, flops_ratio: float, bandwidth_ratio: float) -> "CostModel":
        """The model for a device `flops_ratio` times faster in compute and `bandwidth_ratio` in memory."""
        coefficients = {p: [a / flops_ratio, b / bandwidth_ratio, c] for p, (a, b, c) in self.coefficients.items()}
        return CostModel(coefficients, {}, self.element_size,
                         f"scaled from this machine by x{flops_ratio:g} FLOPs, x{bandwidth_ratio:g} bandwidth: "
                         "an estimate, unverified until measured there")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _nnls(features: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Non-negative least squares on columns scaled to unit norm (the three columns differ by 10^10)."""
    from scipy.optimize import nnls

    scale = np.linalg.norm(features, axis=0)
    scale[scale == 0] = 1.0
    solution, _ = nnls(features / scale, target)
    return solution / scale


def fit_cost_model(profiles: CostProfile | list[CostProfile], config: Any, element_size: int = 4) -> CostModel:
    """Fit a, b, c per phase to the per-unit costs of one or more profiles (one equation per unit kind, phase and
    workload). One profile gives two or three equations for three unknowns: the fit then reproduces that workload
    but extrapolates loosely; profiles of two or more workloads (e.g. two prompt lengths) pin a, b, c down."""
    profiles = [profiles] if isinstance(profiles, CostProfile) else list(profiles)
    coefficients, errors = {}, {}
    for phase in PHASES:
        rows = [(p, u) for p in profiles for u in [*sorted(p.unit), "head"]]
        features = np.stack([unit_work(config, p.workload, u, phase, element_size) for p, u in rows])
        measured = np.array([p.fixed(phase) if u == "head" else p.unit[u][phase] for p, u in rows])
        coef = _nnls(features, measured)
        coefficients[phase] = [float(x) for x in coef]
        for (p, u), fitted, real in zip(rows, features @ coef, measured):
            key = f"{u}/{phase}" + (f"@{p.workload['prompt_len']}+{p.workload['new_tokens']}" if len(profiles) > 1 else "")
            errors[key] = float((fitted - real) / real) if real > 0 else 0.0
    return CostModel(coefficients, errors, element_size)


def estimate_speedup(model: CostModel, config: Any, workload: dict[str, Any], attention_kinds: list[str],
                     drop: Any) -> dict[str, float]:
    """Estimated seconds per request of the unpruned and the pruned model on any workload, and the speed-up."""
    def seconds(unit: str) -> float:
        return sum(model.predict_unit(config, workload, unit, phase) for phase in PHASES)

    layers = {"attn": [f"attn:{kind}" for kind in attention_kinds], "mlp": ["mlp"] * len(attention_kinds)}
    base = seconds("head") + sum(seconds(u) for units in layers.values() for u in units)
    saved = sum(seconds(layers["attn"][i]) for i in drop.attn) + sum(seconds("mlp") for _ in drop.mlp)
    return {"base_s": base, "pruned_s": base - saved, "speedup": base / (base - saved)}
