"""Paired comparisons: is model A really better than model B on these documents, or is it noise?

Two selection methods evaluated on the same documents differ far less than their two independent error bars
suggest, because most documents are easy or hard for both. Pairing removes that shared variance:

* accuracy: McNemar's exact test on the discordant documents (right for A, wrong for B, and the reverse), and a
  paired bootstrap interval for the accuracy difference;
* perplexity: a paired bootstrap over evaluation windows of the difference in mean NLL per token, reported as
  a perplexity ratio B / A with its interval. Consecutive windows come from the same article, so their differences
  are correlated and resampling single windows overstates confidence when there are few articles; `block=b`
  resamples runs of b consecutive windows instead (a moving-block bootstrap), which keeps that correlation.

A table may say "A is better than B" only when the verdict here says so at the chosen level (default 0.05).
"""

from __future__ import annotations

import math
import random
from dataclasses import asdict, dataclass
from typing import Any, Sequence

from layerdrop_patch.errors import DataError

__all__ = ["ARTICLE_WINDOWS", "PairedResult", "mcnemar_p", "compare_accuracy", "compare_perplexity",
           "compare_perplexity_with_blocks", "compare_evaluations"]

# 8 windows of 512 tokens = 4,096 tokens, about one WikiText-2 article: the block that keeps the correlation
# between neighbouring windows. A block test needs several blocks: it is run from 4 blocks' worth of windows.
ARTICLE_WINDOWS = 8


@dataclass
class PairedResult:
    """A - B (accuracy) or B / A (perplexity ratio), its 95% interval, a p-value and a plain verdict."""

    measure: str
    a: float
    b: float
    difference: float
    low: float
    high: float
    p_value: float
    n: int
    verdict: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def mcnemar_p(a_only: int, b_only: int) -> float:
    """Two-sided exact McNemar p-value: under H0 the discordant pairs split 50/50 (a binomial test)."""
    n = a_only + b_only
    if n == 0:
        return 1.0
    k = min(a_only, b_only)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2.0 ** n
    return min(1.0, 2.0 * tail)


def _bootstrap(values: Sequence[float], statistic, iters: int, seed: int) -> tuple[float, float]:
    rng = random.Random(seed)
    n = len(values)
    stats = sorted(statistic([values[rng.randrange(n)] for _ in range(n)]) for _ in range(iters))
    return stats[int(0.025 * iters)], stats[min(iters - 1, int(0.975 * iters))]


def _verdict(better: bool, worse: bool, names: tuple[str, str]) -> str:
    if better:
        return f"{names[0]} is better than {names[1]}"
    if worse:
        return f"{names[1]} is better than {names[0]}"
    return "no significant difference"


def compare_accuracy(per_doc_a: dict[str, float], per_doc_b: dict[str, float], *, names=("A", "B"),
                     alpha: float = 0.05, iters: int = 2000, seed: int = 0) -> PairedResult:
    """Accuracy of A and B on the documents both were scored on (keys "task/doc_id", values 0/1)."""
    keys = sorted(set(per_doc_a) & set(per_doc_b))
    if not keys:
        raise DataError("the two evaluations share no documents; evaluate both on the same tasks and documents.")
    a = [per_doc_a[k] for k in keys]
    b = [per_doc_b[k] for k in keys]
    diffs = [x - y for x, y in zip(a, b)]
    a_only = sum(1 for x, y in zip(a, b) if x > y)
    b_only = sum(1 for x, y in zip(a, b) if y > x)
    p = mcnemar_p(a_only, b_only)
    low, high = _bootstrap(diffs, lambda d: sum(d) / len(d), iters, seed)
    mean_a, mean_b = sum(a) / len(a), sum(b) / len(b)
    return PairedResult("accuracy", mean_a, mean_b, mean_a - mean_b, low, high, p, len(keys),
                        _verdict(p < alpha and mean_a > mean_b, p < alpha and mean_b > mean_a, names))


def _block_resample(pairs: list, block: int, rng: random.Random) -> list:
    """One moving-block bootstrap sample: runs of `block` consecutive windows from random starts, cut to len(pairs).
    With block=1 it is the ordinary bootstrap."""
    n = len(pairs)
    sample: list = []
    while len(sample) < n:
        start = rng.randrange(n - block + 1)
        sample.extend(pairs[start:start + block])
    return sample[:n]


