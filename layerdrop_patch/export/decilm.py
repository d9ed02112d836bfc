"""Export attention/MLP drops of Llama-family models in NVIDIA's Nemotron-NAS ("DeciLM") format, and reload it.

Why this format: it is the one heterogeneous-layer format that serving engines already implement. vLLM
serves `DeciLMForCausalLM` natively (per-layer attention/FFN no-ops, KV cache only for layers that keep
attention) and llama.cpp's converter turns it into a `deci` GGUF. Neither runs our remote code.

The schema written and checked here (`check_decilm_dir`) -- facts read from vLLM's `nemotron_nas.py` and its
model-arch config convertor, llama.cpp's `DeciModel` converter, and the config.json of published
Nemotron-NAS checkpoints:

* config.json: a Llama config plus `model_type "nemotron-nas"`, `architectures ["DeciLMForCausalLM"]`,
  `auto_map.AutoConfig` -> a shipped configuration file, and `block_configs`: one entry per layer,
  ``{"attention": {"no_op", "replace_with_linear", "n_heads_in_group"}, "ffn": {"no_op",
  "replace_with_linear", "ffn_mult"}}``. All keys are written explicitly: llama.cpp's converter indexes
  them directly. A no-op attention has `n_heads_in_group` null; a no-op FFN has `ffn_mult` null (the
  converter maps null to a feed-forward length of 0, anything else to a real width).
* kv heads of a kept attention = num_attention_heads // n_heads_in_group; vLLM sizes its cache from the
  first kept attention layer, so every kept layer must agree (ours always do).
* MLP width = round_up(int(2 * ffn_mult * hidden_size / 3), 256): the format can only express widths that
  are multiples of 256. `ffn_mult_for` picks a multiplier that comes back exactly; other widths are refused.
* weights: stock Llama names; a removed sublayer has no tensors at all, its norm included (vLLM raises on
  unexpected tensors).

Layer 0 without attention: vLLM's DeciLM layer starts its residual stream in the first attention it runs;
a model whose first running sublayer is an MLP hands the MLP a `None` residual and fails (or, with exactly
two tokens in a batch, silently splits the batch). llama.cpp reads head sizes from layer 0's head count, so a
`deci` GGUF whose layer 0 has no attention gets head size 0. We therefore give layer 0 an exact *zero
attention* when its attention is dropped (all-zero projections: it adds exactly 0 to the residual), unless
`zero_attention_layer0=False`. It costs one layer of KV cache; the reloader recognises it and drops it again.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch

from layerdrop_patch.errors import CheckpointError
from layerdrop_patch.config import DropConfig
from layerdrop_patch.architectures import drop_of
from layerdrop_patch.export.common import ExportError, global_tensors, sublayer_tensors
from layerdrop_patch.export.registry import check_supported, register_format
from layerdrop_patch.files import staged_directory

__all__ = ["export_decilm", "load_decilm", "check_decilm_dir", "ffn_mult_for", "intermediate_size_for",
           "CONFIG_FILE", "FFN_WIDTH_MULTIPLE"]

CONFIG_FILE = Path(__file__).with_name("configuration_decilm.py")
FFN_WIDTH_MULTIPLE = 256
_ATTN_KEYS = ("q_proj", "k_proj", "v_proj", "o_proj")
_MLP_KEYS = ("gate_proj", "up_proj", "down_proj")


# --------------------------------------------------------------------------- the format's width rule
def intermediate_size_for(ffn_mult: float, hidden_size: int) -> int:
    """The MLP width a Nemotron-NAS reader derives from `ffn_mult` (int(2*m*h/3) rounded up to 256)."""
    width = int(2 * ffn_mult * hidden_size / 3)
    remainder = width % FFN_WIDTH_MULTIPLE
    return width if remainder == 0 else width + FFN_WIDTH_MULTIPLE - remainder


def ffn_mult_for(intermediate_size: int, hidden_size: int) -> float:
    """An `ffn_mult` that readers turn back into exactly `intermediate_size`; refuses widths the rule can't give."""
    if intermediate_size <= 0 or intermediate_size % FFN_WIDTH_MULTIPLE:
        raise ExportError(
            f"the Nemotron-NAS format derives MLP widths as multiples of {FFN_WIDTH_MULTIPLE} from ffn_mult; this "
            f"model's intermediate_size {intermediate_size} is not one, so vLLM/llama.cpp would build a "
            f"different MLP. Use format='gguf' (stores widths directly) or 'standard' for block drops."
        )
    exact = 3 * intermediate_size / (2 * hidden_size)
    for candidate in (float(f"{exact:.{digits}g}") for digits in range(2, 18)):
        if math.isclose(candidate, exact, rel_tol=1e-12) and intermediate_size_for(candidate, hidden_size) == \
                intermediate_size:
            return candidate
    raise ExportError(f"no ffn_mult reproduces intermediate_size {intermediate_size}")  # pragma: no cover


