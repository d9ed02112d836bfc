"""`layerdrop bench --engine vllm|llama.cpp` and `compare_engine` against the real engines (engine stage only):
the unpruned and the pruned model served side by side, each through the export its engine runs."""

import copy
import json

import pytest
from typer.testing import CliRunner

from layerdrop_patch import DropConfig
from layerdrop_patch.checkpoint import save_pretrained
from layerdrop_patch.cli import app
from layerdrop_patch.evaluation.bench import compare_engine
from layerdrop_patch.patch import apply_drop
from tests.conftest import tiny_model
from tests.engines.support import require_engine

pytestmark = pytest.mark.engines

VLLM_TINY = dict(hidden_size=128, num_attention_heads=4, num_key_value_heads=2, intermediate_size=256, head_dim=32)


def test_vllm_benchmark_of_unpruned_and_pruned(tmp_path):
    require_engine("vllm")
    base = tiny_model("llama", 6, **VLLM_TINY)
    pruned = apply_drop(copy.deepcopy(base), DropConfig(attn=[0, 2, 4], mlp=[4]))
    out = compare_engine({"base": base, "pruned": pruned}, 128, engine="vllm", threads=1, batch_size=2,
                         prompt_len=16, new_tokens=4, repeats=1, warmup=1, progress=False)
    assert (out["settings"]["engine"], out["settings"]["engine_version"]) == ("vllm", "vllm 0.32.0")
    assert out["models"]["base"]["format"] == "standard" and out["models"]["pruned"]["format"] == "decilm"
    # DeciLM keeps an exact zero attention in layer 0: 3 + 1 of 6 KV layers
    assert out["models"]["pruned"]["kv_cache_layers"] == 4 and out["ratios"]["pruned"]["kv_cache_ratio"] == 4 / 6
    for m in out["models"].values():
        assert m["prefill_tok_s"] > 0 and m["decode_tok_s"] > 0 and m["decode_s"] > 0


def test_llama_cpp_benchmark_from_the_command_line(tmp_path, smollm2):
    require_engine("llama.cpp")
    tokenizer = smollm2[1]
    base = tiny_model("llama", 6, vocab_size=len(tokenizer))
    base.save_pretrained(tmp_path / "base")  # an unpruned stock checkpoint
    tokenizer.save_pretrained(tmp_path / "base")
    save_pretrained(apply_drop(copy.deepcopy(base), DropConfig.blocks([1, 2, 3])), tmp_path / "block3",
                    tokenizer=tokenizer)
    result = CliRunner().invoke(app, ["bench", str(tmp_path / "base"), str(tmp_path / "block3"), "--engine",
                                      "llama.cpp", "--gguf-type", "f16", "--threads", "1", "--batch-size", "2",
                                      "--prompt-len", "16", "--new-tokens", "8", "--repeats", "2", "--warmup", "1",
                                      "-o", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert "llama.cpp serving exports" in result.output.replace("\n", " ") or "xllamacpp" in result.output
    out = json.loads((tmp_path / "out" / "bench.json").read_text())
    assert out["settings"]["engine"] == "llama.cpp" and out["settings"]["dtype"] == "f16"
    assert out["settings"]["models"] == [str(tmp_path / "base"), str(tmp_path / "block3")]
    models = list(out["models"].values())
    assert [m["format"] for m in models] == ["gguf", "gguf"] and [m["kv_cache_layers"] for m in models] == [6, 3]
    assert all(m["repeats"] == 2 and m["decode_tok_s"] > 0 for m in models)
