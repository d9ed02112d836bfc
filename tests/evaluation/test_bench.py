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


def test_engine_option_and_its_rules():
    from layerdrop_patch.evaluation.bench import BenchConfig

    choices = BenchConfig.__dataclass_fields__["engine"].metadata["choices"]()
    assert {"transformers", "vllm", "llama.cpp"} <= set(choices)
    assert BenchConfig().engine == "transformers"
    with pytest.raises(ValueError, match="did you mean 'vllm'"):
        BenchConfig(engine="vlm")
    with pytest.raises(ValueError, match="manages its own KV cache"):
        BenchConfig(engine="vllm", cache_implementation="static")
    with pytest.raises(ValueError, match="only llama.cpp serves GGUF"):
        BenchConfig(engine="vllm", gguf_type="q8_0")
    with pytest.raises(ValueError, match="gguf_type"):
        BenchConfig(engine="llama.cpp", gguf_type="q4_k_m")
    with pytest.raises(ValueError, match="threads"):
        BenchConfig(threads=0)
    assert BenchConfig(engine="llama.cpp", gguf_type="q8_0", threads=1).gguf_type == "q8_0"


def test_compare_engine_transformers_is_compare_generate_with_threads(models):
    from layerdrop_patch.evaluation.bench import compare_engine

    base, dropped = models
    before = torch.get_num_threads()
    out = compare_engine({"base": base, "attn3": dropped}, 258, engine="transformers", threads=1, batch_size=1,
                         prompt_len=8, new_tokens=4, repeats=1, warmup=0, progress=False)
    assert torch.get_num_threads() == before
    assert out["settings"]["engine"] == "transformers" and out["settings"]["torch_threads"] == 1
    assert out["models"]["attn3"]["kv_cache_layers"] == 1 and out["models"]["base"]["format"] == "patched model"
    assert out["ratios"]["attn3"]["kv_cache_ratio"] == pytest.approx(1 / 4)


def test_compare_generate_refuses_other_engines_and_missing_engines_say_how(models):
    from layerdrop_patch.errors import MissingDependencyError
    from layerdrop_patch.evaluation.bench import compare_engine

    base, _ = models
    with pytest.raises(ValueError, match="compare_engine"):
        compare_generate({"base": base}, 258, engine="vllm")
    with pytest.raises(MissingDependencyError, match="does not exist"):
        compare_engine({"base": base}, 258, engine="vllm", engine_python="/nonexistent/python", progress=False)