# --------------------------------------------------------------------------- export
def _block_configs(model, attn_dropped: set[int], mlp_dropped: set[int]) -> list[dict[str, Any]]:
    config = model.config
    group = config.num_attention_heads // config.num_key_value_heads
    mult = ffn_mult_for(config.intermediate_size, config.hidden_size)
    blocks = []
    for i in range(config.num_hidden_layers):
        attn_no_op, ffn_no_op = i in attn_dropped, i in mlp_dropped
        blocks.append({
            "attention": {"no_op": attn_no_op, "replace_with_linear": False,
                          "n_heads_in_group": None if attn_no_op else group},
            "ffn": {"no_op": ffn_no_op, "replace_with_linear": False, "ffn_mult": None if ffn_no_op else mult},
        })
    return blocks


def _zero_attention(model) -> dict[str, torch.Tensor]:
    """Weights of an attention that adds exactly zero: all projections zero, norm weight one."""
    config = model.config
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    q_out, kv_out = config.num_attention_heads * head_dim, config.num_key_value_heads * head_dim
    dtype = next(model.parameters()).dtype
    shapes = {"q_proj": (q_out, config.hidden_size), "k_proj": (kv_out, config.hidden_size),
              "v_proj": (kv_out, config.hidden_size), "o_proj": (config.hidden_size, q_out)}
    out = {f"self_attn.{name}.weight": torch.zeros(shape, dtype=dtype) for name, shape in shapes.items()}
    if getattr(config, "attention_bias", False):
        for name, (rows, _) in shapes.items():
            out[f"self_attn.{name}.bias"] = torch.zeros(rows, dtype=dtype)
    out["input_layernorm.weight"] = torch.ones(config.hidden_size, dtype=dtype)
    return out


def _export_config(model, blocks: list[dict], drop: DropConfig, zero_layers: list[int]) -> dict[str, Any]:
    data = model.config.to_dict()
    for key in ("drop_config", "per_layer_config", "auto_map", "_name_or_path", "quantization_config",
                "layer_types", "sliding_window"):
        data.pop(key, None)
    data.update({
        "model_type": "nemotron-nas",
        "architectures": ["DeciLMForCausalLM"],
        "auto_map": {"AutoConfig": f"{CONFIG_FILE.stem}.DeciLMConfig"},
        "block_configs": blocks,
        "layerdrop_drop_config": drop.to_dict(),
        "layerdrop_zero_attention_layers": zero_layers,
    })
    return data


@register_format("decilm", target="directory", families=("llama", "mistral"), engines="vLLM",
                 description="NVIDIA's Nemotron-NAS (DeciLMForCausalLM): per-layer no-op attention / FFN")
