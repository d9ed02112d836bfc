"""`ImportanceScores`: per-layer importance of attention, MLP and whole blocks, for every metric, and its JSON.

A sublayer already removed from the scored model has no score: it is NaN (null in JSON) and selection never
picks it; a block whose attention and MLP are both gone is NaN too.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from layerdrop_patch.errors import ConfigError, DataError
from layerdrop_patch.files import atomic_write_json

__all__ = ["ImportanceScores", "KINDS", "SCORES_FORMAT"]

KINDS = ("attn", "mlp", "block")
SCORES_FORMAT = "layerdrop-importance-scores/1"


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
            raise ConfigError(f"metric {self.metric!r} is not in these scores; available: {sorted(self.metrics)}")

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
            raise ConfigError(f"kind must be one of {KINDS}, got {kind!r}")
        return self.metrics[self.metric][kind]

    def with_metric(self, metric: str) -> "ImportanceScores":
        """The same measurements viewed through another metric (no re-scoring needed)."""
        return ImportanceScores(self.metrics, metric, self.model_name, self.calibration, self.tokens, self.dropped)

    # ------------------------------------------------------------------------------------------- JSON
    def to_dict(self) -> dict[str, Any]:
        return {
            "format": SCORES_FORMAT,
            "metric": self.metric,
            "model_name": self.model_name,
            "calibration": self.calibration,
            "tokens": self.tokens,
            "num_layers": self.num_layers,
            "dropped": self.dropped,
            "metrics": {m: {k: _nan_to_none(v) for k, v in kinds.items()} for m, kinds in self.metrics.items()},
        }

    @classmethod
    def from_dict(cls, data: Any, where: str = "scores") -> "ImportanceScores":
        if not isinstance(data, dict) or not str(data.get("format", "")).startswith("layerdrop-importance-scores/"):
            raise DataError(f"{where} is not an importance-scores file written by layerdrop-patch (no 'format': "
                            f"{SCORES_FORMAT!r}); write one with `layerdrop score`.")
        try:
            metrics = {
                m: {k: [math.nan if v is None else float(v) for v in vals] for k, vals in kinds.items()}
                for m, kinds in data["metrics"].items()
            }
            return cls(metrics, data["metric"], data.get("model_name"), data.get("calibration", ""),
                       int(data.get("tokens", 0)), data.get("dropped") or {"attn": [], "mlp": []})
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise DataError(f"{where} is damaged ({type(err).__name__}: {str(err)[:200]}); re-run `layerdrop score`."
                            ) from None

    def save(self, path: str | Path) -> Path:
        return atomic_write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> "ImportanceScores":
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise DataError(f"scores file {path} does not exist; write one with `layerdrop score MODEL -o DIR`.") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise DataError(f"scores file {path} is not valid JSON ({err}); re-run `layerdrop score`.") from None
        return cls.from_dict(data, str(path))

    def table(self) -> str:
        """A plain-text table of the chosen metric, one row per layer."""
        rows = [f"{'layer':>5} {'attn':>9} {'mlp':>9} {'block':>9}   ({self.metric})"]
        for i in range(self.num_layers):
            rows.append(f"{i:>5} {self.attn[i]:>9.5f} {self.mlp[i]:>9.5f} {self.block[i]:>9.5f}")
        return "\n".join(rows)
