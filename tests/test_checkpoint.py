"""Portable checkpoints: round trips, loading without the package, strictness, exact size, atomic saves."""

import copy
import json
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM

from layerdrop_patch import DropConfig
from layerdrop_patch import checkpoint as portability
from layerdrop_patch.checkpoint import from_pretrained, save_pretrained
from layerdrop_patch.modeling import SHIPPED_FILES
from layerdrop_patch.patch import apply_drop, parameter_bytes
from tests.conftest import tiny_model

DROPS = {
    "block": DropConfig.blocks([1, 4]),
    "attn": DropConfig(attn=[0, 2, 3]),
    "mlp": DropConfig(mlp=[2, 5]),
    "joint": DropConfig(attn=[0, 3, 5], mlp=[1, 3]),
}
IDS = torch.randint(1, 128, (2, 9), generator=torch.Generator().manual_seed(11))


def _tensor_bytes(directory: Path) -> int:
    total = 0
    for file in directory.glob("*.safetensors"):
        with safe_open(file, "pt") as f:
            for key in f.keys():
                t = f.get_tensor(key)
                total += t.numel() * t.element_size()
    return total


@pytest.mark.parametrize("model_type", ["llama", "mistral"])
@pytest.mark.parametrize("drop", list(DROPS))
def test_round_trip_library_and_remote_code(tmp_path, model_type, drop):
    base = tiny_model(model_type, 6)
    model = apply_drop(copy.deepcopy(base), DROPS[drop])
    save_pretrained(model, tmp_path / "ckpt")
    with torch.no_grad():
        expected = model(IDS).logits
        for loaded in (from_pretrained(tmp_path / "ckpt"),
                       AutoModelForCausalLM.from_pretrained(tmp_path / "ckpt", trust_remote_code=True)):
            assert torch.equal(loaded(IDS).logits, expected)
            assert DropConfig.from_model(loaded).attn == sorted(DROPS[drop].attn)


def test_checkpoint_bytes_are_original_minus_dropped_exactly(tmp_path):
    base = tiny_model("llama", 6)
    base.save_pretrained(tmp_path / "base")
    model = apply_drop(copy.deepcopy(base), DROPS["joint"])
    save_pretrained(model, tmp_path / "ckpt")
    dropped = parameter_bytes(base) - parameter_bytes(model)
    assert dropped > 0
    assert _tensor_bytes(tmp_path / "ckpt") == _tensor_bytes(tmp_path / "base") - dropped


def test_config_records_drop_auto_map_and_per_layer_skip(tmp_path):
    model = apply_drop(tiny_model("llama", 6), DROPS["joint"])
    save_pretrained(model, tmp_path / "ckpt")
    config = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    assert config["model_type"] == "layerdrop_llama"
    assert config["auto_map"]["AutoModelForCausalLM"] == "modeling_layerdrop.LayerDropLlamaForCausalLM"
    assert config["drop_config"]["attn"] == [0, 3, 5] and config["drop_config"]["mlp"] == [1, 3]
    assert config["per_layer_config"]["3"]["skip"] == sorted(
        ["self_attn", "input_layernorm", "mlp", "post_attention_layernorm"])
    assert (tmp_path / "ckpt" / "modeling_layerdrop.py").read_text() == (
        Path(__file__).parents[1] / "layerdrop_patch/modeling/modeling_layerdrop.py").read_text()


def test_load_time_drop_equals_apply_drop_and_skips_dropped_weights(tmp_path):
    base = tiny_model("mistral", 6)
    base.save_pretrained(tmp_path / "base")
    cfg = DROPS["joint"]
    loaded = from_pretrained(tmp_path / "base", drop_config=cfg)
    assert not hasattr(loaded.model.layers[0], "self_attn")
    with torch.no_grad():
        assert torch.equal(loaded(IDS).logits, apply_drop(copy.deepcopy(base), cfg)(IDS).logits)
    bf16 = from_pretrained(tmp_path / "base", drop_config=cfg, dtype=torch.bfloat16, device_map="auto")
    assert bf16.dtype == torch.bfloat16 and bf16(IDS).logits.shape == (2, 9, 128)


