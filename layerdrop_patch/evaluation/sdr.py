"""Speedup Degradation Ratio (SDR), the paper's Eq. 7: γ = ΔAvg% / ΔSpeedup%.

Why a function of its own: every comparison table reports γ, and the sign conventions and the
zero-speed-up case must be the same everywhere.

Conventions (all changes are relative to the unpruned model and expressed in percent):
- ΔAvg%     = 100 · (pruned_avg − base_avg) / base_avg        (negative when accuracy drops)
- ΔSpeedup% = 100 · (pruned_speed / base_speed − 1)            (positive when the pruned model is faster)
- γ = ΔAvg% / ΔSpeedup%: the percent of average accuracy *changed* per percent of speed gained. The usual
  case (slower accuracy, faster model) gives γ < 0; **closer to 0 is better**. γ > 0 means accuracy rose
  while speed rose (or both fell: read the two deltas, not γ alone, when the pruned model is slower).
- Zero speed-up (ΔSpeedup% == 0 exactly): γ is not a ratio any more. Rule: 0.0 if the average did not
  change either, otherwise ±inf with the sign of ΔAvg% (−inf = accuracy lost for no speed gain).
`speed` is anything proportional to throughput (tokens/s) or a speed-up factor (base 1.0); latencies must
be inverted first.
"""

from __future__ import annotations

import math

from layerdrop_patch.errors import ConfigError


def delta_percent(base: float, new: float) -> float:
    """Relative change 100 · (new − base) / base; raises if base is 0 (no relative change defined)."""
    if base == 0:
        raise ConfigError("Relative change from a base value of 0 is undefined; the base must be non-zero.")
    return 100.0 * (new - base) / base


def sdr(base_avg: float, pruned_avg: float, base_speed: float, pruned_speed: float) -> float:
    """γ = ΔAvg% / ΔSpeedup% (see the module docstring for signs and the zero-speed-up rule).

    Args:
        base_avg, pruned_avg: average scores of the unpruned and the pruned model (any consistent scale).
        base_speed, pruned_speed: throughputs (tokens/s) or speed-up factors; must be > 0.
    """
    for name, value in (("base_avg", base_avg), ("pruned_avg", pruned_avg), ("base_speed", base_speed),
                        ("pruned_speed", pruned_speed)):
        if value is None or not math.isfinite(value):
            raise ConfigError(f"sdr: {name} must be a finite number, got {value!r}")
    if base_speed <= 0 or pruned_speed <= 0:
        raise ConfigError(f"sdr: speeds must be positive throughputs or speed-up factors, got base={base_speed}, "
                         f"pruned={pruned_speed}; invert latencies first.")
    d_avg = delta_percent(base_avg, pruned_avg)
    d_speed = 100.0 * (pruned_speed / base_speed - 1.0)
    if d_speed == 0.0:
        return 0.0 if d_avg == 0.0 else math.copysign(math.inf, d_avg)
    return d_avg / d_speed
