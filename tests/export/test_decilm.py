"""Nemotron-NAS (DeciLM) export: the format's schema, its width rule, remote-code config loading, exact reload.

Schema checked (facts from vLLM's nemotron_nas.py and model-arch config convertor, llama.cpp's DeciModel
converter and published Nemotron-NAS config.json files; see layerdrop_patch/export/decilm.py):
model_type "nemotron-nas", architectures ["DeciLMForCausalLM"], auto_map.AutoConfig to a shipped file,
one block_configs entry per layer with attention {no_op, replace_with_linear, n_heads_in_group (null iff
no_op)} and ffn {no_op, replace_with_linear, ffn_mult (null iff no_op)}, MLP width
round_up(int(2*ffn_mult*hidden/3), 256), and exactly the tensors a reader builds (removed norms absent).
"""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoConfig

from layerdrop_patch import DropConfig
from layerdrop_patch.export import ExportError, export
from layerdrop_patch.export.decilm import check_decilm_dir, ffn_mult_for, intermediate_size_for, load_decilm
from layerdrop_patch.patch import apply_drop
from tests.conftest import tiny_model

IDS = torch.randint(1, 128, (2, 11), generator=torch.Generator().manual_seed(7))
DROPS = {
    "attn": DropConfig(attn=[2, 3]),
    "mlp": DropConfig(mlp=[1, 5]),
    "joint": DropConfig(attn=[1, 4], mlp=[2, 4]),
    "layer0-attn-mlp-kept": DropConfig(attn=[0, 3], mlp=[5]),
    "layer0-block": DropConfig.blocks([0]),
}


def _model(model_type="llama", drop=None, **overrides):
    model = tiny_model(model_type, 6, intermediate_size=256, **overrides)
    return apply_drop(model, drop) if drop is not None else model


