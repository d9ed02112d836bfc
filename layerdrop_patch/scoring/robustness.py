"""Are the importance scores robust? The same model scored on several calibration sources and sample counts.

He et al. (2024, Figs. 3 and 10) advise users that any reasonable calibration text and a modest number of
samples give the same ranking of redundant sublayers. `score_robustness` checks that claim on the user's own
model: it scores every (source, sample count) setting and reports, for attention, MLP and blocks, how well the
settings agree: the rank correlation of the per-layer scores (Spearman's rho and Kendall's tau-b) and the
overlap of the k lowest-scoring layers, i.e. of what a user would actually drop.

Why one pass per source is enough: the sample sets are nested prefixes of one shuffled, packed stream
(n=4 is inside n=16 inside n=64 ...), and every score is a mean over tokens. So each source is scored once, in
increments (samples 0-3, then 4-15, ...), and the means of the larger sets are the token-weighted means of the
increments: the cost of the largest count, not of the sum of all counts. The increments go through
`compute_importance`, so the offloaded mode and every metric work here as everywhere else.

Rank correlations come from scipy (average ranks for ties). The lowest-k sets follow `select`'s importance
order (lowest score first, ties to the shallower layer, already-dropped sublayers never chosen) without
importing selection, which itself imports scoring.
"""

from __future__ import annotations

import itertools
import math
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from layerdrop_patch.errors import ConfigError, DataError
from layerdrop_patch.files import atomic_write_json
from layerdrop_patch.options import StageConfig, option, positive
from layerdrop_patch.scoring.calibration import CalibrationConfig, load_calibration
from layerdrop_patch.scoring.metrics import DEFAULT_METRIC, METRICS
from layerdrop_patch.scoring.scores import KINDS, ImportanceScores
from layerdrop_patch.scoring.streaming import compute_importance

__all__ = ["RobustnessConfig", "RobustnessResult", "score_robustness", "rank_correlation", "lowest_k",
           "overlap_at_k", "ROBUSTNESS_FORMAT"]

ROBUSTNESS_FORMAT = "layerdrop-score-robustness/1"


def _counts_check(values: list[int]) -> str | None:
    if not values:
        return "needs at least one sample count"
    if any(v < 1 for v in values):
        return "sample counts must be >= 1"
    return "sample counts must not repeat" if len(set(values)) != len(values) else None


@dataclass
class RobustnessConfig(StageConfig):
    """Which calibration settings to compare and which drop sizes to check (the `robustness` stage)."""

    section = "robustness"
    sources: list[str] = option(["c4", "wikitext2"], "Calibration sources to compare: c4, wikitext2, files, "
                                "directories or hub datasets (comma-separated).",
                                check=lambda v: None if v else "needs at least one source")
    sample_counts: list[int] = option([4, 16, 64, 256], "Sample counts to compare; nested: the smaller sets are "
                                      "prefixes of the largest (the paper: up to 256).", check=_counts_check)
    seq_len: int = option(CalibrationConfig.seq_len, "Tokens per sample (the paper: 2048).", check=positive)
    seed: int = option(0, "Seed of the document shuffle (the same for every source).")
    batch_size: int = option(1, "Samples per forward pass while scoring.", check=positive)
    metric: str = option(DEFAULT_METRIC, "Metric whose scores are compared.", choices=lambda: tuple(METRICS))
    k_attn: int | None = option(None, "Attention layers a user would drop (overlap@k); default: a quarter of the "
                                "layers.", check=positive)
    k_mlp: int | None = option(None, "MLP layers a user would drop; default: a quarter of the layers.", check=positive)
    k_block: int | None = option(None, "Blocks a user would drop; default: a quarter of the layers.", check=positive)

    def checks(self) -> list[str]:
        if len(self.sources) * len(self.sample_counts) < 2:
            return ["sources / sample_counts: one setting leaves nothing to compare; give two sources or two counts"]
        return []

    def k_for(self, kind: str, num_layers: int) -> int:
        """The k of `kind`; by default a quarter of the layers, rounded half up (8 of 30, 5 of 18)."""
        k = getattr(self, f"k_{kind}") or max(1, int(num_layers / 4 + 0.5))
        if k >= num_layers:
            raise ConfigError(f"robustness.k_{kind}: {k} of {num_layers} layers leaves nothing to choose; "
                              f"give a k below {num_layers}.")
        return k


