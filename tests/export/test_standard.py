"""Standard export: a stock checkpoint with fewer layers that plain transformers loads, with identical logits."""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from layerdrop_patch import DropConfig
from layerdrop_patch.architectures import supported_model_types
from layerdrop_patch.checkpoint import save_pretrained
from layerdrop_patch.export import ExportError, export
from layerdrop_patch.export.standard import standard_layer_map
from layerdrop_patch.patch import apply_drop
from tests.conftest import load_kwargs, tiny_model

IDS = torch.randint(1, 128, (2, 11), generator=torch.Generator().manual_seed(5))

EXPRESSIBLE = {
    "blocks": (DropConfig.blocks([1, 4]), [(0, 0), (2, 2), (3, 3), (5, 5)]),
    "first-and-last": (DropConfig.blocks([0, 5]), [(1, 1), (2, 2), (3, 3), (4, 4)]),
    # MLP 2 and attention 3 gone: attention 2 and MLP 3 form one ordinary layer
    "merged-pair": (DropConfig(attn=[3], mlp=[2]), [(0, 0), (1, 1), (2, 3), (4, 4), (5, 5)]),
}


@pytest.mark.parametrize("model_type", supported_model_types())
@pytest.mark.parametrize("case", list(EXPRESSIBLE))
def test_standard_export_loads_in_plain_transformers_with_identical_logits(tmp_path, model_type, case):
    drop, layer_map = EXPRESSIBLE[case]
    model = apply_drop(tiny_model(model_type, 6), drop)
    assert standard_layer_map(model) == layer_map
    out = export(model, "standard", tmp_path / "std")

    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == model_type and config["num_hidden_layers"] == len(layer_map)
    assert not {"drop_config", "auto_map", "per_layer_config"} & set(config)
    assert not list(out.glob("*.py")), "a standard export must not need remote code"
    loaded = AutoModelForCausalLM.from_pretrained(out, **load_kwargs(model_type)).eval()  # no trust_remote_code
    assert type(loaded).__module__.startswith("transformers.models.") and "LayerDrop" not in type(loaded).__name__
    with torch.no_grad():
        assert torch.equal(loaded(IDS).logits, model(IDS).logits)
    provenance = json.loads((out / "layerdrop_export.json").read_text())
    assert [(l["attention_from"], l["mlp_from"]) for l in provenance["layers"]] == layer_map


def test_tied_embeddings_stay_tied(tmp_path):
    model = apply_drop(tiny_model("llama", 4, tie_word_embeddings=True), DropConfig.blocks([2]))
    loaded = AutoModelForCausalLM.from_pretrained(export(model, "standard", tmp_path / "t")).eval()
    assert loaded.lm_head.weight.data_ptr() == loaded.model.embed_tokens.weight.data_ptr()
    with torch.no_grad():
        assert torch.equal(loaded(IDS).logits, model(IDS).logits)


@pytest.mark.parametrize("drop", [DropConfig(attn=[2]), DropConfig(mlp=[5]), DropConfig(attn=[1, 2], mlp=[1])])
def test_partial_drops_are_refused_with_pointer_to_other_formats(tmp_path, drop):
    model = apply_drop(tiny_model("llama", 6), drop)
    with pytest.raises(ExportError, match="decilm.*gguf"):
        export(model, "standard", tmp_path / "x")
    assert not (tmp_path / "x").exists()
    assert not [p for p in tmp_path.iterdir()], "nothing half-written may stay behind"


def test_export_from_saved_directory_and_no_silent_overwrite(tmp_path):
    model = apply_drop(tiny_model("llama", 6), DropConfig.blocks([3]))
    save_pretrained(model, tmp_path / "pruned")
    out = export(str(tmp_path / "pruned"), "standard", tmp_path / "std")
    loaded = AutoModelForCausalLM.from_pretrained(out).eval()
    with torch.no_grad():
        assert torch.equal(loaded(IDS).logits, model(IDS).logits)
    with pytest.raises(FileExistsError):
        export(model, "standard", out)
    export(model, "standard", out, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pruned", "std"]


def test_unknown_format_and_missing_out():
    model = tiny_model("llama", 2)
    with pytest.raises(ValueError, match="unknown export format"):
        export(model, "onnx", "x")
    with pytest.raises(ValueError, match="out is required"):
        export(model, "standard")
