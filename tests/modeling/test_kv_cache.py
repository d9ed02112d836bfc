"""Compact KV cache: generation with dynamic/static caches equals full recomputation, and bytes shrink exactly."""

import copy

import pytest
import torch
from transformers import DynamicCache

from layerdrop_patch import DropConfig
from layerdrop_patch.modeling.modeling_layerdrop import CACHE_KWARGS
from layerdrop_patch.patch import apply_drop, kv_cache_bytes, returned_cache
from tests.conftest import tiny_model
from tests.reference_forward import reference_greedy

NUM_LAYERS = 6
DROPS = {
    "first-attn": DropConfig(attn=[0]),
    "attn-and-mlp": DropConfig(attn=[0, 2, 5], mlp=[1, 2]),
    "blocks": DropConfig.blocks([0, 3]),
}


def _greedy(model, ids, new_tokens, **kwargs):
    kwargs.setdefault("attention_mask", torch.ones_like(ids))
    return model.generate(ids, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                          pad_token_id=0, **kwargs)


@pytest.mark.parametrize("drop", list(DROPS), ids=list(DROPS))
@pytest.mark.parametrize("cache", ["dynamic", "static"])
def test_greedy_generation_equals_full_recomputation(arch_case, drop, cache):
    model_type, overrides = arch_case
    base = tiny_model(model_type, NUM_LAYERS, **overrides)
    cfg = DROPS[drop]
    ids = torch.randint(1, 128, (1, 5), generator=torch.Generator().manual_seed(3))
    expected = reference_greedy(base, ids, 12, set(cfg.attn), set(cfg.mlp))  # crosses sliding window 6
    patched = apply_drop(copy.deepcopy(base), cfg)
    out = _greedy(patched, ids, 12, cache_implementation=cache)
    assert out.tolist() == expected.tolist()