def test_weights_that_disagree_with_drop_config_are_refused(tmp_path):
    model = apply_drop(tiny_model("llama", 6), DROPS["attn"])
    save_pretrained(model, tmp_path / "ckpt")
    weights = tmp_path / "ckpt" / "model.safetensors"
    original = load_file(weights)

    missing = dict(original)
    del missing["model.layers.1.self_attn.q_proj.weight"]
    save_file(missing, weights, metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"missing.*model\.layers\.1\.self_attn\.q_proj\.weight"):
        from_pretrained(tmp_path / "ckpt")

    extra = dict(original)
    extra["model.layers.0.self_attn.q_proj.weight"] = original["model.layers.1.self_attn.q_proj.weight"].clone()
    save_file(extra, weights, metadata={"format": "pt"})
    for load in (lambda: from_pretrained(tmp_path / "ckpt"),
                 lambda: AutoModelForCausalLM.from_pretrained(tmp_path / "ckpt", trust_remote_code=True)):
        with pytest.raises(ValueError, match=r"unexpected.*model\.layers\.0\.self_attn\.q_proj\.weight"):
            load()


def test_edited_drop_config_is_refused(tmp_path):
    model = apply_drop(tiny_model("llama", 6), DROPS["attn"])
    save_pretrained(model, tmp_path / "ckpt")
    path = tmp_path / "ckpt" / "config.json"
    config = json.loads(path.read_text())
    config["drop_config"]["attn"] = [0, 2]  # claims layer 3 kept, but its weights are gone
    path.write_text(json.dumps(config))
    with pytest.raises(ValueError, match="per_layer_config .* disagrees with its drop_config"):
        from_pretrained(path.parent)
    del config["per_layer_config"]  # a careful edit: the weights still give it away
    path.write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"missing.*layers\.3\.self_attn"):
        from_pretrained(path.parent)


def test_save_refuses_unpruned_models_and_non_empty_targets(tmp_path):
    with pytest.raises(ValueError, match="no drop_config"):
        save_pretrained(tiny_model("llama", 2), tmp_path / "x")
    model = apply_drop(tiny_model("llama", 2), DropConfig(attn=[1]))
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "file").write_text("keep me")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        save_pretrained(model, tmp_path / "busy")
    save_pretrained(model, tmp_path / "busy", overwrite=True)
    assert not (tmp_path / "busy" / "file").exists() and (tmp_path / "busy" / "config.json").exists()


_LOAD_AND_GENERATE = """
import torch
from transformers import AutoModelForCausalLM
model = AutoModelForCausalLM.from_pretrained({ckpt!r}, trust_remote_code=True)
ids = torch.tensor({ids!r})
with torch.no_grad():
    logits = model(ids).logits
gens = {{c: model.generate(ids[:1], max_new_tokens=6, min_new_tokens=6, do_sample=False, pad_token_id=0,
                          cache_implementation=c, return_dict_in_generate=True) for c in ("dynamic", "static")}}
cache = gens["dynamic"].cache if "cache" in type(gens["dynamic"]).__dataclass_fields__ else gens["dynamic"].past_key_values
print(json.dumps({{"logits": logits.tolist(), "layers": len(cache.layers),
                  "gen": {{c: g.sequences.tolist() for c, g in gens.items()}}}}))
"""


def run_without_package(ckpt: Path, ids: torch.Tensor) -> dict:
    return portability.run_without_package(_LOAD_AND_GENERATE.format(ckpt=str(ckpt), ids=ids.tolist()), cwd=ckpt.parent)


def test_loads_and_generates_where_layerdrop_patch_is_not_importable(tmp_path):
    cfg = DropConfig(attn=[0, 2, 3], mlp=[3])
    model = apply_drop(tiny_model("llama", 6), cfg)
    save_pretrained(model, tmp_path / "ckpt")
    out = run_without_package(tmp_path / "ckpt", IDS)
    assert out["layerdrop_modules"] == []
    with torch.no_grad():
        torch.testing.assert_close(torch.tensor(out["logits"]), model(IDS).logits, rtol=0, atol=0)
    assert out["layers"] == 3
    expected = model.generate(IDS[:1], max_new_tokens=6, min_new_tokens=6, do_sample=False, pad_token_id=0)
    assert out["gen"]["dynamic"] == out["gen"]["static"] == expected.tolist()


