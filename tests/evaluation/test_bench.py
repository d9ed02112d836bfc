"""The generate() benchmark on tiny models: runs end to end, KV bytes equal the cache-shape arithmetic,
dropped attention layers shrink the cache."""

import copy

import pytest
import torch

from layerdrop_patch import DropConfig
from layerdrop_patch.evaluation.bench import benchmark_generate, compare_generate, expected_kv_bytes
from layerdrop_patch.evaluation.toy import tiny_llama
from layerdrop_patch.patch import apply_drop


@pytest.fixture(scope="module")
def models():
    base = tiny_llama(num_layers=4, seed=1)
    dropped = apply_drop(copy.deepcopy(base), DropConfig(attn=[1, 2, 3]))
    return base, dropped


def test_benchmark_generate_dynamic_cache(models):
    base, _ = models
    r = benchmark_generate(base, 258, batch_size=2, prompt_len=12, new_tokens=5, repeats=2, warmup=0)
    # 4 layers x (K,V) x batch 2 x 2 kv heads x (12 + 5 - 1) tokens x head_dim 16 x 4 bytes
    assert r["kv_cache_bytes"] == 4 * 2 * 2 * 2 * 16 * 16 * 4
    assert r["kv_cache_bytes"] == expected_kv_bytes(base.config, 2, 12 + 5 - 1, torch.float32)
    assert r["kv_cache_layers"] == 4
    assert r["prefill_s"] > 0 and r["decode_s"] > 0 and r["total_s"] >= r["prefill_s"]
    assert r["total_tok_s"] == pytest.approx(2 * 5 / r["total_s"])
    assert r["decode_tok_s"] == pytest.approx(2 * 4 / r["decode_s"])
    assert r["repeats"] == 2 and r["settings"]["cache_implementation"] == "dynamic"


def test_compare_dropped_model_static_cache(models):
    base, dropped = models
    out = compare_generate({"base": base, "attn3": dropped}, 258, batch_size=1, prompt_len=8, new_tokens=4,
                           repeats=1, warmup=0, cache_implementation="static", progress=False)
    b, d = out["models"]["base"], out["models"]["attn3"]
    assert b["kv_cache_layers"] == 4 and d["kv_cache_layers"] == 1
    assert out["ratios"]["attn3"]["kv_cache_ratio"] == pytest.approx(1 / 4)
    assert out["ratios"]["base"]["total_speedup"] == 1.0
    assert out["ratios"]["attn3"]["total_speedup"] == pytest.approx(b["total_s"] / d["total_s"])
    assert d["kv_cache_bytes"] % expected_kv_bytes(dropped.config, 1, 1, torch.float32) == 0


def test_bad_arguments(models):
    base, _ = models
    with pytest.raises(ValueError, match="cache_implementation"):
        benchmark_generate(base, 258, cache_implementation="paged")
    with pytest.raises(ValueError):
        benchmark_generate(base, 258, new_tokens=0)