def compare_perplexity(details_a: dict, details_b: dict, *, names=("A", "B"), alpha: float = 0.05,
                       iters: int = 2000, seed: int = 0, block: int = 1) -> PairedResult:
    """Perplexities of A and B from `perplexity(..., return_details=True)` on the same windows; `difference` is
    ppl(B) / ppl(A) (above 1: A is better), its interval from a paired bootstrap over windows, resampled in runs
    of `block` consecutive windows (1: each window on its own)."""
    na, nb = details_a.get("window_nll"), details_b.get("window_nll")
    if not na or not nb or details_a.get("window_tokens") != details_b.get("window_tokens"):
        raise DataError("the two perplexity runs were not on the same windows (same text, seq_len, stride and "
                        "max_tokens); rerun both with the same settings and return_details=True.")
    if isinstance(block, bool) or not isinstance(block, int) or not 1 <= block <= len(na):
        raise DataError(f"block={block!r}: the bootstrap block is a whole number of consecutive windows, from 1 to "
                        f"the {len(na)} windows compared.")
    tokens = details_a["window_tokens"]
    pairs = list(zip(na, nb, tokens))

    def log_ratio(sample):  # mean NLL per token of B minus that of A, over the resampled windows
        total = sum(t for _, _, t in sample)
        return (sum(b for _, b, _ in sample) - sum(a for a, _, _ in sample)) / total

    observed = log_ratio(pairs)
    rng = random.Random(seed)
    stats = sorted(log_ratio(_block_resample(pairs, block, rng)) for _ in range(iters))
    low, high = stats[int(0.025 * iters)], stats[min(iters - 1, int(0.975 * iters))]
    # two-sided bootstrap p-value for "no difference": how often the resampled difference crosses zero
    crossing = sum(1 for s in stats if (s <= 0 if observed > 0 else s >= 0)) / iters
    p = min(1.0, 2.0 * crossing)
    ppl_a, ppl_b = math.exp(sum(na) / sum(tokens)), math.exp(sum(nb) / sum(tokens))
    return PairedResult("perplexity", ppl_a, ppl_b, math.exp(observed), math.exp(low), math.exp(high), p,
                        len(pairs), _verdict(p < alpha and observed > 0, p < alpha and observed < 0, names))


def compare_perplexity_with_blocks(details_a: dict, details_b: dict, *, names=("A", "B"),
                                   alpha: float = 0.05) -> dict[str, Any]:
    """`compare_perplexity(...).to_dict()` window by window and, from 4 blocks' worth of windows up, under "blocks"
    the test over runs of ARTICLE_WINDOWS neighbouring windows (the one to trust when the two differ)."""
    out = compare_perplexity(details_a, details_b, names=names, alpha=alpha).to_dict()
    if len(details_a["window_nll"]) >= 4 * ARTICLE_WINDOWS:
        blocks = compare_perplexity(details_a, details_b, names=names, alpha=alpha, block=ARTICLE_WINDOWS)
        out["blocks"] = {**blocks.to_dict(), "block": ARTICLE_WINDOWS}
    return out


def compare_evaluations(a: dict, b: dict, *, names=("A", "B"), alpha: float = 0.05) -> dict[str, Any]:
    """Paired comparisons of two `evaluate_model` results: every shared task, all tasks pooled, perplexity (window
    by window, and under "blocks" over runs of ARTICLE_WINDOWS windows when there are enough of them)."""
    out: dict[str, Any] = {"tasks": {}}
    pooled_a, pooled_b = {}, {}
    for task, result in a.get("tasks", {}).items():
        other = b.get("tasks", {}).get(task)
        if other and result.get("per_doc") and other.get("per_doc"):
            out["tasks"][task] = compare_accuracy(result["per_doc"], other["per_doc"], names=names,
                                                  alpha=alpha).to_dict()
            pooled_a.update({f"{task}:{k}": v for k, v in result["per_doc"].items()})
            pooled_b.update({f"{task}:{k}": v for k, v in other["per_doc"].items()})
    if pooled_a:
        out["pooled"] = compare_accuracy(pooled_a, pooled_b, names=names, alpha=alpha).to_dict()
    pa, pb = a.get("perplexity") or {}, b.get("perplexity") or {}
    if pa.get("window_nll") and pb.get("window_nll"):
        out["perplexity"] = compare_perplexity_with_blocks(pa, pb, names=names, alpha=alpha)
    return out