def export_decilm(model, out: str | os.PathLike, tokenizer=None, *, overwrite: bool = False,
                  zero_attention_layer0: bool = True, max_shard_size: str | int = "5GB") -> Path:
    """Write a dropped Llama-family model as a Nemotron-NAS checkpoint; returns `out`."""
    from huggingface_hub import save_torch_state_dict

    model_type = check_supported(model, "decilm")
    if model_type == "mistral" and getattr(model.config, "sliding_window", None) is not None:
        raise ExportError("Nemotron-NAS layers use full attention; this Mistral model has a sliding window.")
    drop = drop_of(model)
    attn_dropped, mlp_dropped = set(drop.attn), set(drop.mlp)
    blocks = _block_configs(model, attn_dropped, mlp_dropped)
    if len(attn_dropped) == model.config.num_hidden_layers and not zero_attention_layer0:
        raise ExportError("every attention is dropped; vLLM cannot size a KV cache for that model.")

    state = global_tensors(model)
    zero_layers: list[int] = []
    for i in range(model.config.num_hidden_layers):
        if i not in attn_dropped:
            state.update({f"model.layers.{i}.{k}": v for k, v in sublayer_tensors(model, "attn", i).items()})
        elif i == 0 and zero_attention_layer0:
            state.update({f"model.layers.0.{k}": v for k, v in _zero_attention(model).items()})
            group = model.config.num_attention_heads // model.config.num_key_value_heads
            blocks[0]["attention"].update(no_op=False, n_heads_in_group=group)
            zero_layers.append(0)
        if i not in mlp_dropped:
            state.update({f"model.layers.{i}.{k}": v for k, v in sublayer_tensors(model, "mlp", i).items()})
    state = {k: v.contiguous() for k, v in state.items()}

    with staged_directory(out, overwrite=overwrite) as staging:
        save_torch_state_dict(state, staging, max_shard_size=max_shard_size)
        config = _export_config(model, blocks, drop, zero_layers)
        (staging / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        shutil.copyfile(CONFIG_FILE, staging / CONFIG_FILE.name)
        if getattr(model, "generation_config", None) is not None:
            model.generation_config.save_pretrained(staging)
        if tokenizer is not None:
            tokenizer.save_pretrained(staging)
    return Path(out)


# --------------------------------------------------------------------------- reading an export back
def _tensor_shapes(directory: Path) -> dict[str, tuple[int, ...]]:
    from safetensors import safe_open

    shapes = {}
    for file in sorted(directory.glob("*.safetensors")):
        with safe_open(file, "pt") as f:
            for key in f.keys():
                shapes[key] = tuple(f.get_slice(key).get_shape())
    return shapes


def _load_tensor(directory: Path, name: str) -> torch.Tensor:
    from safetensors import safe_open

    for file in sorted(directory.glob("*.safetensors")):
        with safe_open(file, "pt") as f:
            if name in f.keys():
                return f.get_tensor(name)
    raise KeyError(name)


def _expected_shapes(config: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    """Every tensor a Nemotron-NAS reader builds for this config, with its shape."""
    hidden, heads = config["hidden_size"], config["num_attention_heads"]
    head_dim = config.get("head_dim") or hidden // heads
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (config["vocab_size"], hidden),
                                          "model.norm.weight": (hidden,)}
    if not config.get("tie_word_embeddings", False):
        shapes["lm_head.weight"] = (config["vocab_size"], hidden)
    for i, block in enumerate(config["block_configs"]):
        attn, ffn = block["attention"], block["ffn"]
        p = f"model.layers.{i}."
        if not attn["no_op"]:
            kv = heads // attn["n_heads_in_group"]
            rows = {"q_proj": heads * head_dim, "k_proj": kv * head_dim, "v_proj": kv * head_dim, "o_proj": hidden}
            for name, r in rows.items():
                shapes[f"{p}self_attn.{name}.weight"] = (r, heads * head_dim if name == "o_proj" else hidden)
                if config.get("attention_bias", False):
                    shapes[f"{p}self_attn.{name}.bias"] = (r,)
            shapes[f"{p}input_layernorm.weight"] = (hidden,)
        if not ffn["no_op"]:
            width = intermediate_size_for(ffn["ffn_mult"], hidden)
            for name, shape in (("gate_proj", (width, hidden)), ("up_proj", (width, hidden)),
                                ("down_proj", (hidden, width))):
                shapes[f"{p}mlp.{name}.weight"] = shape
                if config.get("mlp_bias", False):
                    shapes[f"{p}mlp.{name}.bias"] = (shape[0],)
            shapes[f"{p}post_attention_layernorm.weight"] = (hidden,)
    return shapes


def check_decilm_dir(directory: str | os.PathLike) -> list[str]:
    """Problems with a Nemotron-NAS checkpoint directory against the schema above ([] if none)."""
    directory = Path(directory)
    problems: list[str] = []
    config = json.loads((directory / "config.json").read_text())
    if config.get("model_type") != "nemotron-nas":
        problems.append(f"model_type is {config.get('model_type')!r}, not 'nemotron-nas'")
    if config.get("architectures") != ["DeciLMForCausalLM"]:
        problems.append(f"architectures is {config.get('architectures')!r}, not ['DeciLMForCausalLM']")
    auto_config = (config.get("auto_map") or {}).get("AutoConfig", "")
    if not auto_config or not (directory / (auto_config.split(".")[0] + ".py")).is_file():
        problems.append(f"auto_map.AutoConfig {auto_config!r} does not name a shipped configuration file")
    blocks = config.get("block_configs")
    if not isinstance(blocks, list) or len(blocks) != config.get("num_hidden_layers"):
        return problems + ["block_configs must be a list with one entry per layer (num_hidden_layers)"]
    heads = config["num_attention_heads"]
    for i, block in enumerate(blocks):
        attn, ffn = block.get("attention", {}), block.get("ffn", {})
        for section, name, keys in ((attn, "attention", ("no_op", "replace_with_linear", "n_heads_in_group")),
                                    (ffn, "ffn", ("no_op", "replace_with_linear", "ffn_mult"))):
            missing = [k for k in keys if k not in section]
            if missing:
                problems.append(f"layer {i}: {name} lacks keys {missing}")
        if problems:
            continue
        if attn["replace_with_linear"] or ffn["replace_with_linear"]:
            problems.append(f"layer {i}: replace_with_linear is not produced by layerdrop-patch")
        if attn["no_op"] != (attn["n_heads_in_group"] is None):
            problems.append(f"layer {i}: n_heads_in_group must be null exactly when attention is a no-op")
        elif not attn["no_op"] and heads % attn["n_heads_in_group"]:
            problems.append(f"layer {i}: n_heads_in_group {attn['n_heads_in_group']} does not divide {heads} heads")
        if ffn["no_op"] != (ffn["ffn_mult"] is None):
            problems.append(f"layer {i}: ffn_mult must be null exactly when the FFN is a no-op")
    if problems:
        return problems
    expected, actual = _expected_shapes(config), _tensor_shapes(directory)
    for name in sorted(set(actual) - set(expected)):
        problems.append(f"unexpected tensor {name} (a reader has no parameter for it)")
    for name in sorted(set(expected) - set(actual)):
        problems.append(f"missing tensor {name}")
    for name in sorted(set(expected) & set(actual)):
        if expected[name] != actual[name]:
            problems.append(f"tensor {name} has shape {actual[name]}, the config implies {expected[name]}")
    return problems


def load_decilm(directory: str | os.PathLike, **hf_kwargs):
    """Load a Nemotron-NAS checkpoint into layerdrop-patch's patched Llama model (no remote code).

    No-op sublayers become drops; an attention whose projections are all zero (the layer-0 placeholder
    written by `export_decilm`) adds exactly nothing and is dropped too. Kept layers must share one KV-head
    count and one MLP width, which is what the patched Llama model can express.
    """
    from layerdrop_patch.architectures import remote_class_for

    LayerDropLlamaForCausalLM = remote_class_for(SimpleNamespace(model_type="llama"))
    LayerDropLlamaConfig = LayerDropLlamaForCausalLM.config_class

    directory = Path(directory)
    problems = check_decilm_dir(directory)
    if problems:
        raise CheckpointError(f"{directory} is not a valid Nemotron-NAS checkpoint: " + "; ".join(problems[:10]))
    config = json.loads((directory / "config.json").read_text())
    blocks = config["block_configs"]
    attn_dropped = {i for i, b in enumerate(blocks) if b["attention"]["no_op"]}
    mlp_dropped = {i for i, b in enumerate(blocks) if b["ffn"]["no_op"]}
    for i in sorted(set(range(len(blocks))) - attn_dropped):
        projections = [_load_tensor(directory, f"model.layers.{i}.self_attn.{k}.weight") for k in _ATTN_KEYS]
        if all(not torch.any(t) for t in projections):
            attn_dropped.add(i)
    groups = {blocks[i]["attention"]["n_heads_in_group"] for i in range(len(blocks)) if i not in attn_dropped}
    widths = {intermediate_size_for(blocks[i]["ffn"]["ffn_mult"], config["hidden_size"])
              for i in range(len(blocks)) if i not in mlp_dropped}
    if len(groups) > 1 or len(widths) > 1:
        raise CheckpointError(f"kept layers differ in n_heads_in_group {sorted(groups)} or MLP width {sorted(widths)}; "
                         "layerdrop-patch's patched Llama model needs them uniform.")

    saved = config.get("layerdrop_drop_config")
    drop = DropConfig.from_dict(saved) if saved else DropConfig(method="decilm-import")
    drop.attn, drop.mlp = sorted(attn_dropped), sorted(mlp_dropped)
    fields = {k: v for k, v in config.items() if k not in ("block_configs", "auto_map", "model_type", "architectures")
              and not k.startswith("layerdrop_")}
    if groups:
        fields["num_key_value_heads"] = config["num_attention_heads"] // groups.pop()
    if widths:
        fields["intermediate_size"] = widths.pop()
    llama_config = LayerDropLlamaConfig.from_dict(fields)
    llama_config.drop_config = drop.to_dict()
    return LayerDropLlamaForCausalLM.from_pretrained(directory, config=llama_config,
                                                     layerdrop_allow_dropped_weights=True, **hf_kwargs)