# ------------------------------------------------------------------------------------------------ statistics
def rank_correlation(a: list[float], b: list[float], method: str = "spearman") -> float:
    """Spearman's rho or Kendall's tau-b (scipy, average ranks for ties) of two score lists; layers where either
    is NaN (an absent sublayer) are left out; NaN when fewer than two layers remain or one side is constant."""
    from scipy import stats

    if len(a) != len(b):
        raise ConfigError(f"rank_correlation needs lists of equal length, got {len(a)} and {len(b)}.")
    if method not in ("spearman", "kendall"):
        raise ConfigError(f"method must be 'spearman' or 'kendall', got {method!r}.")
    pairs = [(x, y) for x, y in zip(a, b) if not (math.isnan(x) or math.isnan(y))]
    x, y = [p[0] for p in pairs], [p[1] for p in pairs]
    if len(pairs) < 2 or len(set(x)) < 2 or len(set(y)) < 2:
        return math.nan
    test = stats.spearmanr(x, y) if method == "spearman" else stats.kendalltau(x, y)
    return float(test.statistic)


def lowest_k(values: list[float], k: int) -> list[int]:
    """The k layers a user would drop: lowest score first, ties to the shallower layer, NaN never chosen."""
    ranked = sorted((i for i, v in enumerate(values) if not math.isnan(v)), key=lambda i: (values[i], i))
    return sorted(ranked[:k])


def overlap_at_k(a: list[float], b: list[float], k: int) -> int:
    """How many of the k lowest-scoring layers of `a` are also among the k lowest of `b`."""
    return len(set(lowest_k(a, k)) & set(lowest_k(b, k)))


# ------------------------------------------------------------------------------------------------ the result
Setting = tuple[str, int]  # (source label, sample count)