_SLOW_SAVE = textwrap.dedent(
    """
    import sys, time, torch
    sys.path.insert(0, {repo!r})
    from safetensors import torch as st
    from layerdrop_patch import DropConfig
    from layerdrop_patch.checkpoint import save_pretrained
    from layerdrop_patch.patch import apply_drop
    from tests.conftest import tiny_model
    slow_save = st.save_file
    def save_file(*args, **kwargs):
        print("WRITING", flush=True)
        time.sleep(60)
        return slow_save(*args, **kwargs)
    st.save_file = save_file
    import transformers.modeling_utils as mu
    if hasattr(mu, "safe_save_file"):
        mu.safe_save_file = save_file
    model = apply_drop(tiny_model("llama", 4), DropConfig(attn=[1]))
    save_pretrained(model, {target!r})
    """
)


def test_interrupted_save_leaves_nothing_that_loads(tmp_path):
    target = tmp_path / "ckpt"
    script = _SLOW_SAVE.format(repo=str(Path(__file__).parents[1]), target=str(target))
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    partial = []
    while time.time() < deadline and not partial:
        partial = [p for p in tmp_path.iterdir() if p.name.startswith(".ckpt.partial-")]
        time.sleep(0.05)
    assert partial, "the save never started"
    time.sleep(1.0)  # mid-write: config and weights are being produced inside the staging directory
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert not target.exists()
    with pytest.raises(OSError):
        from_pretrained(target)
    assert [p for p in tmp_path.iterdir() if p.name.startswith(".ckpt.partial-")]  # the killed save's leftover
    save_pretrained(apply_drop(tiny_model("llama", 4), DropConfig(attn=[1])), target)  # the next save cleans it up
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".ckpt.")] and (target / "config.json").is_file()