def _reference_width(ffn_mult, hidden):
    """The format's rule, written out independently: int(2*m*h/3), then up to the next multiple of 256."""
    width = int(2 * ffn_mult * hidden / 3)
    return -(-width // 256) * 256


@pytest.mark.parametrize("hidden", [64, 576, 960, 2048, 3072, 4096, 5120, 8192, 12288, 16384])
def test_ffn_mult_gives_the_width_back_exactly(hidden):
    for width in range(256, 8 * hidden + 1, 256):
        mult = ffn_mult_for(width, hidden)
        assert _reference_width(mult, hidden) == width == intermediate_size_for(mult, hidden)
        assert json.loads(json.dumps(mult)) == mult  # survives config.json


def test_known_multipliers_and_refusals():
    assert ffn_mult_for(1536, 576) == 4.0  # SmolLM2-135M
    assert ffn_mult_for(14336, 4096) == 5.25  # Llama-3-8B
    for bad in (96, 1000, 11008 + 128):
        with pytest.raises(ExportError, match="multiples of 256"):
            ffn_mult_for(bad, 4096)


@pytest.mark.parametrize("case", list(DROPS))
def test_schema_and_exact_reload(tmp_path, case):
    model = _model(drop=DROPS[case])
    out = export(model, "decilm", tmp_path / "deci")
    assert check_decilm_dir(out) == []
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "nemotron-nas" and config["architectures"] == ["DeciLMForCausalLM"]
    assert config["auto_map"] == {"AutoConfig": "configuration_decilm.DeciLMConfig"}
    drop = DROPS[case]
    tensors = load_file(out / "model.safetensors")
    for i, block in enumerate(config["block_configs"]):
        assert set(block["attention"]) == {"no_op", "replace_with_linear", "n_heads_in_group"}
        assert set(block["ffn"]) == {"no_op", "replace_with_linear", "ffn_mult"}
        zero_attention = i == 0 and i in drop.attn
        assert block["attention"]["no_op"] == (i in drop.attn and not zero_attention)
        assert block["ffn"]["no_op"] == (i in drop.mlp)
        assert (f"model.layers.{i}.input_layernorm.weight" in tensors) == (i not in drop.attn or zero_attention)
        assert (f"model.layers.{i}.post_attention_layernorm.weight" in tensors) == (i not in drop.mlp)
        if zero_attention:
            assert block["attention"]["n_heads_in_group"] == 2
            assert not torch.any(tensors["model.layers.0.self_attn.o_proj.weight"])
    assert config["layerdrop_zero_attention_layers"] == ([0] if 0 in drop.attn else [])

    reloaded = load_decilm(out).eval()
    assert DropConfig.from_model(reloaded).attn == sorted(drop.attn)
    assert DropConfig.from_model(reloaded).mlp == sorted(drop.mlp)
    with torch.no_grad():
        assert torch.equal(reloaded(IDS).logits, model(IDS).logits)


def test_config_loads_through_shipped_remote_code(tmp_path):
    out = export(_model(drop=DROPS["joint"]), "decilm", tmp_path / "deci")
    config = AutoConfig.from_pretrained(out, trust_remote_code=True)
    assert type(config).__name__ == "DeciLMConfig" and config.model_type == "nemotron-nas"
    blocks = config.block_configs
    assert [b.attention.no_op for b in blocks] == [i in (1, 4) for i in range(6)]
    assert [b.ffn.no_op for b in blocks] == [i in (2, 4) for i in range(6)]
    kept = next(b for b in blocks if not b.attention.no_op)  # what vLLM sizes its KV cache from
    assert config.num_attention_heads // kept.attention.n_heads_in_group == 2
    assert intermediate_size_for(blocks[0].ffn.ffn_mult, config.hidden_size) == 256
    config.save_pretrained(tmp_path / "resaved")
    resaved = json.loads((tmp_path / "resaved" / "config.json").read_text())
    assert resaved["block_configs"] == json.loads((out / "config.json").read_text())["block_configs"]


def test_no_layer0_fix_writes_a_faithful_no_op_that_still_reloads(tmp_path):
    model = _model(drop=DROPS["layer0-attn-mlp-kept"])
    out = export(model, "decilm", tmp_path / "deci", zero_attention_layer0=False)
    assert json.loads((out / "config.json").read_text())["block_configs"][0]["attention"]["no_op"] is True
    assert check_decilm_dir(out) == []
    with torch.no_grad():
        assert torch.equal(load_decilm(out)(IDS).logits, model(IDS).logits)


def test_checker_catches_extra_tensors_and_bad_blocks(tmp_path):
    out = export(_model(drop=DROPS["attn"]), "decilm", tmp_path / "deci")
    tensors = load_file(out / "model.safetensors")
    tensors["model.layers.2.input_layernorm.weight"] = torch.ones(64)  # the norm of a removed attention
    save_file(tensors, out / "model.safetensors")
    assert any("unexpected tensor model.layers.2.input_layernorm" in p for p in check_decilm_dir(out))
    with pytest.raises(ValueError, match="not a valid Nemotron-NAS"):
        load_decilm(out)
    config = json.loads((out / "config.json").read_text())
    config["block_configs"][1]["attention"]["n_heads_in_group"] = None
    (out / "config.json").write_text(json.dumps(config))
    assert any("n_heads_in_group must be null exactly" in p for p in check_decilm_dir(out))


def test_refusals(tmp_path):
    with pytest.raises(ExportError, match="multiples of 256"):
        export(apply_drop(tiny_model("llama", 4), DropConfig(attn=[1])), "decilm", tmp_path / "a")
    with pytest.raises(ExportError, match="sliding window"):
        export(_model("mistral", DropConfig(attn=[1]), sliding_window=4), "decilm", tmp_path / "b")
    assert not list(tmp_path.iterdir())


def test_mistral_without_sliding_window_exports_exactly(tmp_path):
    model = _model("mistral", DROPS["joint"])
    with torch.no_grad():
        assert torch.equal(load_decilm(export(model, "decilm", tmp_path / "m"))(IDS).logits, model(IDS).logits)