@dataclass
class RobustnessResult:
    """Scores of every (source, sample count) setting and how much they agree, per kind.

    `scores[(label, n)]` are full ImportanceScores (every metric); the analysis reads `metric`, and
    `with_metric` re-reads another one without scoring again.
    """

    config: RobustnessConfig
    sources: list[dict[str, str]]  # {"label", "source", "description"} in config order
    scores: dict[Setting, ImportanceScores]
    model_name: str | None = None
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def metric(self) -> str:
        return self.config.metric

    @property
    def labels(self) -> list[str]:
        return [s["label"] for s in self.sources]

    @property
    def counts(self) -> list[int]:
        return sorted(self.config.sample_counts)

    @property
    def num_layers(self) -> int:
        return next(iter(self.scores.values())).num_layers

    def k(self, kind: str) -> int:
        return self.config.k_for(kind, self.num_layers)

    def values(self, kind: str, setting: Setting) -> list[float]:
        return self.scores[setting].metrics[self.metric][kind]

    def lowest(self, kind: str, setting: Setting) -> list[int]:
        """The k layers of `kind` a user would drop under `setting`."""
        return lowest_k(self.values(kind, setting), self.k(kind))

    def with_metric(self, metric: str) -> "RobustnessResult":
        return RobustnessResult(self.config.replace(metric=metric), self.sources, self.scores, self.model_name,
                                self.seconds)

    def compare(self, kind: str, a: Setting, b: Setting) -> dict[str, Any]:
        va, vb, k = self.values(kind, a), self.values(kind, b), self.k(kind)
        return {"a": list(a), "b": list(b), "spearman": rank_correlation(va, vb, "spearman"),
                "kendall": rank_correlation(va, vb, "kendall"), "overlap": overlap_at_k(va, vb, k), "k": k}

    def pairs(self, kind: str) -> list[dict[str, Any]]:
        """Every pair of settings."""
        settings = [(label, n) for label in self.labels for n in self.counts]
        return [self.compare(kind, a, b) for a, b in itertools.combinations(settings, 2)]

    def across_sources(self, kind: str) -> dict[int, dict[str, float]]:
        """Per sample count: the worst and mean agreement over pairs of sources (empty with one source)."""
        out = {}
        for n in self.counts:
            rows = [self.compare(kind, (a, n), (b, n)) for a, b in itertools.combinations(self.labels, 2)]
            if rows:
                rhos = [r["spearman"] for r in rows]
                out[n] = {"spearman_min": min(rhos), "spearman_mean": sum(rhos) / len(rhos),
                          "kendall_min": min(r["kendall"] for r in rows),
                          "overlap_min": min(r["overlap"] for r in rows), "k": rows[0]["k"]}
        return out

    def across_counts(self, kind: str) -> dict[str, dict[int, dict[str, float]]]:
        """Per source and sample count: agreement with the same source at the largest count."""
        ref = self.counts[-1]
        return {label: {n: self.compare(kind, (label, n), (label, ref)) for n in self.counts}
                for label in self.labels}

    def stable_from(self, kind: str) -> dict[str, int]:
        """Per source: the smallest count from which the k lowest layers equal those at the largest count at
        every larger count too (the largest count itself when no smaller one agrees)."""
        out = {}
        for label in self.labels:
            sets = [self.lowest(kind, (label, n)) for n in self.counts]
            first = len(sets) - 1
            while first > 0 and sets[first - 1] == sets[-1]:
                first -= 1
            out[label] = self.counts[first]
        return out

    def to_dict(self) -> dict[str, Any]:
        kinds = {}
        for kind in KINDS:
            kinds[kind] = {
                "k": self.k(kind),
                "lowest_k": {label: {str(n): self.lowest(kind, (label, n)) for n in self.counts}
                             for label in self.labels},
                "across_sources": {str(n): v for n, v in self.across_sources(kind).items()},
                "across_counts": {label: {str(n): {key: r[key] for key in ("spearman", "kendall", "overlap")}
                                          for n, r in rows.items()}
                                  for label, rows in self.across_counts(kind).items()},
                "stable_from": self.stable_from(kind),
                "pairs": self.pairs(kind),
            }
        return _finite({
            "format": ROBUSTNESS_FORMAT, "model_name": self.model_name, "metric": self.metric,
            "num_layers": self.num_layers, "config": self.config.to_dict(), "sources": self.sources,
            "sample_counts": self.counts, "seconds": self.seconds, "kinds": kinds,
            "settings": [{"source": label, "n_samples": n, "scores": self.scores[(label, n)].to_dict()}
                         for label in self.labels for n in self.counts],
        })

    @classmethod
    def from_dict(cls, data: Any, where: str = "robustness JSON") -> "RobustnessResult":
        """The result `to_dict` wrote (e.g. to re-draw the figures or re-read another metric without scoring)."""
        if not isinstance(data, dict) or data.get("format") != ROBUSTNESS_FORMAT:
            raise DataError(f"{where} is not a robustness file written by layerdrop-patch (no 'format': "
                            f"{ROBUSTNESS_FORMAT!r}); write one with `layerdrop score MODEL --robustness`.")
        try:
            scores = {(s["source"], int(s["n_samples"])): ImportanceScores.from_dict(s["scores"], where)
                      for s in data["settings"]}
            return cls(RobustnessConfig(**data["config"]), list(data["sources"]), scores, data.get("model_name"),
                       dict(data.get("seconds") or {}))
        except (KeyError, TypeError) as err:
            raise DataError(f"{where} is damaged ({type(err).__name__}: {str(err)[:200]}); run the analysis "
                            "again.") from None

    def save(self, out_dir: str | Path) -> list[Path]:
        """OUT/robustness.json, OUT/robustness_by_source.png (Fig. 3 style), OUT/robustness_by_samples.png
        (Fig. 10 style)."""
        from layerdrop_patch.scoring.robustness_plots import plot_scores_by_samples, plot_scores_by_source

        out = Path(out_dir)
        return [atomic_write_json(out / "robustness.json", self.to_dict()),
                plot_scores_by_source(self, out / "robustness_by_source.png"),
                plot_scores_by_samples(self, out / "robustness_by_samples.png")]


