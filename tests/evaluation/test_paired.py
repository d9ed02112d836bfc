"""Paired comparisons against independent computations (exact binomial tails, hand-made cases)."""

from __future__ import annotations

import math

import pytest
import torch

from layerdrop_patch.evaluation.paired import compare_accuracy, compare_perplexity, mcnemar_p
from layerdrop_patch.evaluation.perplexity import perplexity
from layerdrop_patch.evaluation.toy import byte_tokenizer, tiny_llama
from layerdrop_patch.errors import LayerdropError


def test_mcnemar_is_the_two_sided_exact_binomial_test():
    # 8 discordant pairs split 7:1 -> P(X <= 1 | n=8, 1/2) = 9/256, two-sided 18/256
    assert mcnemar_p(7, 1) == pytest.approx(18 / 256)
    assert mcnemar_p(0, 0) == 1.0 and mcnemar_p(3, 3) == 1.0


def test_accuracy_verdicts_need_significance():
    a = {f"t/{i}": 1.0 for i in range(200)}
    b = {f"t/{i}": (0.0 if i < 40 else 1.0) for i in range(200)}  # B wrong on 40 docs A gets right
    result = compare_accuracy(a, b, names=("greedy", "one-shot"))
    assert result.verdict == "greedy is better than one-shot" and result.p_value < 1e-9
    assert result.difference == pytest.approx(0.2) and result.low > 0.1 and result.high <= 0.3
    noisy = {f"t/{i}": (0.0 if i in (3, 9) else 1.0) for i in range(200)}  # 2 discordant docs: noise
    b_noisy = {f"t/{i}": (0.0 if i == 5 else 1.0) for i in range(200)}
    assert compare_accuracy(noisy, b_noisy).verdict == "no significant difference"
    with pytest.raises(LayerdropError, match="share no documents"):
        compare_accuracy({"x/1": 1.0}, {"y/1": 1.0})


def test_perplexity_comparison_pairs_windows_and_batched_windows_equal_single_ones():
    tok = byte_tokenizer()
    text = "the cat sat on the mat and looked at the dog. " * 60
    strong, weak = tiny_llama(num_layers=2, seed=0), tiny_llama(num_layers=2, seed=1)
    with torch.no_grad():
        for p in strong.parameters():
            p.mul_(0.0)  # predicts uniformly over the 258 bytes
        for p in weak.parameters():
            p.mul_(3.0)  # confident and random: far worse than uniform
    a = perplexity(strong, tok, text, seq_len=64, stride=64, return_details=True, progress=False)
    one_by_one = perplexity(strong, tok, text, seq_len=64, stride=64, return_details=True, progress=False,
                            batch_size=1)
    assert a["window_nll"] == pytest.approx(one_by_one["window_nll"], rel=1e-5)
    b = perplexity(weak, tok, text, seq_len=64, stride=64, return_details=True, progress=False)
    result = compare_perplexity(a, b, names=("strong", "weak"))
    assert result.difference == pytest.approx(b["perplexity"] / a["perplexity"], rel=1e-9)
    assert result.difference > 1 and result.low > 1 and result.verdict == "strong is better than weak"
    assert math.isclose(result.a, 258.0, rel_tol=1e-3)  # uniform over the byte vocabulary
    with pytest.raises(LayerdropError, match="same windows"):
        compare_perplexity(a, perplexity(weak, tok, text, seq_len=32, stride=32, return_details=True,
                                         progress=False))


def _article_windows(effects: list[float], per_article: int) -> tuple[dict, dict]:
    """Windows of 100 tokens, `per_article` consecutive ones per article; B's NLL per token exceeds A's by the
    article's effect (plus a little window noise), as when consecutive windows share one article's topic."""
    tokens, na, nb = [], [], []
    for j, effect in enumerate(effects):
        for w in range(per_article):
            noise = 0.01 * ((7 * j + 3 * w) % 5 - 2)
            tokens.append(100)
            na.append(400.0)
            nb.append(400.0 + 100 * (effect + noise))
    return {"window_nll": na, "window_tokens": tokens}, {"window_nll": nb, "window_tokens": tokens}


def test_a_block_bootstrap_sees_that_correlated_windows_carry_less_evidence():
    # 8 articles x 16 windows: B is worse on average, but the articles disagree; 128 windows look like strong
    # evidence only if they are treated as independent
    a, b = _article_windows([0.6, -0.5, 0.4, -0.3, 0.5, -0.4, 0.3, 0.1], per_article=16)
    single = compare_perplexity(a, b, names=("A", "B"))
    blocks = compare_perplexity(a, b, names=("A", "B"), block=16)
    observed = math.exp((sum(b["window_nll"]) - sum(a["window_nll"])) / sum(a["window_tokens"]))
    assert single.difference == pytest.approx(observed) and blocks.difference == pytest.approx(observed)
    assert single.verdict == "A is better than B" and 0.01 < single.p_value < 0.05
    assert compare_perplexity(a, b, alpha=0.01).verdict == "no significant difference"  # the level asked for
    assert blocks.verdict == "no significant difference" and blocks.p_value > 0.2
    assert blocks.high - blocks.low > 2 * (single.high - single.low)  # a much wider interval
    # one block of every window resamples the series itself: no spread at all
    whole = compare_perplexity(a, b, block=128)
    assert whole.low == pytest.approx(observed) and whole.high == pytest.approx(observed)
    for bad in (0, 129, 2.5, True):
        with pytest.raises(LayerdropError, match="block="):
            compare_perplexity(a, b, block=bad)
