"""DeciLM export through vLLM's own code (config loader, kv-head rule, DeciLMForCausalLM and its weight loader).

Runs only where vLLM is importable (it is not part of the test environment). On a machine without a GPU it
works with `VLLM_TARGET_DEVICE=cpu`: vLLM builds the model on CPU and loads the weights, which checks every
tensor name and shape against vLLM's model definition; the forward pass itself needs vLLM's compiled ops.
It runs in a subprocess because it initialises torch.distributed.
"""

import importlib.util
import json
import os
import socket
import subprocess
import sys
import textwrap

import pytest

from layerdrop_patch import DropConfig
from layerdrop_patch.export import export
from layerdrop_patch.patch import apply_drop
from tests.conftest import tiny_model

pytestmark = pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vLLM is not installed")

SCRIPT = textwrap.dedent("""
    import glob, json, os, sys
    from safetensors.torch import load_file
    path, port = sys.argv[1], sys.argv[2]
    import vllm.config
    from vllm.config import ModelConfig, VllmConfig, set_current_vllm_config
    from vllm.distributed import init_distributed_environment, initialize_model_parallel
    from vllm.transformers_utils.config import get_config
    from vllm.transformers_utils.model_arch_config_convertor import MODEL_ARCH_CONFIG_CONVERTORS
    hf = get_config(path, trust_remote_code=True)
    kv = MODEL_ARCH_CONFIG_CONVERTORS["nemotron-nas"](hf, hf).get_total_num_kv_heads()
    vc = VllmConfig(model_config=ModelConfig(model=path, trust_remote_code=True, dtype="float32",
                                             skip_tokenizer_init=True))
    from vllm.model_executor.models.nemotron_nas import DeciLMForCausalLM
    with set_current_vllm_config(vc):
        init_distributed_environment(world_size=1, rank=0, local_rank=0, backend="gloo",
                                     distributed_init_method=f"tcp://127.0.0.1:{port}")
        initialize_model_parallel(1, 1)
        model = DeciLMForCausalLM(vllm_config=vc)
    weights = {}
    for f in glob.glob(os.path.join(path, "*.safetensors")):
        weights.update(load_file(f))
    loaded = model.load_weights(weights.items())
    params = {n for n, _ in model.named_parameters()}
    no_op = [[l._is_no_op_attention, l._is_no_op_ffn] for l in model.model.layers]
    print("RESULT " + json.dumps({"kv": kv, "unloaded": sorted(params - set(loaded)), "no_op": no_op}))
""")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("drop", [DropConfig(attn=[0, 3], mlp=[3, 5]), DropConfig(attn=[2], mlp=[1])])
def test_vllm_builds_the_model_and_loads_every_weight(tmp_path, drop):
    model = apply_drop(tiny_model("llama", 6, intermediate_size=256), drop)
    out = export(model, "decilm", tmp_path / "deci")
    env = dict(os.environ, VLLM_TARGET_DEVICE=os.environ.get("VLLM_TARGET_DEVICE", "cpu"))
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(out), str(_free_port())], capture_output=True,
                          text=True, env=env, timeout=600)
    lines = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
    assert lines, proc.stderr[-3000:]
    result = json.loads(lines[-1][len("RESULT "):])
    assert result["kv"] == 2 and result["unloaded"] == []
    zero_attention = 0 in drop.attn  # layer 0 keeps an exact zero attention for vLLM's residual handling
    assert result["no_op"] == [[i in drop.attn and not (i == 0 and zero_attention), i in drop.mlp] for i in range(6)]
