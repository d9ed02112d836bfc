"""Every supported family beyond Llama: checkpoints (library, remote code, without the package), load-time
drops, importance scores and the hybrid sliding/full compact cache, all against the hand-written reference.

The drop / cache-generation equivalence itself runs for every family through `arch_case` in test_patch.py
and test_kv_cache.py; this file adds what those parametrise only over Llama/Mistral.
"""

from __future__ import annotations

import copy
import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from layerdrop_patch.checkpoint import run_without_package
from layerdrop_patch import DropConfig
from layerdrop_patch.architectures import UnsupportedArchitectureError, get_architecture
from layerdrop_patch.checkpoint import from_pretrained, save_pretrained
from layerdrop_patch.patch import apply_drop, returned_cache
from layerdrop_patch.scoring import compute_importance
from tests.conftest import ARCHITECTURE_CASES, load_kwargs, tiny_config, tiny_model
from tests.reference_forward import reference_greedy, reference_logits

NUM_LAYERS = 6
# Attention of layers 0, 3, 5 and MLP of 1, 3: layer 3 is a whole block, the others are partial. With the
# hybrid cases this removes sliding and full attention layers alike.
JOINT = DropConfig(attn=[0, 3, 5], mlp=[1, 3])
NEW_CASES = [case for case in ARCHITECTURE_CASES if case.id not in ("llama", "mistral")]  # test_checkpoint has those
HYBRID_CASES = [  # sliding and full attention layers in one model
    case for case in ARCHITECTURE_CASES
    if len(set(getattr(tiny_config(case.values[0][0], NUM_LAYERS, **case.values[0][1]), "layer_types", None) or ())) > 1
]
IDS = torch.randint(1, 128, (2, 16), generator=torch.Generator().manual_seed(21))  # longer than window 6


def _logits(model, ids=IDS):
    with torch.no_grad():
        return model(ids).logits


@pytest.fixture(params=NEW_CASES)
def case(request):
    return request.param


def test_round_trips_and_load_time_drop_equal_the_reference(case, tmp_path):
    model_type, overrides = case
    base = tiny_model(model_type, NUM_LAYERS, **overrides)
    model = apply_drop(copy.deepcopy(base), JOINT)
    expected = _logits(model)
    torch.testing.assert_close(expected, reference_logits(base, IDS, set(JOINT.attn), set(JOINT.mlp)),
                               atol=5e-5, rtol=1e-4)

    save_pretrained(model, tmp_path / "ckpt")
    config = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    assert config["model_type"] == "layerdrop_" + model_type
    assert config["auto_map"]["AutoModelForCausalLM"].startswith("modeling_layerdrop.LayerDrop")
    kwargs = load_kwargs(model_type)
    for loaded in (from_pretrained(tmp_path / "ckpt", **kwargs),
                   AutoModelForCausalLM.from_pretrained(tmp_path / "ckpt", trust_remote_code=True, **kwargs)):
        assert torch.equal(_logits(loaded), expected)
        assert DropConfig.from_model(loaded).mlp == [1, 3]

    base.save_pretrained(tmp_path / "base")
    at_load = from_pretrained(tmp_path / "base", drop_config=JOINT, **kwargs)
    assert not hasattr(at_load.model.layers[0], "self_attn") and not hasattr(at_load.model.layers[1], "mlp")
    assert torch.equal(_logits(at_load), expected)


_LOAD_MANY = """
import torch
from transformers import AutoModelForCausalLM
ids = torch.tensor({ids!r})
results = {{}}
for name, (path, kwargs) in {ckpts!r}.items():
    model = AutoModelForCausalLM.from_pretrained(path, trust_remote_code=True, **kwargs).eval()
    gens = {{c: model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=12, min_new_tokens=12,
                              do_sample=False, pad_token_id=0, cache_implementation=c).tolist()
            for c in ("dynamic", "static")}}
    with torch.no_grad():
        logits = model(ids).logits
    results[name] = {{"class": type(model).__name__, "gen": gens, "logits": logits.tolist()}}
print(json.dumps(results))
"""


def test_every_family_loads_and_generates_past_the_window_without_the_package(tmp_path):
    """One subprocess for all families (transformers imports once): remote code only, 12 new tokens after
    a 5-token prompt cross the 6-token windows; both caches must equal no-cache recomputation."""
    prompt = torch.randint(1, 128, (1, 5), generator=torch.Generator().manual_seed(22))
    ckpts, bases, models = {}, {}, {}
    for param in NEW_CASES:
        model_type, overrides = param.values[0]
        bases[param.id] = tiny_model(model_type, NUM_LAYERS, **overrides)
        models[param.id] = apply_drop(copy.deepcopy(bases[param.id]), JOINT)
        ckpts[param.id] = (str(save_pretrained(models[param.id], tmp_path / param.id)), load_kwargs(model_type))
    out = run_without_package(_LOAD_MANY.format(ckpts=ckpts, ids=prompt.tolist()), cwd=tmp_path)
    assert out.pop("layerdrop_modules") == []
    for name, got in out.items():
        expected = reference_greedy(bases[name], prompt, 12, set(JOINT.attn), set(JOINT.mlp)).tolist()
        assert got["gen"]["dynamic"] == got["gen"]["static"] == expected, name
        assert got["class"].startswith("LayerDrop"), name
        torch.testing.assert_close(torch.tensor(got["logits"]), _logits(models[name], prompt), rtol=0, atol=0)