@pytest.mark.parametrize("path", SHIPPED_FILES, ids=lambda p: p.name)
def test_shipped_remote_code_is_small_and_harmless(path):
    import ast

    source = path.read_text()
    assert len(source.splitlines()) <= 400
    tree = ast.parse(source)
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            imported.add("." * node.level + (node.module or "").split(".")[0])
    allowed = {"__future__", "contextvars", "copy", "inspect", "re", "dataclasses", "torch", "transformers",
               ".configuration_layerdrop"}
    assert imported <= allowed, imported
    forbidden = {"eval", "exec", "compile", "__import__", "open", "getattr_static", "importlib", "os", "sys",
                 "socket", "subprocess", "urllib", "requests", "httpx", "pickle", "marshal"}
    names = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)} | {
        n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
    assert not names & forbidden, names & forbidden


def test_drop_config_fields_are_the_keys_the_shipped_code_accepts():
    import dataclasses

    from layerdrop_patch.modeling.configuration_layerdrop import DROP_CONFIG_KEYS

    assert set(DropConfig().to_dict()) == set(DROP_CONFIG_KEYS)
    assert {f.name for f in dataclasses.fields(DropConfig)} | {"format_version"} == set(DROP_CONFIG_KEYS)


@pytest.mark.integration
def test_smollm2_round_trip_without_package(smollm2, tmp_path):
    model, tokenizer = smollm2
    cfg = DropConfig(attn=[20, 22, 24, 26], mlp=[27], method="manual")
    pruned = apply_drop(copy.deepcopy(model), cfg)
    save_pretrained(pruned, tmp_path / "smol", tokenizer=tokenizer)
    assert (tmp_path / "smol" / "tokenizer.json").exists()
    ids = tokenizer("The capital of France is", return_tensors="pt").input_ids
    out = run_without_package(tmp_path / "smol", ids)
    with torch.no_grad():
        torch.testing.assert_close(torch.tensor(out["logits"]), pruned(ids).logits, rtol=0, atol=0)
    assert out["layers"] == 26
    expected = pruned.generate(ids, max_new_tokens=6, min_new_tokens=6, do_sample=False, pad_token_id=0)
    assert out["gen"]["dynamic"] == out["gen"]["static"] == expected.tolist()


# --------------------------------------------------------------------------- the stock habits stay portable
_PORTABLE_KEYS = ("model_type", "architectures", "auto_map", "drop_config", "per_layer_config")


def _portable_layout(directory: Path) -> dict:
    config = json.loads((directory / "config.json").read_text())
    with safe_open(directory / "model.safetensors", "pt") as f:
        keys = sorted(f.keys())
    return {"config": {k: config.get(k) for k in _PORTABLE_KEYS},
            "modeling": (directory / "modeling_layerdrop.py").read_bytes(), "weights": keys}


@pytest.mark.parametrize("model_type", ["llama", "gemma3_text", "phi3"])
def test_stock_save_pretrained_writes_the_same_portable_checkpoint(tmp_path, model_type):
    """`model.save_pretrained(dir)` after apply_drop is what users do; it must not write a stock checkpoint
    that transformers would load with the dropped sublayers randomly initialised."""
    from layerdrop_patch.modeling import MODELING_FILE

    model = apply_drop(tiny_model(model_type, 6), DROPS["joint"])
    model.save_pretrained(tmp_path / "stock")
    save_pretrained(model, tmp_path / "library")
    stock = _portable_layout(tmp_path / "stock")
    assert stock == _portable_layout(tmp_path / "library")
    assert stock["config"]["model_type"] == f"layerdrop_{model_type}"
    assert stock["config"]["auto_map"]["AutoModelForCausalLM"].startswith("modeling_layerdrop.LayerDrop")
    assert stock["modeling"] == MODELING_FILE.read_bytes()
    assert not any(k.startswith("model.layers.0.self_attn.") or k.startswith("model.layers.1.mlp.")
                   for k in stock["weights"])
    with pytest.raises(ValueError):  # without remote code, plain transformers refuses instead of random-initialising
        AutoModelForCausalLM.from_pretrained(tmp_path / "stock")
    with torch.no_grad():
        expected = model(IDS).logits
        for loaded in (from_pretrained(tmp_path / "stock"),
                       AutoModelForCausalLM.from_pretrained(tmp_path / "stock", trust_remote_code=True)):
            assert torch.equal(loaded(IDS).logits, expected)


_LOAD_AND_RESAVE = """
import torch
from transformers import AutoModelForCausalLM
model = AutoModelForCausalLM.from_pretrained({ckpt!r}, trust_remote_code=True)
model.save_pretrained({out!r})
print(json.dumps({{"class": type(model).__module__ + "." + type(model).__name__}}))
"""


def test_a_model_loaded_through_remote_code_saves_portably_again(tmp_path):
    """Plain transformers + the shipped file, no package: load, save_pretrained, and the result is portable."""
    model = apply_drop(tiny_model("llama", 6), DROPS["joint"])
    save_pretrained(model, tmp_path / "ckpt")
    out = portability.run_without_package(
        _LOAD_AND_RESAVE.format(ckpt=str(tmp_path / "ckpt"), out=str(tmp_path / "resaved")), cwd=tmp_path)
    assert out["class"].startswith("transformers_modules.") and out["layerdrop_modules"] == []
    assert _portable_layout(tmp_path / "resaved") == _portable_layout(tmp_path / "ckpt")
    with torch.no_grad():
        assert torch.equal(from_pretrained(tmp_path / "resaved")(IDS).logits, model(IDS).logits)


def test_per_layer_config_that_disagrees_with_drop_config_is_refused(tmp_path):
    model = apply_drop(tiny_model("llama", 4), DropConfig(attn=[1]))
    save_pretrained(model, tmp_path / "ckpt")
    config = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    config["per_layer_config"] = {"2": {"skip": ["input_layernorm", "self_attn"]}}
    (tmp_path / "ckpt" / "config.json").write_text(json.dumps(config))
    for load in (from_pretrained, lambda p: AutoModelForCausalLM.from_pretrained(p, trust_remote_code=True)):
        with pytest.raises(ValueError, match="disagrees with its drop_config"):
            load(tmp_path / "ckpt")