def _finite(value: Any) -> Any:
    """NaN (an undefined correlation, an absent sublayer) as JSON null."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


# ------------------------------------------------------------------------------------------------ scoring
def _label(source: str, taken: set[str]) -> str:
    path = Path(source)
    label = path.stem if (path.suffix or path.exists()) else source
    base, i = label, 2
    while label in taken:
        label, i = f"{base}-{i}", i + 1
    taken.add(label)
    return label


def _merge(total: ImportanceScores | None, tokens: int, part: ImportanceScores, part_tokens: int) -> ImportanceScores:
    """Token-weighted mean of the scores of two disjoint sample sets (every score is a mean over tokens)."""
    if total is None:
        return part
    w = tokens / (tokens + part_tokens)
    metrics = {m: {k: [a * w + b * (1 - w) for a, b in zip(total.metrics[m][k], part.metrics[m][k])]
                   for k in KINDS} for m in part.metrics}
    return ImportanceScores(metrics, part.metric, part.model_name, part.calibration, tokens + part_tokens,
                            part.dropped)


def score_robustness(model: Any, tokenizer: Any, config: RobustnessConfig | None = None, *, offload: bool = False,
                     progress: bool = True, model_name: str | None = None, **overrides: Any) -> RobustnessResult:
    """Score `model` on every (source, sample count) of `config` and return the settings and their agreement.

    Every source is tokenized first, so a source too short for the largest count is refused before any
    scoring starts. Keywords override fields of `config` (``score_robustness(m, tok, sources=["c4", "a.txt"])``).
    """
    config = RobustnessConfig.build(config, **overrides)
    counts = sorted(config.sample_counts)
    calibrations, sources, taken = [], [], set()
    for source in config.sources:
        with warnings.catch_warnings():  # a short source is an error here, with advice, not a warning
            warnings.simplefilter("ignore")
            cal = load_calibration(source, tokenizer, counts[-1], config.seq_len, config.seed)
        if cal.n_samples < counts[-1]:
            raise DataError(f"calibration source {source!r} holds only {cal.n_samples} samples of {config.seq_len} "
                            f"tokens, but sample_counts goes up to {counts[-1]}. Use counts up to {cal.n_samples} "
                            f"(--sample-counts), a smaller seq_len, or more text.")
        calibrations.append(cal)
        sources.append({"label": _label(source, taken), "source": source, "description": cal.description})
    scores, seconds = {}, {}
    for cal, info in zip(calibrations, sources):
        start, total, done = time.perf_counter(), None, 0
        for n in counts:  # increments of the nested prefixes: samples [done, n)
            part = compute_importance(model, cal.input_ids[done:n], batch_size=config.batch_size,
                                      metric=config.metric, offload=offload, progress=progress)
            total = _merge(total, done * config.seq_len, part, (n - done) * config.seq_len)
            done = n
            scores[(info["label"], n)] = ImportanceScores(
                total.metrics, config.metric, model_name or total.model_name,
                f"{info['description']}; first {n} samples", n * config.seq_len, total.dropped)
        seconds[info["label"]] = round(time.perf_counter() - start, 2)
    return RobustnessResult(config, sources, scores, model_name or scores[(sources[0]["label"], counts[0])].model_name,
                            seconds)
