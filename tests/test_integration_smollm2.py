"""The real SmolLM2-135M: patched logits against the hand-written reference, cached generation, KV bytes."""

import copy

import pytest
import torch

from layerdrop_patch import DropConfig, apply_drop
from layerdrop_patch.patch import kv_cache_bytes, returned_cache
from tests.reference_forward import reference_logits

pytestmark = pytest.mark.integration


def test_smollm2_patched_logits_match_reference(smollm2):
    model, tokenizer = smollm2
    cfg = DropConfig(attn=[0, 9, 17, 25], mlp=[25, 28])
    ids = tokenizer("Layer dropping keeps the residual stream intact.", return_tensors="pt").input_ids
    patched = apply_drop(copy.deepcopy(model), cfg)
    with torch.no_grad():
        expected = reference_logits(model, ids, set(cfg.attn), set(cfg.mlp))
        torch.testing.assert_close(patched(ids).logits, expected, atol=2e-4, rtol=1e-4)


@pytest.mark.parametrize("cache", ["dynamic", "static"])
def test_smollm2_generation_with_compact_cache_equals_no_cache(smollm2, cache):
    model, tokenizer = smollm2
    cfg = DropConfig(attn=[0, 14, 16, 18, 20, 22])
    patched = apply_drop(copy.deepcopy(model), cfg)
    inputs = tokenizer(["The water cycle", "Paris is the capital of"], return_tensors="pt", padding=True,
                       padding_side="left")
    kwargs = dict(max_new_tokens=6, min_new_tokens=6, do_sample=False, pad_token_id=tokenizer.eos_token_id)
    cached = patched.generate(**inputs, cache_implementation=cache, return_dict_in_generate=True, **kwargs)
    uncached = patched.generate(**inputs, use_cache=False, **kwargs)
    assert cached.sequences.tolist() == uncached.tolist()
    baseline = model.generate(**inputs, cache_implementation=cache, return_dict_in_generate=True, **kwargs)
    kept, total = 30 - len(cfg.attn), 30
    assert kv_cache_bytes(returned_cache(cached)) * total == kv_cache_bytes(returned_cache(baseline)) * kept
