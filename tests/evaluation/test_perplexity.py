"""Perplexity against a direct per-token computation; SDR arithmetic and its documented edge cases."""

import math

import pytest
import torch

from layerdrop_patch.evaluation.perplexity import load_text, perplexity, window_plan
from layerdrop_patch.evaluation.sdr import sdr
from layerdrop_patch.evaluation.toy import byte_tokenizer, tiny_llama

TEXT = "The quick brown fox jumps over the lazy dog. Pack my box with five dozen jugs!"


@pytest.fixture(scope="module")
def tiny():
    return tiny_llama(num_layers=2, seed=3), byte_tokenizer()


def _direct_ppl(model, ids, seq_len, stride):
    """Token by token: token t is scored by the first window that contains it, i.e. the one starting at
    the smallest multiple b of `stride` with t < b + seq_len, using context ids[b:t]. If b == t (possible
    only for non-overlapping windows) nothing in that window predicts t, so t is not scored."""
    nll, count = 0.0, 0
    for t in range(1, len(ids)):
        b = max(0, -(-(t - seq_len + 1) // stride) * stride)
        if b >= t:
            continue
        ctx = torch.tensor([ids[b:t]])
        with torch.no_grad():
            logits = model(input_ids=ctx).logits[0, -1].double()
        nll -= torch.log_softmax(logits, -1)[ids[t]].item()
        count += 1
    return math.exp(nll / count)


@pytest.mark.parametrize("seq_len,stride", [(16, 16), (16, 5), (500, 500)])
def test_perplexity_matches_direct_computation(tiny, seq_len, stride):
    model, tok = tiny
    ids = tok(TEXT, add_special_tokens=False)["input_ids"]
    got = perplexity(model, tok, TEXT, seq_len=seq_len, stride=stride, progress=False)
    assert got == pytest.approx(_direct_ppl(model, ids, seq_len, stride), rel=1e-5)


def test_perplexity_details_and_max_tokens(tiny):
    model, tok = tiny
    d = perplexity(model, tok, TEXT, seq_len=16, stride=None, max_tokens=40, progress=False, return_details=True)
    # non-overlapping windows of 16 over 40 tokens: the first token of each window is unscored
    assert d["total_tokens"] == 40 and d["scored_tokens"] == 40 - 3 and d["windows"] == 3
    assert math.exp(d["nll_sum"] / d["scored_tokens"]) == pytest.approx(d["perplexity"])


def test_window_plan_scores_every_token_once():
    for n, L, s in [(100, 16, 5), (37, 10, 10), (5, 8, 3), (64, 16, 1)]:
        scored = [t for b, e, f in window_plan(n, L, s) for t in range(f, e)]
        assert scored == list(range(1 if s < L else 0, n)) or L == s
        for b, e, f in window_plan(n, L, s):
            assert e - b <= L and b < f <= e
    with pytest.raises(ValueError):
        window_plan(10, 8, 9)


def test_load_text_datasets_and_typos():
    assert load_text("wikitext2").startswith("\n\n = Robert Boulter = ")
    assert len(load_text("c4")) > 1_000_000
    with pytest.raises(ValueError, match="Unknown perplexity dataset"):
        load_text("wikitxt2")


def test_sdr_arithmetic():
    # Avg 60 -> 57 (-5 %), speed 100 -> 125 tok/s (+25 %): gamma = -5 / 25 = -0.2
    assert sdr(60.0, 57.0, 100.0, 125.0) == pytest.approx(-0.2)
    # speed-up factors work the same way as throughputs
    assert sdr(0.60, 0.57, 1.0, 1.25) == pytest.approx(-0.2)
    assert sdr(50.0, 51.0, 1.0, 2.0) == pytest.approx(0.02)
    # slower and worse: both deltas negative, gamma positive (documented)
    assert sdr(50.0, 45.0, 1.0, 0.5) == pytest.approx(0.2)


def test_sdr_zero_speedup_rule_and_bad_input():
    assert sdr(50.0, 50.0, 1.0, 1.0) == 0.0
    assert sdr(50.0, 40.0, 1.0, 1.0) == -math.inf
    assert sdr(50.0, 55.0, 1.0, 1.0) == math.inf
    with pytest.raises(ValueError):
        sdr(50.0, 40.0, 0.0, 1.0)
    with pytest.raises(ValueError):
        sdr(0.0, 40.0, 1.0, 1.2)
    with pytest.raises(ValueError):
        sdr(float("nan"), 40.0, 1.0, 1.2)
