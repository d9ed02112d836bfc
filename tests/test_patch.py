"""apply_drop against an independent hand-written forward, structure, memory and error cases."""

import copy

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from layerdrop_patch import DropConfig
from layerdrop_patch.architectures import UnsupportedArchitectureError
from layerdrop_patch.patch import apply_drop, parameter_bytes
from tests.conftest import tiny_model
from tests.reference_forward import reference_logits

NUM_LAYERS = 6
_MODELS = {}


def _base(model_type, overrides):
    key = (model_type, tuple(sorted(overrides.items())))
    if key not in _MODELS:
        _MODELS[key] = tiny_model(model_type, NUM_LAYERS, **overrides)
    return _MODELS[key]


def test_empty_drop_is_bit_identical(arch_case):
    model_type, overrides = arch_case
    base = _base(model_type, overrides)
    ids = torch.randint(0, 128, (2, 12), generator=torch.Generator().manual_seed(1))
    patched = apply_drop(copy.deepcopy(base), DropConfig())
    with torch.no_grad():
        assert torch.equal(base(ids).logits, patched(ids).logits)


def test_reference_forward_matches_the_unpatched_model(arch_case):
    """Sanity check of the test oracle itself: with nothing skipped it must reproduce transformers."""
    model_type, overrides = arch_case
    base = _base(model_type, overrides)
    ids = torch.randint(0, 128, (2, 12), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(reference_logits(base, ids), base(ids).logits, atol=5e-5, rtol=1e-4)


layer_sets = st.sets(st.integers(0, NUM_LAYERS - 1), max_size=NUM_LAYERS)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(attn=layer_sets, mlp=layer_sets, seed=st.integers(0, 10_000))
def test_patched_logits_equal_reference_for_random_drops(arch_case, attn, mlp, seed):
    model_type, overrides = arch_case
    base = _base(model_type, overrides)
    ids = torch.randint(0, 128, (2, 10), generator=torch.Generator().manual_seed(seed))
    patched = apply_drop(copy.deepcopy(base), DropConfig(attn=sorted(attn), mlp=sorted(mlp)))
    with torch.no_grad():
        expected = reference_logits(base, ids, attn, mlp)
        torch.testing.assert_close(patched(ids, use_cache=False).logits, expected, atol=5e-5, rtol=1e-4)
        torch.testing.assert_close(patched(ids).logits, expected, atol=5e-5, rtol=1e-4)


def test_dropped_modules_are_removed_and_memory_freed():
    base = tiny_model("llama", NUM_LAYERS)
    layer = base.model.layers[0]
    attn_bytes = parameter_bytes(layer.self_attn) + parameter_bytes(layer.input_layernorm)
    mlp_bytes = parameter_bytes(layer.mlp) + parameter_bytes(layer.post_attention_layernorm)
    before = parameter_bytes(base)
    model = apply_drop(base, DropConfig(attn=[1, 4], mlp=[2]))
    assert parameter_bytes(model) == before - 2 * attn_bytes - mlp_bytes
    layers = model.model.layers
    assert not hasattr(layers[1], "self_attn") and not hasattr(layers[1], "input_layernorm")
    assert hasattr(layers[1], "mlp") and hasattr(layers[2], "self_attn")
    assert not hasattr(layers[2], "mlp") and not hasattr(layers[2], "post_attention_layernorm")
    assert (layers[1].skip_attn, layers[1].skip_mlp, layers[2].skip_attn, layers[3].skip_attn) == (True, False, False, False)
    assert [layers[i].self_attn.layer_idx for i in (0, 2, 3, 5)] == [0, 1, 2, 3]
    assert model.config.drop_config["attn"] == [1, 4]


def test_apply_is_cumulative_and_refuses_to_restore():
    model = apply_drop(tiny_model("llama", NUM_LAYERS), DropConfig(attn=[1]))
    apply_drop(model, DropConfig(attn=[1, 3], mlp=[0]))
    assert not hasattr(model.model.layers[3], "self_attn")
    assert [model.model.layers[i].self_attn.layer_idx for i in (0, 2, 4, 5)] == [0, 1, 2, 3]
    with pytest.raises(ValueError, match=r"attention \[3\].*must include every earlier drop"):
        apply_drop(model, DropConfig(attn=[1], mlp=[0]))


def test_out_of_range_index_is_refused_before_anything_changes():
    model = tiny_model("llama", NUM_LAYERS)
    with pytest.raises(ValueError, match=r"index 6 is out of range.*0\.\.5"):
        apply_drop(model, DropConfig(attn=[0, 6]))
    assert hasattr(model.model.layers[0], "self_attn") and getattr(model.config, "drop_config", None) is None


def test_unsupported_architecture_names_the_supported_ones():
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=50))
    with pytest.raises(UnsupportedArchitectureError, match=r"'gpt2'.*supported model types: .*llama.*mistral"):
        apply_drop(model, DropConfig(attn=[0]))