@pytest.mark.parametrize("cache", ["dynamic", "static"])
def test_padded_batch_with_first_attention_dropped(cache):
    """Masks read lengths/offsets from cache layer 0; with attention 0 dropped that must be a filled layer."""
    base = tiny_model("llama", NUM_LAYERS)
    cfg = DropConfig(attn=[0, 1, 4])
    patched = apply_drop(copy.deepcopy(base), cfg)
    gen = torch.Generator().manual_seed(4)
    prompts = [torch.randint(1, 128, (n,), generator=gen) for n in (7, 4, 2)]
    width = max(len(p) for p in prompts)
    ids = torch.zeros(len(prompts), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, p in enumerate(prompts):  # left padding, as for generation
        ids[row, width - len(p):] = p
        mask[row, width - len(p):] = 1
    out = _greedy(patched, ids, 6, attention_mask=mask, cache_implementation=cache)
    for row, p in enumerate(prompts):
        expected = reference_greedy(base, p.unsqueeze(0), 6, set(cfg.attn), set(cfg.mlp))
        assert out[row, width:].tolist() == expected[0, len(p):].tolist(), f"row {row}"


def test_static_cache_with_torch_compile():
    base = tiny_model("llama", 4)
    cfg = DropConfig(attn=[0, 2])
    patched = apply_drop(copy.deepcopy(base), cfg)
    patched.forward = torch.compile(patched.forward, dynamic=False)
    ids = torch.randint(1, 128, (1, 6), generator=torch.Generator().manual_seed(5))
    out = _greedy(patched, ids, 5, cache_implementation="static")
    assert out.tolist() == reference_greedy(base, ids, 5, {0, 2}).tolist()


@pytest.mark.parametrize("cache", ["dynamic", "static"])
def test_kv_bytes_are_kept_over_total_times_baseline(arch_case, cache):
    model_type, overrides = arch_case
    base = tiny_model(model_type, NUM_LAYERS, **overrides)
    ids = torch.randint(1, 128, (2, 9), generator=torch.Generator().manual_seed(6))

    def kv_bytes(model):
        out = _greedy(model, ids, 4, cache_implementation=cache, return_dict_in_generate=True)
        return kv_cache_bytes(returned_cache(out)), len(returned_cache(out).layers), returned_cache(out)

    baseline, baseline_layers, baseline_cache = kv_bytes(base)
    assert baseline > 0 and baseline_layers == NUM_LAYERS
    # Hybrid models (sliding + full layers) hold different amounts per layer, so compare layer by layer:
    # the compact cache holds exactly the kept layers' share (kept/total of the baseline when all are alike).
    per_layer = [kv_cache_bytes(type("C", (), {"layers": [layer]})) for layer in baseline_cache.layers]
    for attn in ([0], [1, 2, 3], [0, 5]):
        dropped_bytes, layers, _ = kv_bytes(apply_drop(copy.deepcopy(base), DropConfig(attn=attn, mlp=[1])))
        kept = NUM_LAYERS - len(attn)
        assert layers == kept
        assert dropped_bytes == sum(b for i, b in enumerate(per_layer) if i not in attn)


def test_forward_without_cache_argument_builds_a_compact_cache():
    model = apply_drop(tiny_model("llama", NUM_LAYERS), DropConfig(attn=[0, 3]))
    out = model(torch.randint(1, 128, (1, 4)))
    assert len(returned_cache(out).layers) == 4 and returned_cache(out).get_seq_length() == 4
    assert len(model.make_cache(max_cache_len=16).layers) == 4


@pytest.mark.parametrize("keyword", CACHE_KWARGS)
def test_cache_built_for_the_full_model_is_refused_under_either_keyword(keyword):
    model = apply_drop(tiny_model("llama", NUM_LAYERS), DropConfig(attn=[0, 3]))
    ids = torch.randint(1, 128, (1, 4))
    full = DynamicCache(config=tiny_model("llama", NUM_LAYERS).config)
    with pytest.raises(ValueError, match=r"keeps 4 of 6 attention layers.*model.make_cache\(\)"):
        model(ids, **{keyword: full})
    with pytest.raises(ValueError, match=r"keeps 4 of 6 attention layers"):
        _greedy(model, ids, 2, **{keyword: DynamicCache(config=tiny_model("llama", NUM_LAYERS).config)})


@pytest.mark.parametrize("keyword", CACHE_KWARGS)
def test_a_compact_cache_passed_under_either_keyword_is_used(keyword):
    """Prefill, then decode one token through the cache given back: it must be the compact one, filled."""
    base = tiny_model("llama", NUM_LAYERS)
    model = apply_drop(copy.deepcopy(base), DropConfig(attn=[0, 3]))
    ids = torch.randint(1, 128, (1, 6), generator=torch.Generator().manual_seed(8))
    cache = model.make_cache()
    with torch.no_grad():
        first = model(ids[:, :5], **{keyword: cache})
        assert returned_cache(first) is cache and cache.get_seq_length() == 5 and len(cache.layers) == 4
        step = model(ids[:, 5:], **{keyword: cache}).logits[0, -1]
        full = model(ids, use_cache=False).logits[0, -1]
    torch.testing.assert_close(step, full, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="both `cache` and `past_key_values`"):  # the decoder stack takes both names
        model.model(ids, cache=model.make_cache(), past_key_values=model.make_cache())


def test_all_attention_dropped_still_generates():
    base = tiny_model("llama", 3)
    cfg = DropConfig(attn=[0, 1, 2])
    model = apply_drop(copy.deepcopy(base), cfg)
    ids = torch.randint(1, 128, (1, 4), generator=torch.Generator().manual_seed(7))
    out = _greedy(model, ids, 4, return_dict_in_generate=True)
    assert kv_cache_bytes(returned_cache(out)) == 0
    assert out.sequences.tolist() == reference_greedy(base, ids, 4, {0, 1, 2}).tolist()