def _expected_scores(trace):
    """Mean over tokens of 1 - cos(X, Y) for attention, MLP and block, from the reference's residual stream."""
    def score(x, y):
        return float((1 - torch.nn.functional.cosine_similarity(x.double(), y.double(), dim=-1)).mean())

    return {"attn": [score(x, a) for x, a, _ in trace], "mlp": [score(a, y) for _, a, y in trace],
            "block": [score(x, y) for x, _, y in trace]}


@pytest.mark.parametrize("drop", [DropConfig(), DropConfig(attn=[1, 2], mlp=[2, 4])], ids=["intact", "dropped"])
def test_scores_follow_each_familys_residual_stream(case, drop):
    """Scores are defined on the residual stream around each branch, post-norms (Gemma) included."""
    model_type, overrides = case
    base = tiny_model(model_type, NUM_LAYERS, **overrides)
    trace: list = []
    reference_logits(base, IDS, set(drop.attn), set(drop.mlp), trace=trace)
    expected = _expected_scores(trace)
    model = apply_drop(copy.deepcopy(base), drop) if drop.attn or drop.mlp else base
    scores = compute_importance(model, IDS, batch_size=2, progress=False)
    whole_blocks = sorted(set(drop.attn) & set(drop.mlp))  # a block with nothing left has no score either
    for kind, dropped in (("attn", drop.attn), ("mlp", drop.mlp), ("block", whole_blocks)):
        got = scores.scores_for(kind)
        for i in range(NUM_LAYERS):
            if i in dropped:
                assert got[i] != got[i], f"{kind} {i} should be NaN (already removed)"
            else:
                assert abs(got[i] - expected[kind][i]) < 2e-5, (kind, i, got[i], expected[kind][i])
    if not (drop.attn or drop.mlp):  # layer-by-layer (offloaded) scoring replays each layer's own mask/RoPE
        offloaded = compute_importance(model, IDS, batch_size=2, progress=False, offload=True, device="cpu")
        for kind in ("attn", "mlp", "block"):
            assert max(abs(a - b) for a, b in zip(offloaded.scores_for(kind), scores.scores_for(kind))) < 1e-5


@pytest.mark.parametrize("hybrid", HYBRID_CASES)
def test_each_kept_attention_keeps_its_kind_in_the_compact_cache(hybrid):
    model_type, overrides = hybrid
    model = apply_drop(tiny_model(model_type, NUM_LAYERS, **overrides), JOINT)
    layer_types = model.config.layer_types
    kept = [i for i in range(NUM_LAYERS) if i not in JOINT.attn]
    out = model.generate(IDS[:1, :5], max_new_tokens=10, do_sample=False, pad_token_id=0, return_dict_in_generate=True)
    for cache in (returned_cache(out), model.make_cache(max_cache_len=32)):
        assert len(cache.layers) == len(kept)
        for cache_index, layer_index in enumerate(kept):
            sliding = layer_types[layer_index] == "sliding_attention"
            assert cache.layers[cache_index].is_sliding == sliding, (layer_index, cache_index)
            attn = model.model.layers[layer_index].self_attn
            assert attn.layer_idx == cache_index
            assert (attn.sliding_window is not None) == sliding


@pytest.mark.parametrize("cache", ["dynamic", "static"])
def test_left_padded_batch_crossing_the_window_on_a_hybrid_model(cache):
    """Per-row padding offsets and both mask kinds come from compact cache layers of the right kind."""
    model_type, overrides = next(c.values[0] for c in ARCHITECTURE_CASES if c.id.startswith("gemma3"))
    base = tiny_model(model_type, NUM_LAYERS, **overrides)
    cfg = DropConfig(attn=[0, 2], mlp=[4])  # drops the first sliding and the first full attention layer
    patched = apply_drop(copy.deepcopy(base), cfg)
    gen = torch.Generator().manual_seed(23)
    prompts = [torch.randint(1, 128, (n,), generator=gen) for n in (7, 3)]
    width = max(len(p) for p in prompts)
    ids = torch.zeros(len(prompts), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, p in enumerate(prompts):
        ids[row, width - len(p):] = p
        mask[row, width - len(p):] = 1
    out = patched.generate(ids, attention_mask=mask, max_new_tokens=8, min_new_tokens=8, do_sample=False,
                           pad_token_id=0, cache_implementation=cache)
    for row, p in enumerate(prompts):
        expected = reference_greedy(base, p.unsqueeze(0), 8, set(cfg.attn), set(cfg.mlp))
        assert out[row, width:].tolist() == expected[0, len(p):].tolist(), f"row {row}"


def test_multimodal_gemma3_is_refused_with_the_text_model_named():
    from transformers import Gemma3Config

    with pytest.raises(UnsupportedArchitectureError, match=r"'gemma3'.*gemma3_text"):
        get_architecture(Gemma3Config())
